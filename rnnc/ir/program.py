"""The schedule of a checked spec: in what order its parts run.

:mod:`rnnc.ir.network` lowers a spec in the order a :class:`Program` gives: inputs and
layers so that each comes after what it reads at the same step; layers that must run
step by step together (feedback, additive attention, a recurrent edge back from what
a layer feeds) grouped into one *step loop*; for each layer with feedback, which input
the prediction replaces; what each member of a loop reads at step t.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from rnnc.errors import RnncError
from rnnc.front.checks import Analysis, fed_input
from rnnc.front.graph import input_edges, instant_order
from rnnc.front.spec import EmbeddingLayer, RecurrentLayer


@dataclass(frozen=True)
class Fed:
    """A layer with feedback reads ``prediction`` at t-1 in place of ``source`` at t."""

    source: str  # the input or embedding layer the prediction replaces
    prediction: str  # the layer whose previous step is fed back
    tokens: bool  # argmax of the prediction, through an embedding; else the vector itself
    ids: str  # tokens: the token input whose ids are the ground truth
    table: str  # tokens: the embedding parameter the ids go through


@dataclass(frozen=True)
class Piece:
    """One part of what a layer inside a step loop reads at step t, in feature order.

    kind: ``fed`` (ground truth or own prediction), ``static`` (no time axis: ``source``
    itself, or what ``select`` takes of it), ``step`` (``source`` at t - ``delay``),
    ``context`` (additive attention over ``source``) or ``feeding`` (the attentional
    vector of step t - 1, Luong's input feeding).
    """

    kind: str
    source: str
    width: int
    delay: int = 0
    select: str | None = None  # static: a final state, last step or pool of source


class Program:
    """The backend-neutral schedule of a checked spec."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self.spec = analysis.spec
        self.g = analysis.graph
        self._loops: list[list[str]] | None = None
        self._order: list[str] | None = None

    def order(self) -> list[str]:
        """Inputs and layers so that each comes after everything it reads at step t."""
        if self._order is None:
            self._order = instant_order(self.g)
        return self._order

    def schedule(self) -> list[str | tuple[str, ...]]:
        """The order to emit in, with each step loop as one tuple of its layers."""
        loops = self.loops()
        member = {n: i for i, group in enumerate(loops) for n in group}
        condensed = nx.DiGraph()
        unit = {n: (("loop", member[n]) if n in member else ("node", n)) for n in self.order()}
        condensed.add_nodes_from(unit.values())
        for u, v, d in self.g.edges(data=True):
            # Every link between units orders them; cycles through delays are inside loops.
            if u in unit and v in unit and unit[u] != unit[v] and d["kind"] != "output":
                condensed.add_edge(unit[u], unit[v])
        first = {n: i for i, n in enumerate(self.order())}
        rank = {
            u: min(first[n] for n in (loops[u[1]] if u[0] == "loop" else [u[1]]))
            for u in condensed.nodes
        }
        try:
            ordered = list(nx.lexicographical_topological_sort(condensed, key=rank.__getitem__))
        except nx.NetworkXUnfeasible:  # a final state read by what runs with its steps
            cycle = [
                u[1] if u[0] == "node" else "+".join(loops[u[1]])
                for u, _ in nx.find_cycle(condensed)
            ]
            raise RnncError(
                "these parts wait for each other: "
                + " -> ".join([*cycle, cycle[0]])
                + " (a final state, last step or pool is ready only after the whole sequence)"
            ) from None
        return [tuple(loops[u[1]]) if u[0] == "loop" else u[1] for u in ordered]

    def check_supported(self) -> None:
        """Refuse what no backend compiles yet: a layer that runs backward in a step loop."""
        problems = []
        for group in self.loops():
            for node in group:
                layer = self.spec.layers.get(node)
                if isinstance(layer, RecurrentLayer) and layer.direction != "forward":
                    problems.append(
                        f"layers.{node}.direction ({layer.direction} inside a step loop)"
                    )
        if problems:
            raise RnncError("rnnc does not compile these yet: " + ", ".join(problems))

    def loops(self) -> list[list[str]]:
        """Groups of layers that must run step by step together.

        Layers whose step t reads each other's earlier steps (feedback, a recurrent edge
        from what a layer feeds: a cycle through time) form one group; a layer with
        additive attention (its query is its own previous state) or input feeding (its
        attentional vector joins its next input) is a group at least.
        Separate groups run one after the other, so one can start from another's
        final state.
        """
        if self._loops is not None:
            return self._loops
        timed = nx.DiGraph()
        timed.add_nodes_from(self.spec.layers)
        for u, v, d in self.g.edges(data=True):
            if d["kind"] in ("input", "recurrent", "feedback") and u in self.spec.layers:
                timed.add_edge(u, v)
        groups: list[set[str]] = []
        for component in nx.strongly_connected_components(timed):
            if len(component) > 1 or any(timed.has_edge(n, n) for n in component):
                groups.append(set(component))
        for name, layer in self.spec.recurrent_layers().items():
            attention = layer.attention
            # The query is the previous state; or the attentional vector is fed back.
            stepped = attention is not None and (
                attention.score == "additive" or attention.input_feeding
            )
            if stepped and not any(name in group for group in groups):
                groups.append({name})
        order = self.order()
        self._loops = sorted(
            ([n for n in order if n in group] for group in groups), key=lambda g: order.index(g[0])
        )
        return self._loops

    def fed(self, name: str) -> Fed | None:
        """What a layer with feedback reads in place of its ground truth."""
        layer = self.spec.layers[name]
        if not isinstance(layer, RecurrentLayer) or layer.feedback is None:
            return None
        source, _ = fed_input(self.g, name, self.g.nodes[layer.feedback]["width"])
        assert source is not None
        data = self.g.nodes[source]
        tokens = data["kind"] == "embedding" or data.get("vocab") is not None
        ids = self.spec.layers[source].inputs[0] if data["kind"] == "embedding" else source
        return Fed(source, layer.feedback, tokens, ids, f"{source}.embedding")

    def loop_pieces(self, name: str) -> list[Piece]:
        """What a member of a step loop reads at step t, in the order it is joined."""
        layer = self.spec.layers[name]
        fed = self.fed(name)
        pieces = []
        for source, link in input_edges(self.g, name):
            data = self.g.nodes[source]
            select = link.get("select")
            if fed is not None and source == fed.source:
                pieces.append(Piece("fed", source, data["width"]))
            elif data.get("axis") is None or select is not None:
                pieces.append(Piece("static", source, data["width"], select=select))
            else:
                pieces.append(Piece("step", source, data["width"]))
        if isinstance(layer, RecurrentLayer):
            for edge in layer.recurrent:
                width = self.g.nodes[edge.from_]["width"]
                pieces.append(Piece("step", edge.from_, width, edge.delay))
            if layer.attention is not None and layer.attention.score == "additive":
                memory = layer.attention.memory
                pieces.append(Piece("context", memory, self.g.nodes[memory]["width"]))
            if layer.attention is not None and layer.attention.input_feeding:
                pieces.append(Piece("feeding", name, layer.hidden))
        return pieces


def time_axes(analysis: Analysis) -> tuple[list[str], dict[str, float], list[str]]:
    """The sequence inputs that start a time axis; the axes a layer with feedback runs
    on, with its teacher-forcing probability; the inputs whose steps after the first
    that feedback replaces (in generate mode only their first step is read)."""
    g = analysis.graph
    axes = [n for n, d in g.nodes(data=True) if d["kind"] == "input" and d.get("axis") == n]
    fed_axes: dict[str, float] = {}
    truths: list[str] = []
    for name, layer in analysis.spec.recurrent_layers().items():
        if layer.feedback is not None:
            p = 1.0 if layer.teacher_forcing is None else layer.teacher_forcing
            fed_axes[g.nodes[name]["axis"]] = p
            source, _ = fed_input(g, name, g.nodes[layer.feedback]["width"])
            if source is not None:
                spec = analysis.spec.layers.get(source)
                truth = spec.inputs[0] if isinstance(spec, EmbeddingLayer) else source
                if truth not in truths:
                    truths.append(truth)
    return axes, fed_axes, truths
