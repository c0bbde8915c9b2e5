"""The front end: YAML text -> a checked spec.

``load`` reads YAML with positions, ``parse`` validates it into the Pydantic models of
``spec``, ``equations`` parses a cell's equations (``cells``: the built-in ones),
``graph`` builds the networkx graph and ``checks`` reports what is wrong with it.
"""
