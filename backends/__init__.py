"""Code generators of rnnc, one module per backend.

Backends are found through the entry-point group ``rnnc.backends`` (see
``rnnc.registry``), so a backend in another package plugs in the same way as ours.
The NumPy and PyTorch backends arrive with their own issues; until then the registry
is empty.
"""
