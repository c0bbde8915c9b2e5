"""The IR and the lowering: a checked spec -> ops every backend renders.

``functions`` declares each function of the cell language once; ``lower`` turns a
cell into the ops of one step and holds the op kinds and their reverse rules;
``program`` orders the network (step loops, what feedback replaces); ``network``
lowers the whole network to ops and derives its reverse.
"""
