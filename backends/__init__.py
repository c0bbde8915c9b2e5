"""rnnc's code generators, one module per backend, installed as ``rnnc.backends``.

Backends are found through the entry-point group ``rnnc.backends`` (see
``rnnc.runtime.registry``), so a backend in another package plugs in the same way as ours.
"""
