"""What users run on top of the compiler: the command line and its commands.

``cli`` (``rnnc``), ``drawing`` (Graphviz) with ``notebook`` (Jupyter), ``verify``,
``train``, ``bench``, ``gradflow``, ``demo``, ``summary``; ``files`` writes outputs
atomically.
"""
