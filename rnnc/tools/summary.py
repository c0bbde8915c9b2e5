"""The summary ``rnnc check`` prints: layers, parameters and output shapes."""

from __future__ import annotations

from collections.abc import Mapping

from rnnc.front.checks import Analysis, final_state_width
from rnnc.front.graph import output_node
from rnnc.front.spec import DenseLayer, EmbeddingLayer, RecurrentLayer, TokenInput
from rnnc.runtime.params import (
    count,
    format_bytes,
    layer_param_shapes,
    memory_shortfall,
    param_shapes,
)


def output_shapes(
    analysis: Analysis, batch: int, steps: Mapping[str, int]
) -> dict[str, tuple[int, ...]]:
    """The shape of every output for a batch and a number of steps per time axis."""
    g, spec = analysis.graph, analysis.spec
    shapes: dict[str, tuple[int, ...]] = {}
    for name, out in spec.outputs.items():
        node = g.nodes[output_node(name)]
        axis = node.get("axis")
        if out.attention is not None:  # over the steps of the memory
            layer = spec.layers[out.from_]
            memory = g.nodes[layer.attention.memory]["axis"]  # type: ignore[union-attr]
            shapes[name] = (batch, steps[axis], steps[memory])
        elif out.state is not None:
            width, _ = final_state_width(g, out.from_)
            shapes[name] = (batch, width or 0)
        elif out.select is not None or axis is None:
            shapes[name] = (batch, node["width"])
        else:
            shapes[name] = (batch, steps[axis], node["width"])
    return shapes


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i == len(row) - 1 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def summarize(analysis: Analysis, batch: int = 32, steps: Mapping[str, int] | int = 10) -> str:
    """A readable summary of a valid spec."""
    spec = analysis.spec
    axes = sorted({d["axis"] for _, d in analysis.graph.nodes(data=True) if d.get("axis")})
    per_axis = {a: (steps if isinstance(steps, int) else steps.get(a, 10)) for a in axes}
    rows = [["layer", "kind", "cell", "size", "direction", "depth", "params"]]
    links: list[str] = []
    for name, inp in spec.inputs.items():
        if isinstance(inp, TokenInput) and inp.embed is not None:
            rows.append(
                [
                    name,
                    "embed",
                    "-",
                    f"{inp.vocab}->{inp.embed}",
                    "-",
                    "-",
                    f"{inp.vocab * inp.embed:,}",
                ]
            )
    for name, layer in spec.layers.items():
        n = f"{count(layer_param_shapes(analysis, name)):,}"
        if isinstance(layer, RecurrentLayer):
            size = str(layer.hidden)
            if layer.output_width != layer.hidden:
                size += f" (out {layer.output_width})"
            extras = layer.links()
            if layer.residual:
                extras.append("residual connections")
            if extras:
                links.append(f"  {name}: {'; '.join(extras)}")
            rows.append([name, "recurrent", layer.cell, size, layer.direction, str(layer.depth), n])
        elif isinstance(layer, DenseLayer):
            rows.append([name, "dense", layer.activation, str(layer.dense), "-", "-", n])
        elif isinstance(layer, EmbeddingLayer):
            rows.append([name, "embedding", "-", str(layer.embedding), "-", "-", n])
    total = count(param_shapes(analysis))
    lines = [f"{spec.name}: ok"]
    if spec.description and spec.description.strip():
        lines.append("  " + spec.description.strip().splitlines()[0])
    lines += _table(rows)
    lines += links
    lines.append(
        f"  total parameters: {total:,} ({format_bytes(4 * total)} in float32, "
        f"{format_bytes(8 * total)} in float64)"
    )
    shape_of = output_shapes(analysis, batch, per_axis)
    where = ", ".join(f"{a} steps {t}" for a, t in per_axis.items())
    lines.append(f"  outputs for batch {batch}" + (f", {where}" if where else "") + ":")
    lines += _table([[name, str(shape)] for name, shape in shape_of.items()])
    return "\n".join(lines)


def memory_warning(analysis: Analysis) -> str | None:
    """A warning when the parameters alone (in float32, the smallest dtype rnnc runs
    in) would not fit in the memory this machine has available now."""
    shortfall = memory_shortfall(param_shapes(analysis), itemsize=4)
    if shortfall is None:
        return None
    needed, free = shortfall
    return (
        f"the parameters take {needed} in float32, more than the {free} of memory "
        "available here: rnnc compile writes its source, but running it here will be refused"
    )
