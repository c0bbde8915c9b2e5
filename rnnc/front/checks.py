"""Checks of a spec as a graph: references, kinds, sizes, time, cycles, use.

``analyze`` parses the spec's cells, builds the rolled graph and runs every
``check_*`` function; each yields diagnostics and none stops the others, so a user
sees every problem at once. Errors make a spec invalid; warnings do not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx

from rnnc.errors import Diagnostic, a_or_an, did_you_mean, one_of
from rnnc.front import notebook
from rnnc.front.cells import builtin_cells, equation_diagnostic, parse_user_cells
from rnnc.front.equations import Cell
from rnnc.front.graph import build_graph, edges_of_kind, input_edges, output_node, unroll
from rnnc.front.spec import RecurrentLayer, Spec

UNROLL_STEPS_FOR_CHECKS = 3


@dataclass(frozen=True)
class Analysis:
    """A spec with its cells parsed, its rolled graph built and its diagnostics."""

    spec: Spec
    cells: Mapping[str, Cell]
    graph: nx.MultiDiGraph
    diagnostics: tuple[Diagnostic, ...]

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None, **_: Any
    ) -> dict[str, Any]:
        """Jupyter shows an analysis as the spec's rolled graph, problems in red."""
        return notebook.mimebundle(self, "rolled")


def analyze(spec: Spec) -> Analysis:
    """Parse the spec's cells, build its graph and collect every diagnostic."""
    user_cells, diagnostics = parse_user_cells(spec.cells, spec.source)
    cells = {**builtin_cells(), **user_cells}
    g = build_graph(spec, cells)
    for check in CHECKS:
        diagnostics.extend(check(spec, g, cells))
    if spec.source is not None:
        diagnostics = spec.source.attach(diagnostics)
        diagnostics.sort(key=lambda d: (d.line or 0, d.col or 0))
    return Analysis(spec, cells, g, tuple(diagnostics))


def check(spec: Spec) -> list[Diagnostic]:
    """Every error and warning of a spec (an empty list: nothing to say)."""
    return list(analyze(spec).diagnostics)


Found = Iterator[Diagnostic]


def _error(
    message: str,
    path: tuple[Any, ...],
    *nodes: str,
    detail: tuple[str, ...] = (),
    at_key: bool = False,
) -> Diagnostic:
    return Diagnostic(message, path, nodes=tuple(nodes), detail=detail, at_key=at_key)


def _warning(message: str, path: tuple[Any, ...], *nodes: str) -> Diagnostic:
    return Diagnostic(message, path, severity="warning", nodes=tuple(nodes))


def check_names(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    for name in spec.layers:
        if name in spec.inputs:
            yield _error(
                f"{name!r} names both an input and a layer; inputs and layers share one namespace",
                ("layers", name),
                name,
                at_key=True,
            )


def check_references(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    known = [*spec.inputs, *spec.layers]
    for source, target, data in g.edges(data=True):
        if g.nodes[source]["kind"] == "missing":
            yield _error(
                f"unknown name {source!r}{did_you_mean(source, known)}; "
                f"inputs and layers: {', '.join(known)}",
                data["path"],
                source,
                target,
            )
    for name, layer in spec.recurrent_layers().items():
        if layer.cell not in cells and layer.cell not in spec.cells:  # broken cells: reported
            builtin = ", ".join(builtin_cells())
            mine = [n for n in spec.cells if n not in builtin_cells()]
            own = f"; this spec's: {', '.join(mine)}" if mine else ""
            yield _error(
                f"unknown cell {layer.cell!r}{did_you_mean(layer.cell, cells)}; built-in cells: {builtin}{own}",
                ("layers", name, "cell"),
                name,
            )


def check_layer_inputs(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    """Inputs carry what a layer can use, on one time axis."""
    for name, layer in spec.layers.items():
        data = g.nodes.get(name, {})
        if data.get("spec") is not layer:
            continue
        for source, edge in input_edges(g, name):
            src = g.nodes[source]
            if src["kind"] == "missing":
                continue
            if data["kind"] == "embedding":
                if not src.get("token_ids"):
                    what = (
                        f"input {source!r} is already embedded (embed: {src['width']}); remove its "
                        "'embed' or feed it to the layer directly"
                        if src["kind"] == "input" and src.get("vocab")
                        else f"{source!r} is not a token input"
                    )
                    yield _error(
                        f"an embedding layer needs token ids: {what}", edge["path"], source, name
                    )
            elif src.get("token_ids"):
                yield _error(
                    f"{source!r} holds token ids; give it 'embed: SIZE' or feed it through an "
                    "embedding layer first",
                    edge["path"],
                    source,
                    name,
                )
            elif src["kind"] == "output":
                yield _error(f"{source!r} is an output, not a layer", edge["path"], source, name)
            if edge.get("select") is not None:
                yield from check_selection(g, cells, source, edge["select"], edge["path"][:-1])
        broken = any(g.nodes[s]["kind"] == "missing" for s, _ in input_edges(g, name))
        if data["kind"] == "recurrent" and data.get("axis") is None and not broken:
            yield _error(
                "a recurrent layer needs at least one sequence input to set its number of steps "
                "(all of its inputs have one value per example: 'sequence: false', a final "
                "state, a last step or a pool)",
                ("layers", name, "input"),
                name,
            )


def cell_input_width(g: nx.MultiDiGraph, name: str) -> int | None:
    """Width of the cell input ``x`` at depth 0: inputs, recurrent edges, additive context."""
    total = 0
    for source, _, data in g.in_edges(name, data=True):
        if data.get("input_feeding"):  # the attentional vector of step t-1 (Luong)
            total += g.nodes[name]["spec"].hidden
        counts = data["kind"] in ("input", "recurrent") or (
            data["kind"] == "attention" and data.get("score") == "additive"
        )
        if counts:
            width = g.nodes[source].get("width")
            if width is None:
                return None
            total += width
    return total


def check_cell_sizes(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    """Every depth of every layer fits its cell's equations; param_init names exist."""
    for name, layer in spec.recurrent_layers().items():
        cell = cells.get(layer.cell)
        if cell is None or g.nodes[name].get("spec") is not layer:
            continue
        for param in layer.param_init:
            if param not in {p.name for p in cell.params}:
                params = ", ".join(p.name for p in cell.params)
                yield _error(
                    f"cell {layer.cell!r} has no parameter {param!r}{did_you_mean(param, [p.name for p in cell.params])}; "
                    f"its parameters: {params}",
                    ("layers", name, "param_init", param),
                    name,
                    at_key=True,
                )
        width = cell_input_width(g, name)
        if width is None:
            continue
        widths = [width] + [layer.output_width] * (layer.depth - 1)
        reported = set()
        for depth, input_width in enumerate(widths):
            for problem in cell.check_sizes(input_width, layer.hidden):
                if (problem.equation, input_width) in reported:
                    continue
                reported.add((problem.equation, input_width))
                where = equation_diagnostic(("cells", layer.cell), problem, None)
                yield _error(
                    f"cell {layer.cell!r} at depth {depth} (input width {input_width}, hidden "
                    f"{layer.hidden}): {problem.message}",
                    ("layers", name, "cell"),
                    name,
                    detail=where.detail,
                )


def final_state_width(g: nx.MultiDiGraph, source: str) -> tuple[int | None, str]:
    """Width of the final ``h`` a node hands to ``init`` and how it is made up."""
    data = g.nodes[source]
    layer = data.get("spec")
    if isinstance(layer, RecurrentLayer):
        how = ""
        if layer.direction == "bidirectional":
            how = (
                f" (2 x {layer.hidden}: both directions, merge: concat)"
                if layer.merge == "concat"
                else f" (directions merged by {layer.merge})"
            )
        return layer.output_width, how
    return data.get("width"), ""


def check_init(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    for source, name, edge in edges_of_kind(g, "init"):
        src = g.nodes[source]
        layer: RecurrentLayer = g.nodes[name]["spec"]
        assert layer.init is not None
        if src["kind"] == "missing":
            continue
        if src["kind"] != "recurrent" and src.get("axis") is not None:
            yield _error(
                f"{source!r} is a sequence with no final state; 'init.from' takes a recurrent "
                "layer or a value with one vector per example (sequence: false)",
                edge["path"],
                source,
                name,
            )
            continue
        if layer.init.states is not None:
            yield from _check_handoff(g, cells, source, name, layer)
            continue
        width, how = final_state_width(g, source)
        if width is None:
            yield _error(f"{source!r} holds token ids; embed it first", edge["path"], source, name)
        elif layer.init.bridge == "none" and width != layer.hidden:
            yield _error(
                f"size mismatch: {source!r} hands over a final h of width {width}{how}, but "
                f"{name!r} has states of width {layer.hidden}; add 'bridge: dense' to map it, "
                f"or make the sizes equal{_merge_hint(g, source)}",
                ("layers", name, "init"),
                source,
                name,
            )


def _merge_hint(g: nx.MultiDiGraph, source: str) -> str:
    """How a bidirectional source could hand over half the width."""
    layer = g.nodes[source].get("spec")
    if isinstance(layer, RecurrentLayer) and layer.direction == "bidirectional":
        return f" (merge: sum on {source!r})"
    return ""


def _check_handoff(
    g: nx.MultiDiGraph, cells: Mapping[str, Cell], source: str, name: str, layer: RecurrentLayer
) -> Found:
    """``init: {states: [...]}``: depth k of the source hands each listed state to depth k."""
    assert layer.init is not None and layer.init.states is not None
    at = ("layers", name, "init")
    src = g.nodes[source].get("spec")
    if not isinstance(src, RecurrentLayer):
        what = _kind_words(g.nodes[source]["kind"])
        yield _error(
            f"'states' hands a recurrent layer's final states over depth by depth, but {source!r} "
            f"is {what}; remove 'states' to start every state from it",
            (*at, "states"),
            source,
            name,
        )
        return
    if src.depth != layer.depth:
        yield _error(
            f"'states' hands depth k of {source!r} to depth k of {name!r}, but their depths "
            f"differ ({src.depth} and {layer.depth}); give them the same depth, or remove "
            "'states' to start every depth from the top layer's final h",
            (*at, "states"),
            source,
            name,
        )
    for i, state in enumerate(layer.init.states):
        for node, spec_ in ((source, src), (name, layer)):
            cell = cells.get(spec_.cell)
            if cell is not None and state not in cell.state:
                yield _error(
                    f"{node!r} runs cell {spec_.cell!r}, which has no state {state!r}"
                    f"{did_you_mean(state, cell.state)}; its states: {', '.join(cell.state)}",
                    (*at, "states", i),
                    source,
                    name,
                )
    width, how = final_state_width(g, source)
    if layer.init.bridge == "none" and width != layer.hidden:
        yield _error(
            f"size mismatch: each depth of {source!r} hands over states of width {width}{how}, "
            f"but {name!r} has states of width {layer.hidden}; add 'bridge: dense' (one map per "
            f"depth and state), or make the sizes equal{_merge_hint(g, source)}",
            at,
            source,
            name,
        )


def check_attention(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    for memory, name, edge in edges_of_kind(g, "attention"):
        src = g.nodes[memory]
        layer: RecurrentLayer = g.nodes[name]["spec"]
        if src["kind"] == "missing":
            continue
        if src.get("axis") is None:
            yield _error(
                f"attention memory {memory!r} is not a sequence (it has one value per example); "
                "attend over a layer or input that runs over time",
                edge["path"],
                memory,
                name,
            )
        if src.get("width") is None:
            yield _error(
                f"attention memory {memory!r} holds token ids; embed it first",
                edge["path"],
                memory,
                name,
            )
        score = edge["score"]
        if layer.direction != "forward":
            why = (
                "the query is the state of the step before"
                if score == "additive"
                else "the query is the new state of a decoder that generates left to right "
                "(attend from a forward layer over a bidirectional encoder)"
            )
            yield _error(
                f"attention needs a forward layer (found direction: {layer.direction}); {why}",
                ("layers", name, "direction"),
                name,
            )
        if edge.get("input_feeding") and score == "additive":
            yield _error(
                "input_feeding is Luong's (score: dot or general): additive attention already "
                "feeds its context into the cell at every step",
                ("layers", name, "attention", "input_feeding"),
                name,
            )
        if score == "dot" and src.get("width") not in (None, layer.hidden):
            yield _error(
                f"size mismatch: dot attention compares the state of {name!r} (width {layer.hidden}) with "
                f"{memory!r} (width {src['width']}); use score: general or additive, or equal sizes",
                ("layers", name, "attention", "score"),
                memory,
                name,
            )


def fed_input(g: nx.MultiDiGraph, name: str, width: int | None) -> tuple[str | None, list[str]]:
    """The input a layer's feedback replaces, and the candidates when that is unclear.

    One sequence input: that one. Several: the one a ``width``-wide prediction fits
    (token ids from a ``width``-word vocabulary, or ``width``-wide vectors).
    """
    candidates = [
        s
        for s, edge in input_edges(g, name)
        if g.nodes[s].get("axis") is not None and edge.get("select") is None
    ]
    if len(candidates) == 1:
        return candidates[0], candidates
    fitting = [s for s in candidates if _ground_truth_width(g, s) == width]
    return (fitting[0] if len(fitting) == 1 else None), candidates


def _ground_truth_width(g: nx.MultiDiGraph, node: str) -> int | None:
    """What a prediction must be to stand in for ``node``: its vocabulary or its width."""
    data = g.nodes[node]
    if data["kind"] == "input":
        return data.get("vocab") or data.get("width")
    if data["kind"] == "embedding":
        sources = input_edges(g, node)
        return g.nodes[sources[0][0]].get("vocab") if sources else None
    return None


def check_feedback(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    for name, layer in spec.recurrent_layers().items():
        if g.nodes[name].get("spec") is not layer:
            continue
        if layer.teacher_forcing is not None and layer.feedback is None:
            yield _error(
                "teacher_forcing needs 'feedback' (the layer whose prediction is fed back when the "
                "ground truth is not)",
                ("layers", name, "teacher_forcing"),
                name,
            )
    for source, name, edge in edges_of_kind(g, "feedback"):
        src = g.nodes[source]
        if src["kind"] == "missing":
            continue
        here = g.nodes[name]
        if src["kind"] not in ("dense", "recurrent"):
            yield _error(
                f"feedback comes from a layer's prediction, but {source!r} is {_kind_words(src['kind'])}",
                edge["path"],
                source,
                name,
            )
            continue
        if src.get("axis") != here.get("axis"):
            yield _error(
                f"feedback {source!r} {_runs_on(src)} but {name!r} {_runs_on(here)}; feedback "
                "must come from the same sequence",
                edge["path"],
                source,
                name,
            )
            continue
        target, candidates = fed_input(g, name, src.get("width"))
        if target is None:
            fitting = [s for s in candidates if _ground_truth_width(g, s) == src.get("width")]
            if fitting:
                every = "both" if len(fitting) == 2 else "all"
                reason = (
                    f"{one_of(fitting, 'and')} {every} have vocabulary or size {src.get('width')}"
                )
            elif candidates:
                reason = f"none of {one_of(candidates)} has vocabulary or size {src.get('width')}"
            else:
                reason = "the layer has no sequence input"
            yield _error(
                f"cannot tell which input {source!r} stands in for: {reason}",
                edge["path"],
                source,
                name,
            )
            continue
        truth = g.nodes[target]
        expected = _ground_truth_width(g, target)
        if truth["kind"] not in ("input", "embedding"):
            yield _error(
                f"feedback replaces the ground truth of an input, but {target!r} is a {truth['kind']} layer",
                edge["path"],
                target,
                name,
            )
        elif expected != src.get("width"):
            what = (
                f"a distribution over the {expected} tokens of {target!r}"
                if truth.get("vocab") or truth["kind"] == "embedding"
                else f"a vector of the size of {target!r} ({expected})"
            )
            yield _error(
                f"feedback {source!r} must be {what}, but it has width {src.get('width')}",
                edge["path"],
                source,
                target,
                name,
            )


def check_recurrent_edges(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    for source, name, edge in edges_of_kind(g, "recurrent"):
        src = g.nodes[source]
        if src["kind"] == "missing":
            continue
        if src.get("axis") is None or src.get("axis") != g.nodes[name].get("axis"):
            yield _error(
                f"a recurrent edge joins two steps of one sequence, but {source!r} "
                f"{_runs_on(src)} and {name!r} {_runs_on(g.nodes[name])}",
                edge["path"],
                source,
                name,
            )
        elif src.get("width") is None:
            yield _error(f"{source!r} holds token ids; embed it first", edge["path"], source, name)


def check_selection(
    g: nx.MultiDiGraph,
    cells: Mapping[str, Cell],
    source: str,
    select: str | None,
    at: tuple[Any, ...],
) -> Found:
    """A final state, last step or pool of ``source`` (an input entry or an output
    written at ``at``) exists."""
    src = g.nodes[source]
    layer = src.get("spec")
    if select in ("last", "mean", "max") and src.get("axis") is None:
        key = "steps" if select == "last" else "pool"
        what = "steps: last" if select == "last" else f"pool: {select}"
        yield _error(
            f"{what} needs a sequence, but {source!r} has one value per example",
            (*at, key),
            source,
        )
    elif select is not None and select.startswith("state"):
        state = select.split()[1]
        if not isinstance(layer, RecurrentLayer):
            yield _error(
                f"'state' needs a recurrent layer, but {source!r} is {_kind_words(src['kind'])} "
                "(use steps: last for its last value)",
                (*at, "state"),
                source,
            )
        elif layer.cell in cells and state not in cells[layer.cell].state:
            states = cells[layer.cell].state
            yield _error(
                f"cell {layer.cell!r} has no state {state!r}{did_you_mean(state, states)}; "
                f"its states: {', '.join(states)}",
                (*at, "state"),
                source,
            )
    elif select == "last" and isinstance(layer, RecurrentLayer) and len(layer.directions) == 2:
        yield _warning(
            f"steps: last reads {source!r} at each example's last step, where its backward "
            "direction has read only that one token; use 'state: h' for the final state of "
            "both directions",
            (*at, "steps"),
            source,
        )


def check_outputs(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    for name, out in spec.outputs.items():
        src = g.nodes[out.from_]
        if src["kind"] == "missing":
            continue
        path = ("outputs", name)
        if src["kind"] == "input" and src.get("token_ids"):
            yield _error(
                f"{out.from_!r} holds token ids; outputs are vectors", (*path, "from"), out.from_
            )
        yield from check_selection(g, cells, out.from_, out.select, path)
        layer = src.get("spec")
        if out.attention is not None and getattr(layer, "attention", None) is None:
            yield _error(
                f"'attention: weights' needs a layer with attention, but {out.from_!r} has none",
                (*path, "attention"),
                out.from_,
            )


def _graph_name(node: Any) -> str:
    if isinstance(node, tuple):
        if len(node) == 4:
            layer, depth, direction, t = node
            return f"{layer}.{direction}.l{depth}[t={t}]"
        return f"{node[0]}[t={node[1]}]" if len(node) == 2 else str(node[0])
    return str(node)


def check_cycles(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    """No value may depend on itself: in the rolled graph, then unrolled over time."""
    instant = nx.DiGraph()
    instant.add_nodes_from(g.nodes)
    instant.add_edges_from((u, v, d) for u, v, d in g.edges(data=True) if d["delay"] == 0)
    order = {node: i for i, node in enumerate(g.nodes)}
    components = sorted(
        nx.strongly_connected_components(instant), key=lambda c: min(order[n] for n in c)
    )
    found = False
    for component in components:
        sub = instant.subgraph(component)
        if len(component) == 1 and not sub.number_of_edges():
            continue
        found = True
        start = min(component, key=order.__getitem__)
        cycle = nx.find_cycle(sub, source=start)
        names = [u for u, _ in cycle] + [cycle[0][0]]
        # Report the edge written first in the file (or first in spec order).
        first = min(cycle, key=lambda edge: _written_at(spec, instant.edges[edge]["path"]))
        kinds = {instant.edges[edge]["kind"] for edge in cycle}
        if "recurrent" in kinds:
            fix = "give the recurrent edge a delay >= 1"
        elif kinds <= {"input", "output"}:
            fix = (
                "a value cannot feed itself within a step: feed it back across time with "
                "'recurrent: [{from: ..., delay: 1}]' or 'feedback' on a recurrent layer"
            )
        else:
            fix = "a layer cannot start from or attend over itself or what it feeds"
        yield _error(
            "a cycle with no delay (each of these needs the other at the same step): "
            + " -> ".join(names)
            + f"; {fix}",
            instant.edges[first]["path"],
            *names[:-1],
        )
    if found:
        return
    unrolled = unroll(g, UNROLL_STEPS_FOR_CHECKS)
    if nx.is_directed_acyclic_graph(unrolled):
        return
    involved = _shortest_cycle(unrolled)
    layers = [n[0] for n in involved if len(n) == 4]
    name = next(
        (n for n in layers if isinstance(g.nodes[n]["spec"], RecurrentLayer)), involved[0][0]
    )
    layer = g.nodes[name].get("spec")
    path: tuple[Any, ...] = ("layers", name)
    reason = ""
    if isinstance(layer, RecurrentLayer) and layer.feedback and layer.direction != "forward":
        path = (*path, "feedback")
        reason = (
            f" a {layer.direction} layer with feedback is not causal: running backward, step t "
            "needs the input at t+1, which is its own prediction at t."
        )
    yield _error(
        "the unrolled graph has a cycle (a step needs its own result):" + reason,
        path,
        *{n[0] for n in involved},
        detail=(" -> ".join(_graph_name(n) for n in [*involved, involved[0]]),),
    )


def _written_at(spec: Spec, path: tuple[Any, ...]) -> tuple[int, int]:
    location = spec.source.locate(path) if spec.source else None
    return (location.line, location.col) if location else (0, 0)


def _shortest_cycle(graph: nx.MultiDiGraph) -> list[Any]:
    """The nodes of a shortest cycle of a graph that has one, the same one every run:
    of the shortest, the first in sorted order, started at its smallest node.

    NOTE: enumerating cycles is exponential in a deep stack (every bidirectional layer
    doubles the paths: depth 64 took minutes). Instead, a breadth-first search from
    each node on a cycle, in sorted order and cut at the shortest length found so far,
    finds the first node of the answer: the smallest node on a shortest cycle, which is
    the smallest node of every shortest cycle through it. The cycle is then walked from
    it, taking at each step the smallest successor that still closes it in that length.
    """
    by_repr = {node: repr(node) for node in graph}
    best, first, within = len(graph) + 1, None, {}
    for scc in nx.strongly_connected_components(graph):
        node = next(iter(scc))
        if len(scc) == 1 and not graph.has_edge(node, node):
            continue
        successors = {u: [n for n in graph.succ[u] if n in scc] for u in scc}
        for node in sorted(scc, key=by_repr.__getitem__):
            length = _cycle_length(successors, node, limit=best)
            if length is None:
                continue
            if length < best or (length == best and by_repr[node] < by_repr[first]):
                best, first, within = length, node, successors
    assert first is not None, "the graph has no cycle"
    predecessors: dict[Any, list[Any]] = {u: [] for u in within}
    for u, following in within.items():
        for n in following:
            predecessors[n].append(u)
    to_first = _distances(predecessors, first, limit=best - 1)
    cycle = [first]
    for remaining in range(best - 1, 0, -1):
        cycle.append(
            min(
                (n for n in within[cycle[-1]] if to_first.get(n) == remaining),
                key=by_repr.__getitem__,
            )
        )
    return cycle


def _distances(adjacency: dict[Any, list[Any]], source: Any, limit: int) -> dict[Any, int]:
    """Steps from ``source`` along ``adjacency`` to every node, up to ``limit``."""
    seen, frontier = {source: 0}, [source]
    for steps in range(1, limit + 1):
        following = []
        for u in frontier:
            for n in adjacency[u]:
                if n not in seen:
                    seen[n] = steps
                    following.append(n)
        if not following:
            break
        frontier = following
    return seen


def _cycle_length(adjacency: dict[Any, list[Any]], node: Any, limit: int) -> int | None:
    """The length of a shortest cycle through ``node`` along ``adjacency``, up to ``limit``."""
    seen, frontier = {node}, [node]
    for steps in range(1, limit + 1):
        following = []
        for u in frontier:
            for n in adjacency[u]:
                if n == node:
                    return steps
                if n not in seen:
                    seen.add(n)
                    following.append(n)
        if not following:
            return None
        frontier = following
    return None


def _kind_words(kind: str) -> str:
    """'an input', 'a dense layer', 'an embedding layer'."""
    return a_or_an(kind if kind in ("input", "output") else f"{kind} layer")


def _runs_on(data: dict[str, Any]) -> str:
    axis = data.get("axis")
    return f"runs on the steps of {axis!r}" if axis else "has one value per example (no steps)"


def check_use(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    """Outputs are reachable from the inputs; every input and layer feeds an output."""
    inputs = [n for n, d in g.nodes(data=True) if d["kind"] == "input"]
    reachable = set(inputs)
    for node in inputs:
        reachable |= nx.descendants(g, node)
    for name in spec.outputs:
        node = output_node(name)
        broken = any(g.nodes[n]["kind"] == "missing" for n in nx.ancestors(g, node))
        if node not in reachable and not broken:
            yield _error(
                f"output {name!r} cannot be reached from any input",
                ("outputs", name, "from"),
                node,
            )
    if any(d["kind"] == "missing" for _, d in g.nodes(data=True)):
        return  # what is unused follows from the unknown names reported above
    used: set[str] = set()
    for name in spec.outputs:
        used |= nx.ancestors(g, output_node(name))
    for name in spec.inputs:
        if name not in used:
            yield _warning(f"input {name!r} is not used by any output", ("inputs", name), name)
    for name in spec.layers:
        if name not in used and g.nodes[name].get("spec") is spec.layers[name]:
            yield _warning(f"layer {name!r} is not used by any output", ("layers", name), name)


def check_options(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    """Options that do nothing where they are written (warnings)."""
    for name, layer in spec.recurrent_layers().items():
        if layer.direction != "bidirectional" and "merge" in layer.model_fields_set:
            yield _warning(
                "merge combines the two directions of a bidirectional layer; this layer has one",
                ("layers", name, "merge"),
                name,
            )
        if layer.depth == 1 and layer.residual:
            yield _warning(
                "residual connects stacked layers; with depth 1 it does nothing",
                ("layers", name, "residual"),
                name,
            )
        if layer.depth == 1 and layer.dropout > 0:
            yield _warning(
                "dropout applies between stacked layers; with depth 1 it does nothing",
                ("layers", name, "dropout"),
                name,
            )


def check_axis_joins(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    """Warn where a layer joins two sequences step by step after one went through a layer.

    Joining two inputs (``input: [x, y_prev]``) is the usual way to feed two aligned
    sequences; joining an encoder's output to a decoder's is usually a mistake.
    """
    for node, sequences in g.graph.get("axis_joins", []):
        sources = [s for s, _ in input_edges(g, node)]
        if all(g.nodes[s]["kind"] == "input" for s in sources):
            continue
        yield _warning(
            f"this layer joins the steps of {one_of(sequences, 'and')} one to one, so their lengths "
            "must be equal; to pass an encoder to a decoder, use 'init' or 'attention'",
            (*g.nodes[node]["path"], "input"),
            node,
        )


def check_generation(spec: Spec, g: nx.MultiDiGraph, cells: Mapping[str, Cell]) -> Found:
    """A ``generation`` block written in the spec fits its decoder: tokens of its
    vocabulary, and a beam only for a decoder fed back tokens."""
    if "generation" not in spec.model_fields_set:
        return
    at = ("generation",)
    decoders = [(n, layer) for n, layer in spec.recurrent_layers().items() if layer.feedback]
    if not decoders:
        yield _error(
            "'generation' sets how a decoder generates, but no layer has 'feedback'",
            at,
            at_key=True,
        )
        return
    name, layer = decoders[0]
    source, _ = fed_input(g, name, g.nodes.get(layer.feedback, {}).get("width"))
    vocab = _ground_truth_width(g, source) if source is not None else None
    tokens = source is not None and (
        g.nodes[source]["kind"] == "embedding" or g.nodes[source].get("vocab") is not None
    )
    options = spec.generation
    if not tokens:
        if options.strategy != "greedy":
            yield _error(
                f"{name!r} is fed back vectors, not tokens: it decodes greedily only "
                f"(found strategy: {options.strategy})",
                (*at, "strategy"),
                name,
            )
        return
    for key in ("eos", "pad"):
        value = getattr(options, key)
        if vocab is not None and value >= vocab:
            yield _error(
                f"{key} {value} is not a token of {source!r} (its vocabulary: 0..{vocab - 1})",
                (*at, key),
                name,
            )
    for i, token in enumerate(options.suppress):
        if vocab is not None and token >= vocab:
            yield _error(
                f"{token} is not a token of {source!r} (its vocabulary: 0..{vocab - 1})",
                (*at, "suppress", i),
                name,
            )
    if options.strategy == "beam" and options.n_best > options.beam:
        yield _error(
            f"n_best ({options.n_best}) must not exceed the beam ({options.beam})",
            (*at, "n_best"),
            name,
        )


CHECKS = (
    check_names,
    check_references,
    check_layer_inputs,
    check_cell_sizes,
    check_init,
    check_attention,
    check_feedback,
    check_recurrent_edges,
    check_outputs,
    check_cycles,
    check_use,
    check_options,
    check_axis_joins,
    check_generation,
)
