"""Parameter names and shapes of a checked spec.

Canonical names (a contract shared by every backend and weights file):

- ``LAYER.DIRECTION.lK.PARAM`` for the cell of a recurrent layer at depth K
  (``encoder.fwd.l0.W_i``); ``LAYER.bridge.W`` / ``.b`` for ``init: {bridge: dense}``
  (``LAYER.bridge.lK.W_h`` / ``.b_h`` per depth and state with ``init.states``);
  ``LAYER.attention.*`` for attention (additive: ``W_q``, ``W_k``, ``v``; general:
  ``W_a``; dot and general also ``W_c``, ``b_c`` for the attentional output).
- ``LAYER.W`` and ``LAYER.b`` for a dense layer; ``NAME.embedding`` for a token input
  with ``embed`` and for an embedding layer.

A matrix over ``[x, h]`` is one array (hidden, width(x) + width(h)), columns in the
order written. The order of this mapping is the order parameters are listed in.
"""

from __future__ import annotations

import os

from rnnc.errors import RnncError
from rnnc.front.checks import Analysis, cell_input_width, final_state_width
from rnnc.front.graph import input_edges
from rnnc.front.spec import (
    DenseLayer,
    EmbeddingLayer,
    RecurrentLayer,
    TokenInput,
    bridge_params,
)

Shapes = dict[str, tuple[int, ...]]


def param_shapes(analysis: Analysis) -> Shapes:
    """Every parameter of a valid spec, by canonical name, in canonical order."""
    if not analysis.ok:
        raise ValueError("param_shapes needs a spec without errors")
    spec, _g = analysis.spec, analysis.graph
    shapes: Shapes = {}
    for name, inp in spec.inputs.items():
        if isinstance(inp, TokenInput) and inp.embed is not None:
            shapes[f"{name}.embedding"] = (inp.vocab, inp.embed)
    for name, _layer in spec.layers.items():
        shapes.update(layer_param_shapes(analysis, name))
    return shapes


def layer_param_shapes(analysis: Analysis, name: str) -> Shapes:
    """The parameters of one layer, by canonical name."""
    g = analysis.graph
    layer = analysis.spec.layers[name]
    if isinstance(layer, DenseLayer):
        width = sum(g.nodes[s]["width"] for s, _ in input_edges(g, name))
        return {f"{name}.W": (layer.dense, width), f"{name}.b": (layer.dense,)}
    if isinstance(layer, EmbeddingLayer):
        vocab = g.nodes[layer.input]["vocab"]
        return {f"{name}.embedding": (vocab, layer.embedding)}
    assert isinstance(layer, RecurrentLayer)
    cell = analysis.cells[layer.cell]
    shapes: Shapes = {}
    input_width = cell_input_width(g, name)
    assert input_width is not None
    H = layer.hidden
    for depth in range(layer.depth):
        width = input_width if depth == 0 else layer.output_width
        for direction in layer.directions:
            for param, shape in cell.param_shapes(width, H).items():
                shapes[f"{name}.{direction}.l{depth}.{param}"] = shape
    if layer.init is not None and layer.init.bridge == "dense":
        source_width, _ = final_state_width(g, layer.init.from_)
        assert source_width is not None
        states = layer.init.states
        bridges = [bridge_params(name)] if states is None else [
            bridge_params(name, k, s) for k in range(layer.depth) for s in states
        ]  # fmt: skip
        for W, b in bridges:
            shapes[W], shapes[b] = (H, source_width), (H,)
    if layer.attention is not None:
        M = g.nodes[layer.attention.memory]["width"]
        prefix = f"{name}.attention"
        if layer.attention.score == "additive":
            shapes.update({f"{prefix}.W_q": (H, H), f"{prefix}.W_k": (H, M), f"{prefix}.v": (H,)})
        else:
            if layer.attention.score == "general":
                shapes[f"{prefix}.W_a"] = (H, M)
            shapes.update({f"{prefix}.W_c": (H, M + H), f"{prefix}.b_c": (H,)})
    return shapes


def count(shapes: Shapes) -> int:
    total = 0
    for shape in shapes.values():
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


def available_memory() -> int | None:
    """Bytes of memory this machine can give a new allocation now (Linux's
    MemAvailable; elsewhere free physical pages), or None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at 1 or more (``1.5 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def memory_shortfall(shapes: Shapes, itemsize: int) -> tuple[str, str] | None:
    """When ``shapes`` of ``itemsize``-byte numbers would not fit in the memory this
    machine has available now: the bytes they need and those available, written out."""
    needed = count(shapes) * itemsize
    free = available_memory()
    if free is None or needed <= free:
        return None
    return format_bytes(needed), format_bytes(free)


def require_memory(shapes: Shapes, itemsize: int, what: str = "the parameters") -> None:
    """Refuse (RnncError) to allocate ``shapes`` of ``itemsize``-byte numbers when they
    would not fit in the memory this machine has available now."""
    shortfall = memory_shortfall(shapes, itemsize)
    if shortfall is not None:
        needed, free = shortfall
        raise RnncError(
            f"{what} take {needed}, more than the {free} of memory available on this "
            "machine: make the model smaller (rnnc check shows each layer's parameter count)"
        )
