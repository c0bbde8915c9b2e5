"""Graph IR: the rolled graph of a spec and its unrolling over time (networkx).

The *rolled* graph has one node per input, layer and output. Its edges carry a
``kind`` (input, state, recurrent, init, attention, feedback, output) and a ``delay``
in steps: 0 for a value of the same step, k for one from k steps back. A recurrent
layer carries its own recurrence as a ``state`` self-loop of delay 1.

The *unrolled* graph has one node per layer x depth x direction x time step (and
one per step of every other node on a time axis), with separate time axes for
separate sequence inputs, so an encoder and a decoder each have their own steps.

``build_graph`` accepts any spec that passed the schema, even one whose references
are broken: a name that does not exist becomes a node of kind ``missing``, so checks
can report it and a drawing can show it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import networkx as nx

from rnnc.front.equations import Cell
from rnnc.front.spec import DenseLayer, RecurrentLayer, Spec, TokenInput, references


def output_node(name: str) -> str:
    """Outputs have their own namespace; their node ids cannot clash with layer names."""
    return f"outputs.{name}"


def build_graph(spec: Spec, cells: Mapping[str, Cell] | None = None) -> nx.MultiDiGraph:
    """The rolled graph of a spec (see the module docstring)."""
    g = nx.MultiDiGraph(name=spec.name)
    for name, inp in spec.inputs.items():
        tokens = isinstance(inp, TokenInput)
        g.add_node(
            name,
            kind="input",
            spec=inp,
            path=("inputs", name),
            width=(inp.embed if tokens else inp.size),  # type: ignore[union-attr]
            vocab=inp.vocab if tokens else None,  # type: ignore[union-attr]
            token_ids=tokens and inp.embed is None,  # type: ignore[union-attr]
            axis=name if inp.sequence else None,
        )
    for name, layer in spec.layers.items():
        if name in g:
            continue  # a name clash; rnnc.front.checks reports it
        kind = _layer_kind(layer)
        attrs: dict[str, Any] = {"kind": kind, "spec": layer, "path": ("layers", name)}
        if isinstance(layer, RecurrentLayer):
            attrs["width"] = layer.output_width
            attrs["cell"] = (cells or {}).get(layer.cell)
        elif isinstance(layer, DenseLayer):
            attrs["width"] = layer.dense
        else:
            attrs["width"] = layer.embedding
        g.add_node(name, **attrs)
    for name, layer in spec.layers.items():
        if g.nodes[name].get("spec") is layer:
            _add_layer_edges(g, name, layer)
    for name, out in spec.outputs.items():
        node = output_node(name)
        g.add_node(node, kind="output", spec=out, path=("outputs", name))
        _add_edge(g, out.from_, node, "output", 0, ("outputs", name, "from"))
    _infer_axes(g)
    for name, out in spec.outputs.items():
        node = output_node(name)
        source = g.nodes[out.from_]
        g.nodes[node]["width"] = None if out.attention else source.get("width")  # weights: (S,)
    return g


def _layer_kind(layer: object) -> str:
    if isinstance(layer, RecurrentLayer):
        return "recurrent"
    return "dense" if isinstance(layer, DenseLayer) else "embedding"


def _add_edge(
    g: nx.MultiDiGraph,
    source: str,
    target: str,
    kind: str,
    delay: int,
    path: tuple[Any, ...],
    **attrs: Any,
) -> None:
    if source not in g:
        g.add_node(source, kind="missing", path=path, width=None, axis=None)
    g.add_edge(
        source, target, key=f"{kind}:{len(g.edges)}", kind=kind, delay=delay, path=path, **attrs
    )


def _add_layer_edges(g: nx.MultiDiGraph, name: str, layer: Any) -> None:
    base = ("layers", name)
    entries = layer.input if isinstance(layer.input, list) else [layer.input]
    for i, (entry, (source, select)) in enumerate(
        zip(entries, references(layer.input), strict=True)
    ):
        path = (*base, "input", i) if isinstance(layer.input, list) else (*base, "input")
        if not isinstance(entry, str):  # {from: L, ...}
            path = (*path, "from")
        _add_edge(g, source, name, "input", 0, path, position=i, select=select)
    if not isinstance(layer, RecurrentLayer):
        return
    g.add_edge(name, name, key="state", kind="state", delay=1, path=(*base, "cell"))
    for i, edge in enumerate(layer.recurrent):
        _add_edge(g, edge.from_, name, "recurrent", edge.delay, (*base, "recurrent", i, "from"))
    if layer.init is not None:
        init = layer.init
        states = tuple(init.states) if init.states is not None else None
        where = (*base, "init", "from")
        _add_edge(g, init.from_, name, "init", 0, where, bridge=init.bridge, states=states)
    if layer.attention is not None:
        attention = layer.attention
        _add_edge(
            g, attention.memory, name, "attention", 0, (*base, "attention", "memory"),
            score=attention.score, input_feeding=attention.input_feeding,
        )  # fmt: skip
    if layer.feedback is not None:
        _add_edge(g, layer.feedback, name, "feedback", 1, (*base, "feedback"))


def input_edges(g: nx.MultiDiGraph, node: str) -> list[tuple[str, dict[str, Any]]]:
    """The (source, edge data) of a node's ``input`` edges, in the order written."""
    edges = [(u, d) for u, _, d in g.in_edges(node, data=True) if d["kind"] == "input"]
    return sorted(edges, key=lambda item: item[1].get("position", 0))


def instant_order(g: nx.MultiDiGraph) -> list[str]:
    """Inputs and layers so that each comes after everything it reads at the same step
    (edges without delay), ties broken by the order of the spec."""
    instant = nx.DiGraph()
    instant.add_nodes_from(n for n, d in g.nodes(data=True) if d["kind"] != "output")
    instant.add_edges_from(
        (u, v) for u, v, d in g.edges(data=True) if d["delay"] == 0 and d["kind"] != "output"
    )
    return list(nx.lexicographical_topological_sort(instant, key=list(g.nodes).index))


def edges_of_kind(g: nx.MultiDiGraph, kind: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for u, v, d in g.edges(data=True):
        if d["kind"] == kind:
            yield u, v, d


def _infer_axes(g: nx.MultiDiGraph) -> None:
    """Give every node the time axis it runs on, or None for one value per example.

    Every sequence input starts an axis of its own. Sequences that meet in a layer's
    ``input`` (concatenated step by step) share an axis, named after the first of them
    in the spec; an encoder and a decoder, linked only by ``init`` and ``attention``,
    keep separate axes.
    """
    sources: dict[str, set[str]] = {}

    def sequences_under(node: str, visiting: frozenset[str]) -> set[str]:
        if node in sources:
            return sources[node]
        data = g.nodes[node]
        found: set[str] = set()
        if data["kind"] == "input":
            found = {node} if data["axis"] else set()
        elif data["kind"] == "output":
            found = sequences_under(next(iter(g.predecessors(node))), visiting | {node})
        elif data["kind"] != "missing" and node not in visiting:
            for source, edge in input_edges(g, node):
                if edge.get("select") is None:  # a final state or a pool has no steps
                    found |= sequences_under(source, visiting | {node})
        sources[node] = found
        return found

    order = [n for n, d in g.nodes(data=True) if d["kind"] == "input"]
    parent = {n: n for n in order}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    joins = []
    for node in g.nodes:
        group = sorted(sequences_under(node, frozenset()), key=order.index)
        if g.nodes[node]["kind"] in ("recurrent", "dense"):
            separate = {find(s) for s in group}
            if len(separate) > 1:
                joins.append((node, tuple(group)))
        for other in group[1:]:
            a, b = sorted((find(group[0]), find(other)), key=order.index)
            parent[b] = a
    for node, data in g.nodes(data=True):
        found = sources[node]
        data["axis"] = find(next(iter(found))) if found else None
    g.graph["axis_joins"] = joins


# --- unrolling -------------------------------------------------------------------------


def unroll(g: nx.MultiDiGraph, steps: int | Mapping[str, int]) -> nx.MultiDiGraph:
    """Unroll a rolled graph over time.

    ``steps`` is the number of steps of every time axis, or one per axis (a sequence
    input's name). Nodes are tuples: ``(layer, depth, direction, t)`` for recurrent
    cells, ``(name, t)`` for other per-step values, ``(name,)`` for values with no
    time axis. Every node has ``kind`` and ``t`` attributes; edges are keyed by their
    ``kind``, so an init and an attention edge between the same two nodes both stay.
    """
    axes = {d["axis"] for _, d in g.nodes(data=True) if d.get("axis")}
    lengths = {a: (steps if isinstance(steps, int) else steps.get(a, 1)) for a in axes}
    u = nx.MultiDiGraph(name=g.graph.get("name"))

    def steps_of(node: str) -> range | None:
        axis = g.nodes[node].get("axis")
        return range(lengths[axis]) if axis else None

    def values_at(node: str, t: int | None) -> list[tuple[Any, ...]]:
        """The unrolled nodes that hold ``node``'s value at step t (None: final)."""
        data = g.nodes[node]
        if data["kind"] == "missing":
            return []
        span = steps_of(node)
        if data["kind"] == "recurrent":
            layer: RecurrentLayer = data["spec"]
            if span is None:
                return []
            top = layer.depth - 1
            if t is None:  # final states: each direction's last step
                return [(node, top, d, span[-1] if d == "fwd" else 0) for d in layer.directions]
            return [(node, top, d, t) for d in layer.directions]
        if span is None:
            return [(node,)]
        if t is None:
            return [(node, span[-1])]
        return [(node, t)]

    _unrolled_nodes(g, u, steps_of)  # first: every edge below lands on a node that exists

    def read(source: str, select: str | None, t: int | None) -> list[tuple[Any, ...]]:
        """What a reader at step t (None: no time axis) reads of ``source``: its value
        at t, its final states, or (last step, pooled) any of its steps."""
        span = steps_of(source)
        if select is None:
            return values_at(source, t if span is not None else None)
        if select.startswith("state") or span is None:
            return values_at(source, None)
        return [node for s in span for node in values_at(source, s)]

    def link(sources: list[tuple[Any, ...]], target: tuple[Any, ...], kind: str) -> None:
        for s in sources:
            if s in u and target in u:
                u.add_edge(s, target, key=kind, kind=kind)

    for node, data in g.nodes(data=True):
        kind, span = data["kind"], steps_of(node)
        here: list[int | None] = list(span) if span is not None else [None]
        if kind == "recurrent" and span is not None:
            _unroll_recurrent(g, node, data["spec"], span, values_at, read, link, lengths)
        elif kind in ("dense", "embedding"):
            for source, edge in input_edges(g, node):
                for t in here:
                    target = (node,) if t is None else (node, t)
                    link(read(source, edge.get("select"), t), target, "input")
        elif kind == "output":
            source = next(iter(g.predecessors(node)))
            select = data["spec"].select
            for t in here if select is None else [None]:
                target = (node,) if t is None else (node, t)
                link(read(source, select, t), target, "output")
    return u


def _unrolled_nodes(
    g: nx.MultiDiGraph, u: nx.MultiDiGraph, steps_of: Callable[[str], range | None]
) -> None:
    """The nodes of the unrolled graph (see unroll)."""
    for node, data in g.nodes(data=True):
        kind, span = data["kind"], steps_of(node)
        if kind == "missing":
            continue
        if kind == "recurrent":
            if span is None:
                continue
            layer = data["spec"]
            for k in range(layer.depth):
                for d in layer.directions:
                    for step in span:
                        u.add_node(
                            (node, k, d, step),
                            kind="cell",
                            layer=node,
                            depth=k,
                            direction=d,
                            t=step,
                        )
        elif span is None or (kind == "output" and data["spec"].select is not None):
            u.add_node((node,), kind=kind, t=None)
        else:
            for step in span:
                u.add_node((node, step), kind=kind, t=step)


def _unroll_recurrent(g, node, layer, span, values_at, read, link, lengths) -> None:  # type: ignore[no-untyped-def]
    T = len(span)
    first = {"fwd": 0, "bwd": T - 1}
    for k in range(layer.depth):
        for d in layer.directions:
            step = 1 if d == "fwd" else -1
            for t in span:
                here = (node, k, d, t)
                if 0 <= t - step < T:
                    link([(node, k, d, t - step)], here, "state")
                if k > 0:
                    link([(node, k - 1, d2, t) for d2 in layer.directions], here, "input")
    for source, edge in input_edges(g, node):
        for d in layer.directions:
            for t in span:
                link(read(source, edge.get("select"), t), (node, 0, d, t), "input")
    for u_, _, data in g.in_edges(node, data=True):
        kind = data["kind"]
        for d in layer.directions:
            for t in span:
                if kind in ("recurrent", "feedback") and t - data["delay"] >= 0:
                    link(values_at(u_, t - data["delay"]), (node, 0, d, t), kind)
                elif kind == "attention":
                    memory_span = (
                        range(lengths.get(g.nodes[u_].get("axis"), 0))
                        if g.nodes[u_].get("axis")
                        else []
                    )
                    target_depth = 0 if data.get("score") == "additive" else layer.depth - 1
                    for s in memory_span:
                        link(values_at(u_, s), (node, target_depth, d, t), "attention")
        if kind == "init":
            finals = values_at(u_, None)  # the source's top layer
            for k in range(layer.depth):
                if data.get("states"):  # depth by depth
                    finals = [(u_, k, *final[2:]) for final in values_at(u_, None)]
                for d in layer.directions:
                    link(finals, (node, k, d, first[d]), "init")
