"""Drawing specs with Graphviz: what course slides draw, from the spec itself.

Three views, each a ``graphviz.Digraph`` built from the rolled graph of
:mod:`rnnc.front.graph` (never from the unrolled one, so a sequence of 10,000 steps costs
no more than one of 5):

- ``rolled``: one node per input, layer and output; a layer's own recurrence as a
  loop marked t-1; other edges across time marked with their delay; each time axis
  (an encoder's, a decoder's) in a cluster of its own;
- ``unrolled``: a grid, time left to right and layers bottom to top; each depth and
  direction of a recurrent layer is a row, the forward one with arrows to the right
  and the backward one to the left, merged step by step; long sequences show their
  first and last steps with an ellipsis between;
- ``cell``: the dataflow of a cell's equations, in the style of the familiar LSTM
  diagram (products with the weights, gates, sigmoid and tanh, elementwise products
  and sums, previous states in and new states out).

Edges keep one style per kind across views, shown in a legend. A spec that fails its
checks still draws: the nodes and edges a problem concerns are red and its message is
in the legend. Every label is escaped and the output is deterministic: the same spec
gives the same DOT text, byte for byte.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import graphviz

from rnnc.errors import RnncError, did_you_mean
from rnnc.front import notebook
from rnnc.front.cells import builtin_cells
from rnnc.front.checks import Analysis, analyze, fed_input
from rnnc.front.equations import Binary, Call, Cell, Concat, Expr, MatMul, Neg, Num, Ref
from rnnc.front.graph import input_edges, instant_order
from rnnc.front.spec import RecurrentLayer, Spec, TokenInput

VIEWS = ("rolled", "unrolled", "cell")
FORMATS = ("svg", "png", "pdf", "dot")
ERROR = "#d62728"

# One style per kind of edge, in every view: (Graphviz attributes, legend text).
EDGE_STYLES: dict[str, tuple[dict[str, str], str]] = {
    "input": ({"color": "#333333"}, "input (same step)"),
    "state": ({"color": "#555555", "penwidth": "1.4"}, "state (t-1 -> t)"),
    "recurrent": ({"color": "#8c564b", "fontcolor": "#8c564b"}, "recurrent edge (t-k)"),
    "init": ({"color": "#1f77b4", "penwidth": "2.2", "fontcolor": "#1f77b4"}, "init / bridge"),
    "attention": (
        {"color": "#ff7f0e", "arrowhead": "vee", "fontcolor": "#ff7f0e"},
        "attention",
    ),
    "teacher": ({"color": "#2ca02c", "style": "dashed"}, "teacher forcing (truth at t)"),
    "feedback": (
        {"color": "#9467bd", "style": "dotted", "penwidth": "1.8", "fontcolor": "#9467bd"},
        "feedback (own prediction, t-1)",
    ),
    "residual": (
        {"color": "#7f7f7f", "style": "dashed", "arrowhead": "empty"},
        "residual (added to the output)",
    ),
    "output": ({"color": "#333333", "arrowhead": "normal"}, "output"),
}

NODE_STYLES: dict[str, dict[str, str]] = {
    "input": {"shape": "ellipse", "style": "filled", "fillcolor": "#e8f1fb"},
    "recurrent": {"shape": "box", "style": "rounded,filled", "fillcolor": "#fff4dd"},
    "dense": {"shape": "box", "style": "filled", "fillcolor": "#eef7ea"},
    "embedding": {"shape": "box", "style": "filled", "fillcolor": "#f3eefa"},
    "output": {"shape": "ellipse", "style": "filled", "fillcolor": "#fdecea"},
    "missing": {"shape": "box", "style": "dashed", "color": ERROR, "fontcolor": ERROR},
    "merge": {"shape": "circle", "width": "0.3", "fixedsize": "false", "fontsize": "10"},
    "bridge": {"shape": "box", "style": "filled", "fillcolor": "#dceaf7", "fontsize": "10"},
    "ellipsis": {"shape": "plaintext", "fontsize": "18"},
}

MERGE_SYMBOL = {"concat": "[ , ]", "sum": "+", "mean": "mean", "mul": "⊙"}
ARROW = {"fwd": "→", "bwd": "←"}


def label(*lines: str) -> str:
    """A Graphviz label from lines of text: backslashes and quotes escaped, never HTML."""
    escaped = [line.replace("\\", "\\\\") for line in lines]
    return graphviz.nohtml("\\n".join(escaped))  # type: ignore[no-any-return]


class Drawing(graphviz.Digraph):
    """A ``graphviz.Digraph`` that shows itself in Jupyter even without Graphviz
    installed (as its DOT text), and never raises there."""

    def _repr_mimebundle_(
        self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None, **_: Any
    ) -> dict[str, Any]:
        return mimebundle(self)


def mimebundle(drawing: graphviz.Digraph, text: str | None = None) -> dict[str, Any]:
    """SVG when the dot program is there, the DOT text (or ``text``) otherwise."""
    plain = {"text/plain": text if text is not None else drawing.source}
    if not has_dot():
        return plain
    try:
        return {"image/svg+xml": drawing.pipe(format="svg").decode("utf-8"), **plain}
    except Exception:  # a display hook must never raise
        return plain


def show(spec: Spec | Analysis, view: str = "unrolled") -> dict[str, Any]:
    """A Jupyter mime bundle for a spec or analysis: never raises (a drawing that
    cannot be made shows as text saying why)."""
    try:
        return mimebundle(render(spec, view=view))
    except Exception as exc:
        return {"text/plain": f"<rnnc: {spec.__class__.__name__}; no drawing: {exc}>"}


def has_dot() -> bool:
    """Whether Graphviz's dot program is on the PATH."""
    return shutil.which("dot") is not None


# --- entry point -------------------------------------------------------------------------


def render(
    spec: Spec | Analysis | None = None,
    view: str = "unrolled",
    steps: int | Mapping[str, int] | None = None,
    cell: str | None = None,
    attention: str = "auto",
) -> Drawing:
    """Draw a spec (see the module docstring).

    ``steps``: drawn steps per time axis (an int, or one per sequence input; default
    4); longer ones are elided in the middle. ``cell``: with ``view="cell"``, the cell
    to draw (a built-in, or one of the spec's; default: every cell the spec uses).
    ``attention``: ``each`` (an edge from every memory step to every query step),
    ``bundled`` (one edge per query step) or ``auto`` (bundled when there would be
    more than 8).
    """
    if view not in VIEWS:
        raise RnncError(
            f"view must be one of {', '.join(VIEWS)}, found {view!r}{did_you_mean(view, VIEWS)}"
        )
    if attention not in ("auto", "each", "bundled"):
        raise RnncError(f"attention must be auto, each or bundled, found {attention!r}")
    analysis = None if spec is None else (spec if isinstance(spec, Analysis) else analyze(spec))
    if view == "cell":
        cells = _cells_to_draw(analysis, cell)
        return _draw_cells(cells, analysis)
    if analysis is None:
        raise RnncError(f"the {view} view needs a spec")
    drawer = _Drawer(analysis)
    if view == "rolled":
        return drawer.rolled()
    return drawer.unrolled(steps, attention)


def _cells_to_draw(analysis: Analysis | None, name: str | None) -> list[Cell]:
    known = dict(builtin_cells()) if analysis is None else dict(analysis.cells)
    if name is not None:
        if name not in known:
            raise RnncError(
                f"no cell {name!r}{did_you_mean(name, list(known))}; cells: {', '.join(known)}"
            )
        return [known[name]]
    if analysis is None:
        raise RnncError("the cell view needs a spec or a cell name (--cell lstm)")
    used = [layer.cell for layer in analysis.spec.recurrent_layers().values()]
    return [known[c] for c in dict.fromkeys(used) if c in known]


# --- the rolled and unrolled views ---------------------------------------------------------


class _Drawer:
    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self.spec = analysis.spec
        self.g = analysis.graph
        self.bad_nodes: set[str] = set()
        self.bad_paths: set[tuple[Any, ...]] = set()
        for d in analysis.errors:
            self.bad_nodes.update(d.nodes)
            self.bad_paths.add(tuple(d.path))
        self.kinds_used: set[str] = set()

    # -- common pieces

    def new(self, name: str) -> Drawing:
        d = Drawing(name=name)
        d.attr(fontname="Helvetica", label=label(self.title()), labelloc="t", fontsize="16")
        d.attr("node", fontname="Helvetica", fontsize="11")
        d.attr("edge", fontname="Helvetica", fontsize="9", arrowsize="0.7")
        return d

    def title(self) -> str:
        verdict = "" if self.analysis.ok else f" ({len(self.analysis.errors)} error(s))"
        return f"{self.spec.name}{verdict}"

    def edge_attrs(self, kind: str, path: Any = None, **extra: str) -> dict[str, str]:
        self.kinds_used.add(kind)
        attrs = dict(EDGE_STYLES[kind][0])
        if path is not None and tuple(path) in self.bad_paths:
            attrs.update(color=ERROR, fontcolor=ERROR, penwidth="2.2")
        attrs.update(extra)
        return attrs

    def node_attrs(self, node: str, kind: str) -> dict[str, str]:
        attrs = dict(NODE_STYLES.get(kind, {}))
        if node in self.bad_nodes:
            attrs.update(color=ERROR, fontcolor=ERROR, penwidth="2.2")
        return attrs

    def legend(self, d: graphviz.Digraph) -> None:
        """One short sample edge per kind drawn, side by side, and the errors."""
        kinds = [k for k in EDGE_STYLES if k in self.kinds_used]
        with d.subgraph(name="cluster_legend") as c:
            c.attr(label="legend", fontsize="11", style="rounded", color="#bbbbbb")
            tails, heads = [], []
            for i, kind in enumerate(kinds):
                a, b = f"legend_{i}_a", f"legend_{i}_b"
                c.node(a, label="", shape="point", width="0.04")
                c.node(b, label="", shape="point", width="0.04")
                attrs = {**EDGE_STYLES[kind][0], "label": label(EDGE_STYLES[kind][1])}
                attrs["fontcolor"] = attrs.get("fontcolor", "#333333")
                c.edge(a, b, **attrs)
                tails.append(a)
                heads.append(b)
            for same in (tails, heads):
                with c.subgraph() as s:
                    s.attr(rank="same")
                    for node in same:
                        s.node(node)
                for left, right in itertools.pairwise(same):
                    c.edge(left, right, style="invis")
            if self.analysis.errors:
                lines = [f"{d.dotted_path or 'spec'}: {d.message}" for d in self.analysis.errors]
                c.node(
                    "legend_errors",
                    label=label(*_wrap(lines)),
                    shape="box",
                    color=ERROR,
                    fontcolor=ERROR,
                    fontsize="10",
                )
                if heads:
                    c.edge(heads[0], "legend_errors", style="invis")

    def describe(self, node: str) -> list[str]:
        data = self.g.nodes[node]
        spec = data.get("spec")
        if data["kind"] == "input":
            if isinstance(spec, TokenInput):
                return [
                    node,
                    f"tokens ({spec.vocab})" + (f" -> {spec.embed}" if spec.embed else ""),
                ]
            return [node, f"size {spec.size}" + ("" if spec.sequence else ", once")]
        if data["kind"] == "recurrent":
            lines = [node, f"{spec.cell} {spec.hidden}"]
            shape = []
            if spec.depth > 1:
                shape.append(f"x{spec.depth} deep" + (" residual" if spec.residual else ""))
            if spec.direction == "bidirectional":
                shape.append(f"⇄ bidirectional ({spec.merge})")
            elif spec.direction == "backward":
                shape.append("← backward")
            return lines + shape
        if data["kind"] == "dense":
            return [node, f"dense {spec.dense}, {spec.activation}"]
        if data["kind"] == "embedding":
            return [node, f"embedding {spec.embedding}"]
        if data["kind"] == "output":
            name = node.split(".", 1)[1]
            detail = (
                f"state {spec.state}"
                if spec.state
                else ("last step" if spec.steps == "last" else "every step")
            )
            return [name, detail]
        return [node, "(not defined)"]

    def axis_roles(self) -> dict[str, str]:
        """A cluster title for each time axis: encoder, decoder, or the axis's name."""
        axes = list(dict.fromkeys(d["axis"] for _, d in self.g.nodes(data=True) if d.get("axis")))
        roles = {}
        for axis in axes:
            gives = takes = False
            for u, v, data in self.g.edges(data=True):
                if data["kind"] in ("init", "attention"):
                    if self.g.nodes[u].get("axis") == axis and self.g.nodes[v].get("axis") != axis:
                        gives = True
                    if self.g.nodes[v].get("axis") == axis and self.g.nodes[u].get("axis") != axis:
                        takes = True
            role = "decoder" if takes else ("encoder" if gives else "steps")
            roles[axis] = f"{role} ({axis})" if len(axes) > 1 else ""
        return roles

    # -- rolled

    def rolled(self) -> Drawing:
        d = self.new("rolled")
        d.attr(rankdir="BT", newrank="true")
        roles = self.axis_roles()
        by_axis: dict[str | None, list[str]] = {}
        for node, data in self.g.nodes(data=True):
            by_axis.setdefault(data.get("axis") if any(roles.values()) else None, []).append(node)
        for axis, nodes in sorted(
            by_axis.items(), key=lambda item: (item[0] is not None, item[0] or "")
        ):
            if axis is not None and roles.get(axis):
                with d.subgraph(name=f"cluster_{axis}") as c:
                    c.attr(
                        label=label(roles[axis]), style="rounded", color="#999999", fontsize="12"
                    )
                    for node in nodes:
                        self.rolled_node(c, node)
            else:
                for node in nodes:
                    self.rolled_node(d, node)
        for u, v, _key, data in sorted(self.g.edges(keys=True, data=True), key=lambda e: e[:3]):
            self.rolled_edge(d, u, v, data)
        self.legend(d)
        return d

    def rolled_node(self, d: graphviz.Digraph, node: str) -> None:
        data = self.g.nodes[node]
        attrs = self.node_attrs(node, data["kind"])
        spec = data.get("spec")
        if isinstance(spec, RecurrentLayer) and spec.depth > 1:
            attrs["peripheries"] = str(min(spec.depth, 4))  # stacked, as a stack
        d.node(_id(node), label=label(*self.describe(node)), **attrs)

    def rolled_edge(self, d: graphviz.Digraph, u: str, v: str, data: Mapping[str, Any]) -> None:
        kind, delay = data["kind"], data["delay"]
        text = ""
        if kind == "state":
            text = "t-1"
        elif kind in ("recurrent", "feedback"):
            text = f"t-{delay}"
        elif kind == "init":
            text = "dense bridge" if data.get("bridge") == "dense" else "init"
        elif kind == "attention":
            text = f"attention ({data.get('score')})"
        style = kind
        if kind == "input" and self.teacher_forced(u, v):
            style = "teacher"
            text = "truth"
        attrs = self.edge_attrs(style, data.get("path"))
        if text:
            attrs["label"] = label(text)
        if kind in ("init", "attention", "feedback"):
            attrs["constraint"] = "false" if kind == "feedback" else "true"
        d.edge(_id(u), _id(v), **attrs)

    def teacher_forced(self, source: str, layer: str) -> bool:
        """Whether ``source`` is the ground truth a layer with feedback reads."""
        spec = self.spec.layers.get(layer)
        if not isinstance(spec, RecurrentLayer) or spec.feedback is None or not self.analysis.ok:
            return False
        fed, _ = fed_input(self.g, layer, self.g.nodes[spec.feedback]["width"])
        return fed == source

    # -- unrolled

    def unrolled(self, steps: int | Mapping[str, int] | None, attention: str) -> Drawing:
        d = self.new("unrolled")
        d.attr(rankdir="BT", newrank="true", nodesep="0.25", ranksep="0.45")
        axes = list(
            dict.fromkeys(data["axis"] for _, data in self.g.nodes(data=True) if data.get("axis"))
        )
        lengths = {
            a: (steps if isinstance(steps, int) else (steps or {}).get(a, 4)) or 4 for a in axes
        }
        self.shown = {a: _shown_steps(lengths[a]) for a in axes}
        self.values: dict[tuple[str, Any], str] = {}  # (node, step) -> drawn node id
        self.rows: list[list[str]] = []  # each row's node ids, left to right
        self.first_row: dict[str, list[str]] = {}  # per time axis
        self.input_rows: dict[str, list[str]] = {}  # per time axis: the last input row
        self.free: list[tuple[str, dict[str, str]]] = []  # nodes outside every cluster
        self.pending_invisible: list[tuple[str, str]] = []  # layout-only edges
        roles = self.axis_roles()
        bundle = attention == "bundled"
        if attention == "auto":
            bundle = any(
                len(self.shown.get(self.g.nodes[u].get("axis"), [None]))
                * len(self.shown.get(self.g.nodes[v].get("axis"), [None]))
                > 8
                for u, v, k in self.edges_of("attention")
            )
        order = instant_order(self.g)
        order += [n for n, data in self.g.nodes(data=True) if data["kind"] == "output"]
        clusters: dict[str | None, list[tuple[str, dict[str, str]]]] = {}
        edges: list[tuple[str, str, dict[str, str]]] = []
        for node in order:
            axis = self.g.nodes[node].get("axis")
            bucket = clusters.setdefault(axis if roles.get(axis or "") else None, [])
            self.unrolled_node(node, bucket, edges, bundle)
        for axis in sorted(
            clusters, key=lambda a: (a is not None, axes.index(a) if a in axes else -1)
        ):
            members = clusters[axis]
            if axis is None:
                for node_id, attrs in members:
                    d.node(node_id, **attrs)
                continue
            with d.subgraph(name=f"cluster_{axis}") as c:
                c.attr(label=label(roles[axis]), style="rounded", color="#999999", fontsize="12")
                for node_id, attrs in members:
                    c.node(node_id, **attrs)
        for node_id, attrs in self.free:
            d.node(node_id, **attrs)
        for row in self.rows:  # time runs left to right in every row
            with d.subgraph() as s:
                s.attr(rank="same")
                for node_id in row:
                    s.node(node_id)
            for a, b in itertools.pairwise(row):
                d.edge(a, b, style="invis", weight="10")
        self.order_axes(d, axes)
        for a, b in self.pending_invisible:
            d.edge(a, b, style="invis")
        for a, b, attrs in edges:
            source = self.at(*a) if isinstance(a, tuple) else a
            if source is not None:
                d.edge(source, b, **attrs)
        self.legend(d)
        return d

    def edges_of(self, kind: str) -> list[tuple[str, str, str]]:
        return [
            (u, v, k)
            for u, v, k, data in self.g.edges(keys=True, data=True)
            if data["kind"] == kind
        ]

    def order_axes(self, d: graphviz.Digraph, axes: list[str]) -> None:
        """Encoder steps, then decoder steps: the first rows of consecutive axes side by
        side, in spec order."""
        firsts = [self.first_row[a] for a in axes if a in self.first_row]
        for left, right in itertools.pairwise(firsts):
            d.edge(left[-1], right[0], style="invis", weight="5")
            with d.subgraph() as s:
                s.attr(rank="same")
                s.node(left[-1])
                s.node(right[0])

    def at(self, node: str, t: Any) -> str | None:
        """The drawn node holding ``node``'s value at step t ('final' for final states)."""
        return self.values.get((node, t))

    def add_row(self, axis: str | None, ids: list[str], stack: bool = False) -> None:
        """A row of one time axis; ``stack``: above the axis's previous input row (two
        sequence inputs on one axis, one above the other, each step in its column)."""
        self.rows.append(ids)
        if axis is None:
            return
        self.first_row.setdefault(axis, ids)
        if stack:
            below = self.input_rows.get(axis)
            if below is not None:
                self.pending_invisible += list(zip(below, ids, strict=True))
            self.input_rows[axis] = ids

    def unrolled_node(self, node: str, bucket: list[Any], edges: list[Any], bundle: bool) -> None:
        data = self.g.nodes[node]
        kind, axis = data["kind"], data.get("axis")
        shown = self.shown.get(axis) if axis else None
        if kind == "recurrent" and shown is not None:
            self.unrolled_layer(node, data["spec"], shown, bucket, edges, bundle)
            return
        if kind == "output":
            self.unrolled_output(node, data, bucket, edges)
            return
        attrs = self.node_attrs(node, kind)
        if shown is None:
            node_id = _id(node)
            bucket.append((node_id, {"label": label(*self.describe(node)), **attrs}))
            self.values[(node, None)] = node_id
            self.values[(node, "final")] = node_id
            for each in self.all_steps():
                self.values[(node, each)] = node_id
            if kind not in ("input", "missing"):  # (a layer without steps: a broken spec)
                for source, e in input_edges(self.g, node):
                    edges.append(
                        ((source, "final"), node_id, self.edge_attrs("input", e.get("path")))
                    )
            return

        def step(t: int) -> str:
            node_id = _id(f"{node}@{t}")
            bucket.append((node_id, {"label": label(f"{node}[{t}]"), **attrs}))
            self.values[(node, t)] = node_id
            if kind != "input":
                for source, e in input_edges(self.g, node):
                    per_step = self.g.nodes[source].get("axis") is not None
                    src = self.at(source, t if per_step else "final")
                    if src:
                        edges.append((src, node_id, self.edge_attrs("input", e.get("path"))))
            return node_id

        row = self.row(node, shown, bucket, step)
        self.values[(node, "final")] = row[-1]
        self.add_row(axis, row, stack=kind == "input")

    def all_steps(self) -> list[int]:
        return sorted({t for shown in self.shown.values() for t in shown if t is not None})

    def row(self, owner: str, shown: list[int | None], bucket: list[Any], step: Any) -> list[str]:
        """A row of drawn steps, left to right: ``step(t)`` draws one and returns its id;
        an ellipsis stands where steps are left out."""
        return [self.ellipsis(owner, bucket) if t is None else step(t) for t in shown]

    def ellipsis(self, owner: str, bucket: list[Any]) -> str:
        node_id = _id(f"{owner}@...")
        bucket.append((node_id, {"label": "⋯", **NODE_STYLES["ellipsis"]}))
        return node_id

    def unrolled_layer(
        self,
        node: str,
        layer: RecurrentLayer,
        shown: list[int | None],
        bucket: list[Any],
        edges: list[Any],
        bundle: bool,
    ) -> None:
        axis = self.g.nodes[node]["axis"]
        steps = [t for t in shown if t is not None]
        last = steps[-1] if steps else 0
        below: dict[Any, list[str]] = {}  # step -> what depth k reads (k > 0)
        attrs = self.node_attrs(node, "recurrent")
        init = next(
            ((u, e) for u, _, e in self.g.in_edges(node, data=True) if e["kind"] == "init"), None
        )
        start: str | None = None  # what the first step of every row starts from
        init_path = init[1].get("path") if init else None
        if init is not None and self.at(init[0], "final"):
            start = self.at(init[0], "final")
            if init[1].get("bridge") == "dense":
                bridge = _id(f"{node}:bridge")
                bucket.append(
                    (bridge, {"label": label("bridge", "tanh(W h + b)"), **NODE_STYLES["bridge"]})
                )
                edges.append((start, bridge, self.edge_attrs("init", init_path)))
                start = bridge
        for k in range(layer.depth):
            merged: dict[Any, list[str]] = {}  # step -> this depth's cells at that step
            inputs = below  # what depth k reads (depth k-1's output), for the residual
            for d in layer.directions:
                first = steps[0] if d == "fwd" else last
                where = _Row(node, layer, k, d, shown, start, first, init_path)
                row = self.cell_row(where, attrs, below, merged, bucket, edges)
                if d == "bwd" and len(layer.directions) == 2:  # the backward row above
                    for a, b in zip(self.rows[-1], row, strict=True):
                        edges.append((a, b, {"style": "invis"}))
                self.add_row(axis, row)
            if len(layer.directions) == 1:
                below = merged
                self.residual_edges(layer, k, inputs, below, edges)
                continue
            below = {}
            for t in steps:
                merge_id = _id(f"{node}.l{k}:merge@{t}")
                symbol = {"label": label(MERGE_SYMBOL[layer.merge]), **NODE_STYLES["merge"]}
                bucket.append((merge_id, symbol))
                for cell_id in merged[t]:
                    edges.append((cell_id, merge_id, self.edge_attrs("input")))
                below[t] = [merge_id]
            ids = iter([below[t][0] for t in steps])
            self.add_row(
                axis, self.row(f"{node}.merge.l{k}", shown, bucket, lambda t, ids=ids: next(ids))
            )
            self.residual_edges(layer, k, inputs, below, edges)
        for t in steps:
            self.values[(node, t)] = below[t][0]
        if steps:
            self.values[(node, "final")] = self.final_state(node, layer, steps, bucket, edges)
        self.attention_edges(node, layer, steps, edges, bundle, bucket)

    def residual_edges(
        self,
        layer: RecurrentLayer,
        k: int,
        inputs: dict[Any, list[str]],
        outputs: dict[Any, list[str]],
        edges: list[Any],
    ) -> None:
        """A residual layer adds what depth k reads to what it gives (k > 0)."""
        if not layer.residual or k == 0:
            return
        for t, sources in inputs.items():
            for source in sources[:1]:
                target = outputs[t][0]
                edges.append((source, target, self.edge_attrs("residual", constraint="false")))

    def cell_row(
        self,
        where: _Row,
        attrs: dict[str, str],
        below: dict[Any, list[str]],
        merged: dict[Any, list[str]],
        bucket: list[Any],
        edges: list[Any],
    ) -> list[str]:
        """One depth and direction of a layer over the shown steps, its state running
        along the row: to the right forward, to the left backward."""
        node, layer, k, d = where.node, where.layer, where.depth, where.direction
        name = node + (f" l{k}" if layer.depth > 1 else "")
        text = name + (f" {ARROW[d]}" if len(layer.directions) == 2 else "")

        def cell(t: int) -> str:
            cell_id = _id(f"{node}.{d}.l{k}@{t}")
            bucket.append((cell_id, {"label": label(text), **attrs}))
            merged.setdefault(t, []).append(cell_id)
            if k == 0:
                self.layer_inputs(node, layer, t, cell_id, edges)
            for src in below.get(t, []):
                edges.append((src, cell_id, self.edge_attrs("input")))
            if where.start is not None and t == where.first:
                edges.append((where.start, cell_id, self.edge_attrs("init", where.init_path)))
            return cell_id

        row = self.row(f"{node}.{d}.l{k}", where.shown, bucket, cell)
        for a, b in itertools.pairwise(row):
            extra = {"dir": "back"} if d == "bwd" else {}
            edges.append((a, b, self.edge_attrs("state", **extra)))
        return row

    def final_state(
        self,
        node: str,
        layer: RecurrentLayer,
        steps: list[int],
        bucket: list[Any],
        edges: list[Any],
    ) -> str:
        """What a reader of the layer's final state starts from: the top row's last step
        (forward) or first step (backward); both directions merged when there are two."""
        top = layer.depth - 1
        ends = {"fwd": steps[-1], "bwd": steps[0]}
        cells = [_id(f"{node}.{d}.l{top}@{ends[d]}") for d in layer.directions]
        if len(cells) == 1:
            return cells[0]
        final = _id(f"{node}:final")
        text = label(f"final {MERGE_SYMBOL[layer.merge]}")
        bucket.append((final, {"label": text, **NODE_STYLES["merge"], "shape": "box"}))
        self.rows[-1].append(final)  # beside the top row's last step
        for cell_id in cells:
            edges.append((cell_id, final, self.edge_attrs("state", constraint="false")))
        return final

    def layer_inputs(
        self, node: str, layer: RecurrentLayer, t: int, cell_id: str, edges: list[Any]
    ) -> None:
        for source, e in input_edges(self.g, node):
            per_step = self.g.nodes[source].get("axis") is not None
            src = self.at(source, t if per_step else "final")
            if not src:
                continue
            style = "teacher" if t > 0 and self.teacher_forced(source, node) else "input"
            edges.append((src, cell_id, self.edge_attrs(style, e.get("path"))))
        for u, _, e in self.g.in_edges(node, data=True):
            if e["kind"] in ("recurrent", "feedback") and t - e["delay"] >= 0:
                # The source may be drawn later (the prediction a decoder feeds back):
                # the edge names the value and is resolved when every node is drawn.
                attrs = self.edge_attrs(
                    e["kind"], e.get("path"), label=label(f"t-{e['delay']}"), constraint="false"
                )
                edges.append(((u, t - e["delay"]), cell_id, attrs))

    def attention_edges(
        self,
        node: str,
        layer: RecurrentLayer,
        steps: list[int],
        edges: list[Any],
        bundle: bool,
        bucket: list[Any],
    ) -> None:
        if layer.attention is None:
            return
        memory = layer.attention.memory
        path = ("layers", node, "attention", "memory")
        k = 0 if layer.attention.score == "additive" else layer.depth - 1
        d = layer.directions[0]
        memory_axis = self.g.nodes.get(memory, {}).get("axis")
        memory_steps = [t for t in self.shown.get(memory_axis, []) if t is not None]
        if bundle:
            hub = _id(f"{node}:attention")
            self.free.append(  # outside the clusters: between the memory and the queries
                (
                    hub,
                    {
                        "label": label(
                            f"attention over {memory}", f"({layer.attention.score}, all steps)"
                        ),
                        "shape": "box",
                        "style": "rounded,dashed",
                        "color": "#ff7f0e",
                        "fontsize": "10",
                    },
                )
            )
            for s in memory_steps:
                src = self.at(memory, s)
                if src:
                    edges.append((src, hub, self.edge_attrs("attention", path)))
            for t in steps:
                edges.append(
                    (
                        hub,
                        _id(f"{node}.{d}.l{k}@{t}"),
                        self.edge_attrs("attention", path, constraint="false"),
                    )
                )
            return
        for t in steps:
            for s in memory_steps:
                src = self.at(memory, s)
                if src:
                    edges.append(
                        (
                            src,
                            _id(f"{node}.{d}.l{k}@{t}"),
                            self.edge_attrs("attention", path, constraint="false"),
                        )
                    )

    def unrolled_output(
        self, node: str, data: Mapping[str, Any], bucket: list[Any], edges: list[Any]
    ) -> None:
        out = data["spec"]
        source = out.from_
        attrs = self.node_attrs(node, "output")
        name = node.split(".", 1)[1]
        path = ("outputs", name, "from")
        axis = self.g.nodes.get(source, {}).get("axis")
        if out.state is not None or out.steps == "last" or axis is None:
            node_id = _id(node)
            what = (
                f"final {out.state}" if out.state else ("last step" if out.steps == "last" else "")
            )
            bucket.append((node_id, {"label": label(name, what) if what else label(name), **attrs}))
            src = self.at(source, "final")
            if src:
                edges.append((src, node_id, self.edge_attrs("output", path)))
            return

        def step(t: int) -> str:
            node_id = _id(f"{node}@{t}")
            bucket.append((node_id, {"label": label(f"{name}[{t}]"), **attrs}))
            src = self.at(source, t)
            if src:
                edges.append((src, node_id, self.edge_attrs("output", path)))
            return node_id

        self.add_row(axis, self.row(node, self.shown[axis], bucket, step))


@dataclass(frozen=True)
class _Row:
    """Where a row of cells sits: layer, depth, direction, the steps shown, and what
    its first step starts from (an init or bridge node, or nothing)."""

    node: str
    layer: RecurrentLayer
    depth: int
    direction: str
    shown: list[int | None]
    start: str | None
    first: int
    init_path: Any


def _shown_steps(T: int) -> list[int | None]:
    """The steps drawn of T: all up to 6, else the first three, an ellipsis (None) and
    the last two."""
    if T <= 6:
        return list(range(T))
    return [0, 1, 2, None, T - 2, T - 1]


def _id(name: str) -> str:
    """A DOT node id: the name itself (quoted by graphviz), never clashing with ours."""
    return name.replace(":", "·")  # ':' would read as a port


def _wrap(lines: Sequence[str], width: int = 70) -> list[str]:
    out = []
    for line in lines:
        while len(line) > width:
            cut = line.rfind(" ", 0, width)
            cut = cut if cut > 20 else width
            out.append(line[:cut])
            line = "  " + line[cut:].lstrip()
        out.append(line)
    return out


# --- the cell view ---------------------------------------------------------------------------

FUNCTION_STYLE = {
    "sigmoid": ("σ", "#f9d56e"),
    "tanh": ("tanh", "#f4a261"),
    "relu": ("ReLU", "#f4a261"),
    "hard_sigmoid": ("hard σ", "#f9d56e"),
    "softsign": ("softsign", "#f4a261"),
    "identity": ("id", "#eeeeee"),
}


def _draw_cells(cells: Sequence[Cell], analysis: Analysis | None) -> Drawing:
    d = Drawing(name="cell")
    title = " / ".join(c.name for c in cells)
    d.attr(
        rankdir="LR",
        fontname="Helvetica",
        label=label(f"cell: {title}"),
        labelloc="t",
        fontsize="16",
        newrank="true",
    )
    d.attr("node", fontname="Helvetica", fontsize="11")
    d.attr("edge", fontname="Helvetica", fontsize="9", arrowsize="0.7")
    for cell in cells:
        if len(cells) == 1:
            _CellDrawer(cell, d, "").draw()
        else:
            with d.subgraph(name=f"cluster_{cell.name}") as c:
                c.attr(label=label(cell.name), style="rounded", color="#999999")
                _CellDrawer(cell, c, f"{cell.name}/").draw()
    return d


class _CellDrawer:
    """One node per operation of the equations; shared inputs ([x, h]) drawn once."""

    def __init__(self, cell: Cell, d: graphviz.Digraph, prefix: str):
        self.cell, self.d, self.prefix = cell, d, prefix
        self.shared: dict[Expr, str] = {}
        self.results: dict[str, str] = {}  # equation target -> node of its value
        self.counter = 0

    def node(self, text: str, **attrs: str) -> str:
        self.counter += 1
        node_id = f"{self.prefix}n{self.counter}"
        self.d.node(node_id, label=label(text), **attrs)
        return node_id

    def draw(self) -> None:
        cell = self.cell
        with self.d.subgraph() as s:
            s.attr(rank="min")
            for state in cell.state:
                node_id = f"{self.prefix}prev·{state}"
                s.node(
                    node_id,
                    label=label(f"{state}(t-1)"),
                    shape="ellipse",
                    style="filled",
                    fillcolor="#e8f1fb",
                )
                self.shared[Ref(state, "previous")] = node_id
        x_id = f"{self.prefix}x"
        self.d.node(x_id, label=label("x(t)"), shape="ellipse", style="filled", fillcolor="#e8f1fb")
        self.shared[Ref("x", "input")] = x_id
        for eq in cell.equations:
            root = self.expr(eq.expr)
            if eq.target in cell.state:
                target = f"{self.prefix}new·{eq.target}"
                self.d.node(
                    target,
                    label=label(f"{eq.target}(t)"),
                    shape="ellipse",
                    style="filled,bold",
                    fillcolor="#fdecea",
                )
                self.d.edge(root, target, label=label(eq.target))
                self.results[eq.target] = target
            else:
                self.results[eq.target] = root
                self.d.node(root, xlabel=label(eq.target))
        with self.d.subgraph() as s:
            s.attr(rank="max")
            for state in cell.state:
                s.node(f"{self.prefix}new·{state}")

    def expr(self, e: Expr) -> str:
        if e in self.shared:
            return self.shared[e]
        if isinstance(e, Ref):
            if e.kind == "local":
                return self.results[e.name]
            node_id = self.node(e.name, shape="plaintext", fontsize="10", fontcolor="#555555")
            self.shared[e] = node_id
            return node_id
        if isinstance(e, Num):
            return self.node(f"{e.value:g}", shape="plaintext", fontsize="10")
        if isinstance(e, Concat):
            parts = [self.expr(p) for p in e.parts]
            node_id = self.node(
                "[" + ", ".join(_short(p) for p in e.parts) + "]",
                shape="box",
                style="rounded",
                fontsize="10",
            )
            for p in parts:
                self.d.edge(p, node_id, **EDGE_STYLES["input"][0])
            self.shared[e] = node_id
            return node_id
        if isinstance(e, MatMul):
            operand = self.expr(e.operand)
            node_id = self.node(f"{e.param} ·", shape="box", style="filled", fillcolor="#dceaf7")
            self.d.edge(operand, node_id, **EDGE_STYLES["input"][0])
            return node_id
        if isinstance(e, Call):
            arg = self.expr(e.arg)
            text, color = FUNCTION_STYLE.get(e.function, (e.function, "#eeeeee"))
            node_id = self.node(text, shape="box", style="rounded,filled", fillcolor=color)
            self.d.edge(arg, node_id, **EDGE_STYLES["input"][0])
            return node_id
        if isinstance(e, Neg):
            operand = self.expr(e.operand)
            node_id = self.node("−", shape="circle", width="0.3")
            self.d.edge(operand, node_id, **EDGE_STYLES["input"][0])
            return node_id
        assert isinstance(e, Binary)
        left, right = self.expr(e.left), self.expr(e.right)
        symbol = {"+": "+", "-": "−", "*": "⊙"}[e.op]
        node_id = self.node(
            symbol, shape="circle", width="0.3", style="filled", fillcolor="#ffffff"
        )
        self.d.edge(left, node_id, **EDGE_STYLES["input"][0])
        self.d.edge(
            right, node_id, **EDGE_STYLES["input"][0], style="dashed" if e.op == "-" else "solid"
        )
        return node_id


def _short(e: Expr) -> str:
    if isinstance(e, Ref):
        return e.name
    return "…"


# --- writing ---------------------------------------------------------------------------------


def output_format(path: str | None, given: str | None) -> str:
    """The format to write: ``given``, else the suffix of ``path``, else DOT."""
    if given is not None:
        fmt = given
    elif path is not None and "." in path.rsplit("/", 1)[-1]:
        fmt = path.rsplit(".", 1)[-1].lower()
    else:
        fmt = "dot"
    if fmt not in FORMATS:
        raise RnncError(
            f"cannot write {fmt!r}: formats are {', '.join(FORMATS)} (from the file's suffix, or --format)"
        )
    return fmt


DOT_MISSING = (
    "Graphviz's dot program is not installed, and it draws {fmt}: install it "
    "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz; "
    "conda: conda install graphviz), or write DOT text with -o FILE.dot or --format dot"
)


def encode(drawing: graphviz.Digraph, fmt: str) -> bytes:
    """The drawing in a format: DOT text needs nothing; the others need dot."""
    if fmt == "dot":
        return drawing.source.encode("utf-8")  # type: ignore[no-any-return]
    if not has_dot():
        raise RnncError(DOT_MISSING.format(fmt=fmt))
    return drawing.pipe(format=fmt)  # type: ignore[no-any-return]


notebook.register(show)  # specs and analyses show in Jupyter as their drawings

__all__ = ["VIEWS", "Drawing", "encode", "has_dot", "output_format", "render", "show"]
