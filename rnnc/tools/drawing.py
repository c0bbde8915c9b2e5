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

import html
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
    "input": ({"color": "#333333"}, "input"),
    "state": ({"color": "#555555", "penwidth": "1.4"}, "state, t-1 → t"),
    "recurrent": ({"color": "#8c564b", "fontcolor": "#8c564b"}, "recurrent, t-k"),
    "init": ({"color": "#1f77b4", "penwidth": "2.2", "fontcolor": "#1f77b4"}, "init / bridge"),
    "attention": (
        {"color": "#ff7f0e", "arrowhead": "vee", "fontcolor": "#ff7f0e"},
        "attention",
    ),
    "feeding": (
        {
            "color": "#ff7f0e",
            "style": "dotted",
            "penwidth": "1.8",
            "arrowhead": "vee",
            "fontcolor": "#d95f02",
        },
        "input feeding h̃, t-1",
    ),
    "teacher": (
        {"color": "#2ca02c", "style": "dashed", "fontcolor": "#2ca02c"},
        "truth at t (teacher forcing)",
    ),
    "feedback": (
        {"color": "#9467bd", "style": "dotted", "penwidth": "1.8", "fontcolor": "#9467bd"},
        "own prediction at t-1",
    ),
    "residual": (
        {"color": "#7f7f7f", "style": "dashed", "arrowhead": "empty"},
        "residual (added)",
    ),
    "output": (
        {"color": "#138d90", "penwidth": "1.6", "arrowhead": "box", "arrowsize": "0.5"},
        "output",
    ),
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
    "attentional": {
        "shape": "box",
        "style": "filled",
        "fillcolor": "#fde3c8",
        "color": "#d95f02",
        "fontsize": "10",
    },
    "hub": {"shape": "box", "style": "rounded,dashed", "color": "#ff7f0e", "fontsize": "10"},
    "ellipsis": {"shape": "plaintext", "fontsize": "18"},
}

# NOTE: Luong's attentional vector (Luong et al. 2015, eq. 5); the layer's output is
# this, not the cell's h, so everything that reads the layer reads this node.
ATTENTIONAL = "tanh(W_c [context; h])"

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
        """A small table: a sample line per kind of edge drawn, and the errors."""
        kinds = [k for k in EDGE_STYLES if k in self.kinds_used]
        if kinds:
            entries = [(EDGE_STYLES[k][0], EDGE_STYLES[k][1]) for k in kinds]
            d.node("legend", label=legend_table(entries), **LEGEND_NODE)
        if self.analysis.errors:
            lines = [f"{d.dotted_path or 'spec'}: {d.message}" for d in self.analysis.errors]
            d.node(
                "legend_errors",
                label=label(*_wrap(lines)),
                shape="box",
                color=ERROR,
                fontcolor=ERROR,
                fontsize="10",
            )
            if kinds:
                d.edge("legend", "legend_errors", style="invis")

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
            return [node.split(".", 1)[1], _output_text(spec) or "every step"]
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
        if _luong(spec):
            text = label(f"{node}: attentional h̃", ATTENTIONAL)
            d.node(_id(f"{node}:attentional"), label=text, **NODE_STYLES["attentional"])

    def rolled_edge(self, d: graphviz.Digraph, u: str, v: str, data: Mapping[str, Any]) -> None:
        kind, delay = data["kind"], data["delay"]
        text = ""
        if kind == "state":
            text = "t-1"
        elif kind in ("recurrent", "feedback"):
            text = f"t-{delay}"
        elif kind == "init":
            text = "dense bridge" if data.get("bridge") == "dense" else "init"
            if data.get("states"):
                text += f" {', '.join(data['states'])}, layer by layer"
        elif kind == "attention":
            text = f"attention ({data.get('score')})"
        elif kind == "input":
            text = _select_text(data.get("select"))
        style = kind
        if kind == "input" and self.teacher_forced(u, v):
            style = "teacher"
            text = "truth" + self.forcing_text(v, "truth")
        elif kind == "feedback":
            text += self.forcing_text(v, "feedback")
        attrs = self.edge_attrs(style, data.get("path"))
        if kind in ("init", "attention", "feedback"):
            attrs["constraint"] = "false" if kind == "feedback" else "true"
        source, target = _id(u), _id(v)
        if _luong(self.g.nodes[u].get("spec")) and self.reads_output(data):
            source = _id(f"{u}:attentional")  # what reads a Luong layer reads h̃
        if kind == "attention" and _luong(self.g.nodes[v].get("spec")):
            target = _id(f"{v}:attentional")  # the context goes into h̃, not the cell
            query = self.edge_attrs("input", data.get("path"), label=label("query h(t)"))
            d.edge(_id(v), target, **query)
            if data.get("input_feeding"):
                feeding = self.edge_attrs("feeding", data.get("path"), label=label("t-1"))
                d.edge(target, _id(v), constraint="false", **feeding)
        if text:
            attrs["label"] = label(text)
        d.edge(source, target, **attrs)

    @staticmethod
    def reads_output(data: Mapping[str, Any]) -> bool:
        """Whether an edge out of a layer reads its output at some step (not its final
        state, as ``{from: L, state: h}`` and ``init`` do)."""
        select = data.get("select") or ""
        return data["kind"] in ("input", "output", "recurrent", "feedback") and not (
            select.startswith("state")
        )

    def forcing_text(self, layer: str, edge: str) -> str:
        """The probability of the truth (``edge="truth"``) or of the layer's own
        prediction (``"feedback"``) at a step, when teacher forcing is scheduled
        (below 1); empty otherwise."""
        spec = self.spec.layers.get(layer)
        p = getattr(spec, "teacher_forcing", None)
        if p is None or p >= 1:
            return ""
        return f", p = {p if edge == 'truth' else 1 - p:.3g}"

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
        self.same_rank: list[tuple[str, str]] = []  # pairs laid out side by side
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
        for pair in self.same_rank:
            with d.subgraph() as s:
                s.attr(rank="same")
                for node_id in pair:
                    s.node(node_id)
        for a, b, attrs in edges:
            # An end may name a value drawn later (node, step): resolved now.
            tail = self.at(*a) if isinstance(a, tuple) else a
            head = self.at(*b) if isinstance(b, tuple) else b
            if tail is not None and head is not None:
                d.edge(tail, head, **attrs)
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
        if shown is None:  # one value per example: a head on a final state, a pool
            node_id = _id(node)
            bucket.append((node_id, {"label": label(*self.describe(node)), **attrs}))
            for each in (None, "final", "last", *self.all_steps()):
                self.values[(node, each)] = node_id
            if kind not in ("input", "missing"):  # (a layer without steps: a broken spec)
                for source, e in input_edges(self.g, node):
                    self.read_edges(source, e, None, node_id, edges, "input")
            return

        def step(t: int) -> str:
            node_id = _id(f"{node}@{t}")
            bucket.append((node_id, {"label": label(f"{node}[{t}]"), **attrs}))
            self.values[(node, t)] = node_id
            if kind != "input":
                for source, e in input_edges(self.g, node):
                    self.read_edges(source, e, t, node_id, edges, "input")
            return node_id

        row = self.row(node, shown, bucket, step)
        self.values[(node, "final")] = self.values[(node, "last")] = row[-1]
        self.add_row(axis, row, stack=kind == "input")

    def read_edges(
        self,
        source: str,
        e: Mapping[str, Any],
        t: int | None,
        target: str,
        edges: list[Any],
        kind: str,
        text: str | None = None,
    ) -> None:
        """The edges by which ``target`` (at step t; None: no time axis) reads
        ``source`` as edge ``e`` selects it: the value at t, the final state, or (last
        step, pooled) for a reader without steps every step, for one with steps the
        last. The first edge carries ``text``, by default the selection's name."""
        select = e.get("select")
        per_step = self.g.nodes[source].get("axis") is not None
        if select is None:
            tails = [self.at(source, t if per_step and t is not None else "final")]
        elif select.startswith("state"):
            tails = [self.at(source, "final")]
        elif t is None and per_step:  # each example's last step may be any step
            shown = self.shown.get(self.g.nodes[source]["axis"], [])
            tails = [self.at(source, s) for s in reversed(shown) if s is not None]
        else:
            tails = [self.at(source, "last")]
        text = _select_text(select) if text is None else text
        for i, tail in enumerate(tail for tail in tails if tail):
            attrs = self.edge_attrs(kind, e.get("path"))
            if text and i == 0:
                attrs["label"] = label(text)
            edges.append((tail, target, attrs))

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
        source, init = next(
            ((u, e) for u, _, e in self.g.in_edges(node, data=True) if e["kind"] == "init"),
            ("", {}),
        )
        starts = self.init_starts(node, layer, source, init, bucket, edges)
        for k in range(layer.depth):
            merged: dict[Any, list[str]] = {}  # step -> this depth's cells at that step
            inputs = below  # what depth k reads (depth k-1's output), for the residual
            for d in layer.directions:
                first = steps[0] if d == "fwd" else last
                where = _Row(node, layer, k, d, shown, starts.get(k, ()), first, init)
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
        if steps:
            self.values[(node, "final")] = self.final_state(node, layer, steps, bucket, edges)
        if _luong(layer) and steps:
            self.values[(node, "top")] = below[steps[0]][0]
            below = self.attentional_row(node, layer, shown, below, bucket, edges)
        for t in steps:
            self.values[(node, t)] = below[t][0]
        if steps:
            self.values[(node, "last")] = below[last][0]
        self.attention_edges(node, layer, steps, edges, bundle, bucket)

    def attentional_row(
        self,
        node: str,
        layer: RecurrentLayer,
        shown: list[int | None],
        top: dict[Any, list[str]],
        bucket: list[Any],
        edges: list[Any],
    ) -> dict[Any, list[str]]:
        """Luong's attentional vector at each step, above the top depth: it reads the
        new h (and the context, see attention_edges), and is what the layer gives."""
        attrs = self.node_attrs(node, "attentional")
        steps = [t for t in shown if t is not None]
        out: dict[Any, list[str]] = {}

        def step(t: int) -> str:
            node_id = _id(f"{node}:attentional@{t}")
            lines = [f"h̃[{t}]"] + ([ATTENTIONAL] if t == steps[0] else [])
            bucket.append((node_id, {"label": label(*lines), **attrs}))
            for cell_id in top[t]:
                edges.append((cell_id, node_id, self.edge_attrs("input")))
            out[t] = [node_id]
            return node_id

        self.add_row(
            self.g.nodes[node]["axis"], self.row(f"{node}.attentional", shown, bucket, step)
        )
        return out

    def init_starts(
        self,
        node: str,
        layer: RecurrentLayer,
        source: str,
        init: Mapping[str, Any],
        bucket: list[Any],
        edges: list[Any],
    ) -> dict[int, tuple[str, ...]]:
        """What each depth's first step starts from: the source's final state (every
        depth), or with ``states`` its depth k's final cells; through a bridge node
        (one, or one per depth) when the bridge is dense."""
        if not init:
            return {}
        if init.get("states"):
            ends = self.final_cells(source)
            found = {k: tuple(ends.get(k, ())) for k in range(layer.depth)}
        else:
            final = self.at(source, "final")
            found = {k: (final,) if final else () for k in range(layer.depth)}
        if init.get("bridge") != "dense":
            return found
        per_depth = bool(init.get("states"))
        bridges: dict[int, tuple[str, ...]] = {}
        for k, tails in found.items():
            if not tails:
                continue
            bridge = _id(f"{node}:bridge" + (f" l{k}" if per_depth else ""))
            if not per_depth and k > 0:
                bridges[k] = bridges[0]
                continue
            name = f"bridge l{k}" if per_depth and layer.depth > 1 else "bridge"
            bucket.append(
                (bridge, {"label": label(name, "tanh(W h + b)"), **NODE_STYLES["bridge"]})
            )
            for tail in tails:
                edges.append((tail, bridge, self.init_attrs(init)))
            bridges[k] = (bridge,)
        return bridges

    def final_cells(self, source: str) -> dict[int, list[str]]:
        """A recurrent layer's drawn cells holding its final states, per depth: each
        direction's end (the last step forward, the first backward)."""
        spec = self.g.nodes[source].get("spec")
        shown = self.shown.get(self.g.nodes[source].get("axis") or "", [])
        steps = [t for t in shown if t is not None]
        if not isinstance(spec, RecurrentLayer) or not steps:
            return {}
        ends = {"fwd": steps[-1], "bwd": steps[0]}
        return {
            k: [_id(f"{source}.{d}.l{k}@{ends[d]}") for d in spec.directions]
            for k in range(spec.depth)
        }

    def init_attrs(self, init: Mapping[str, Any]) -> dict[str, str]:
        """An init edge, labelled with the states it hands over (``h, c``), if listed."""
        attrs = self.edge_attrs("init", init.get("path"))
        if init.get("states"):
            attrs["label"] = label(", ".join(init["states"]))
        return attrs

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
        along the row: to the right forward, to the left backward. The leftmost cell
        names the cell (``encoder: lstm``)."""
        node, layer, k, d = where.node, where.layer, where.depth, where.direction
        depth = f"l{k}" if layer.depth > 1 else ""
        arrow = ARROW[d] if len(layer.directions) == 2 else ""
        leftmost = next(t for t in where.shown if t is not None)

        def cell(t: int) -> str:
            cell_id = _id(f"{node}.{d}.l{k}@{t}")
            if t == leftmost:
                lines = [f"{node}: {layer.cell}"] + (
                    [f"{depth} {arrow}".strip()] if depth or arrow else []
                )
            else:
                lines = [" ".join(part for part in (node, depth, arrow) if part)]
            bucket.append((cell_id, {"label": label(*lines), **attrs}))
            merged.setdefault(t, []).append(cell_id)
            if k == 0:
                self.layer_inputs(where, t, cell_id, edges)
            for src in below.get(t, []):
                edges.append((src, cell_id, self.edge_attrs("input")))
            if t == where.first:
                for start in where.starts:
                    edges.append((start, cell_id, self.init_attrs(where.init)))
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
        cells = self.final_cells(node)[layer.depth - 1]
        if len(cells) == 1:
            return cells[0]
        final = _id(f"{node}:final")
        text = label(f"final {MERGE_SYMBOL[layer.merge]}")
        bucket.append((final, {"label": text, **NODE_STYLES["merge"], "shape": "box"}))
        self.rows[-1].append(final)  # beside the top row's last step
        for cell_id in cells:
            edges.append((cell_id, final, self.edge_attrs("state", constraint="false")))
        return final

    def layer_inputs(self, where: _Row, t: int, cell_id: str, edges: list[Any]) -> None:
        """What the bottom depth reads at step t: its inputs (the truth, when teacher
        forced), and the values across time (recurrent edges, the prediction fed back,
        Luong's h̃ fed in)."""
        node, steps = where.node, [s for s in where.shown if s is not None]
        forced = [s for s in steps if s > 0][:1]  # the first forced step carries p
        for source, e in input_edges(self.g, node):
            teacher = t > 0 and self.teacher_forced(source, node)
            p = self.forcing_text(node, "truth") if teacher and t in forced else ""
            style = "teacher" if teacher else "input"
            self.read_edges(source, e, t, cell_id, edges, style, ("truth" + p) if p else None)
        for u, _, e in self.g.in_edges(node, data=True):
            if e["kind"] in ("recurrent", "feedback") and t - e["delay"] >= 0:
                text = f"t-{e['delay']}"
                if e["kind"] == "feedback" and t in forced:
                    text += self.forcing_text(node, "feedback")
                attrs = self.edge_attrs(e["kind"], e.get("path"), label=label(text))
                edges.append(self.across_time((u, t - e["delay"]), cell_id, attrs))
            feeding = e["kind"] == "attention" and e.get("input_feeding")
            if feeding and _luong(where.layer) and t - 1 in steps:
                attrs = self.edge_attrs("feeding", e.get("path"), label=label("t-1"))
                edges.append(self.across_time((node, t - 1), cell_id, attrs))

    def across_time(
        self, value: tuple[str, int], cell_id: str, attrs: dict[str, str]
    ) -> tuple[Any, Any, dict[str, str]]:
        """An edge from a value of an earlier step into a cell. A value drawn before
        the cell (below it) is an ordinary edge that does not move anything; one drawn
        after (above it: the prediction a decoder feeds back, its h̃) is laid out as an
        edge up from the cell with its arrow turned round, so dot routes each between
        its two columns, and they neither cross nor bunch their labels."""
        if self.at(*value) is not None:
            return (value, cell_id, {**attrs, "constraint": "false"})
        return (cell_id, value, {**attrs, "dir": "back"})

    def attention_edges(
        self,
        node: str,
        layer: RecurrentLayer,
        steps: list[int],
        edges: list[Any],
        bundle: bool,
        bucket: list[Any],
    ) -> None:
        """Attention from the memory's steps into each step: into the bottom cell for
        Bahdanau (the context joins the input; the query is the previous h, along the
        state edge), into h̃ for Luong (the query is the new h, the edge up from the
        top cell)."""
        if layer.attention is None:
            return
        memory = layer.attention.memory
        path = ("layers", node, "attention", "memory")
        d = layer.directions[0]
        luong = _luong(layer) and self.at(node, "top") is not None
        if luong:
            targets = [_id(f"{node}:attentional@{t}") for t in steps]
        else:
            targets = [_id(f"{node}.{d}.l0@{t}") for t in steps]
        memory_axis = self.g.nodes.get(memory, {}).get("axis")
        memory_steps = [t for t in self.shown.get(memory_axis, []) if t is not None]
        sources = [s for s in (self.at(memory, t) for t in memory_steps) if s]
        # NOTE: these edges must not rank anything (constraint=false): any edge that
        # does, from the memory's side into the decoder's cluster, lets dot reorder
        # the steps of both. Into Luong's h̃, high up, dot routes them round the right.
        into = {"constraint": "false", "headport": "w"} if luong else {"constraint": "false"}
        if bundle:
            hub = _id(f"{node}:attention")
            text = label(f"attention over {memory}", f"({layer.attention.score}, all steps)")
            # outside the clusters: between the memory and the queries
            self.free.append((hub, {"label": text, **NODE_STYLES["hub"]}))
            for src in sources:
                edges.append((src, hub, self.edge_attrs("attention", path)))
            sources = [hub]
        for target in targets:
            for src in sources:
                edges.append((src, target, self.edge_attrs("attention", path, **into)))

    def unrolled_output(
        self, node: str, data: Mapping[str, Any], bucket: list[Any], edges: list[Any]
    ) -> None:
        out = data["spec"]
        source = out.from_
        attrs = self.node_attrs(node, "output")
        name = node.split(".", 1)[1]
        e = {"select": getattr(out, "select", None), "path": ("outputs", name, "from")}
        axis = self.g.nodes.get(source, {}).get("axis")
        if e["select"] is not None or axis is None:
            node_id = _id(node)
            what = _output_text(out)
            bucket.append((node_id, {"label": label(name, what) if what else label(name), **attrs}))
            self.read_edges(source, e, None, node_id, edges, "output", "")
            return

        def step(t: int) -> str:
            node_id = _id(f"{node}@{t}")
            bucket.append((node_id, {"label": label(f"{name}[{t}]"), **attrs}))
            self.read_edges(source, e, t, node_id, edges, "output", "")
            return node_id

        self.add_row(axis, self.row(node, self.shown[axis], bucket, step))


@dataclass(frozen=True)
class _Row:
    """Where a row of cells sits: layer, depth, direction, the steps shown, what its
    first step starts from (init or bridge nodes, or nothing) and the init edge."""

    node: str
    layer: RecurrentLayer
    depth: int
    direction: str
    shown: list[int | None]
    starts: tuple[str, ...]
    first: int
    init: Mapping[str, Any]


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


LEGEND_NODE = {"shape": "box", "style": "rounded", "color": "#bbbbbb", "margin": "0.05"}

# What a legend's sample line is drawn with: a line of these characters, then a head.
LINE_GLYPHS = {"solid": "─", "dashed": "╌", "dotted": "┈", "bold": "━"}
HEAD_GLYPHS = {"normal": "▸", "vee": "›", "empty": "▹", "box": "▪", "none": ""}


def legend_table(entries: Sequence[tuple[Mapping[str, str], str]]) -> str:
    """An HTML-like table for a legend node: a coloured sample of each edge style (or
    of a node's text, for the cell view) and what it means. The texts are rnnc's own,
    never a user's, and escaped all the same."""
    rows = ['<tr><td colspan="2" align="center"><font point-size="10">legend</font></td></tr>']
    for attrs, meaning in entries:
        style = attrs.get("style", "solid")
        if style == "solid" and float(attrs.get("penwidth", "1")) >= 2:
            style = "bold"
        glyph = attrs.get("glyph") or (
            LINE_GLYPHS.get(style, "─") * 3 + HEAD_GLYPHS.get(attrs.get("arrowhead", "normal"), "▸")
        )
        color = attrs.get("color", "#333333")
        rows.append(
            f'<tr><td align="left"><font color="{color}">{html.escape(glyph)}</font></td>'
            f'<td align="left">{html.escape(meaning)}</td></tr>'
        )
    cells = 'border="0" cellborder="0" cellspacing="0" cellpadding="1"'
    return f"<<table {cells}>{''.join(rows)}</table>>"


def _select_text(select: str | None) -> str:
    """How an edge that reads part of a node says so: ``state h`` -> ``final h``,
    ``last`` -> ``last step``, ``mean`` -> ``mean over t``."""
    if select is None:
        return ""
    if select.startswith("state"):
        return "final " + select.split(" ", 1)[-1]
    return "last step" if select == "last" else f"{select} over t"


def _output_text(out: object) -> str:
    """What part of its source an output takes, as its node says it."""
    if getattr(out, "attention", None):
        return "attention weights"
    return _select_text(getattr(out, "select", None))


def _luong(spec: object) -> bool:
    """Whether a layer attends as Luong does (query: the new h; output: h̃)."""
    if not isinstance(spec, RecurrentLayer) or spec.attention is None:
        return False
    return spec.attention.score != "additive"


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
    d.node("legend", label=legend_table(CELL_LEGEND), **LEGEND_NODE)
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
    """A part of a concatenation as the equations write it (``f ⊙ h``, ``W @ x``)."""
    if isinstance(e, Ref):
        return e.name
    if isinstance(e, Num):
        return f"{e.value:g}"
    if isinstance(e, Binary):
        symbol = {"+": "+", "-": "−", "*": "⊙"}[e.op]
        return f"{_short(e.left)} {symbol} {_short(e.right)}"
    if isinstance(e, MatMul):
        return f"{e.param} @ {_short(e.operand)}"
    if isinstance(e, Call):
        return f"{FUNCTION_STYLE.get(e.function, (e.function,))[0]}({_short(e.arg)})"
    if isinstance(e, Neg):
        return f"−{_short(e.operand)}"
    if isinstance(e, Concat):
        return "[" + ", ".join(_short(p) for p in e.parts) + "]"
    return "…"


# The cell view's legend: what each kind of box means.
CELL_LEGEND: list[tuple[dict[str, str], str]] = [
    ({"glyph": "W ·", "color": "#1f77b4"}, "matrix product W @ v"),
    ({"glyph": "σ tanh", "color": "#d95f02"}, "activation"),
    ({"glyph": "⊙ + −", "color": "#333333"}, "elementwise"),
    ({"glyph": "[a, b]", "color": "#333333"}, "concatenation"),
    ({"glyph": "b_f", "color": "#777777"}, "parameter vector"),
    ({"glyph": "h(t-1)", "color": "#1f77b4"}, "state in / out h(t)"),
]


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
