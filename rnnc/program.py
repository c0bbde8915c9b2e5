"""The program a backend emits: in what order a checked spec's parts run.

Every backend walks the same :class:`Program`: inputs and layers in an order where
each comes after what it reads at the same step; layers that must run step by step
together (feedback, additive attention, a recurrent edge back from what a layer
feeds) grouped into one *step loop*; for each layer with feedback, which input the
prediction replaces. Cells come from :func:`rnnc.lower.lower_cell`. What a backend
adds is only how to write each part in its own array library.
"""

from __future__ import annotations

import hashlib
import linecache
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

from rnnc.checks import Analysis, fed_input
from rnnc.errors import RnncError
from rnnc.graph import input_edges
from rnnc.spec import DenseLayer, EmbeddingLayer, RecurrentLayer, TokenInput
from rnnc.version import __version__


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

    kind: ``fed`` (ground truth or own prediction), ``static`` (no time axis),
    ``step`` (``source`` at t - ``delay``) or ``context`` (additive attention over
    ``source``).
    """

    kind: str
    source: str
    width: int
    delay: int = 0


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
            self._order = self._instant_order()
        return self._order

    def _instant_order(self) -> list[str]:
        instant = nx.DiGraph()
        instant.add_nodes_from(n for n, d in self.g.nodes(data=True) if d["kind"] != "output")
        instant.add_edges_from(
            (u, v)
            for u, v, d in self.g.edges(data=True)
            if d["delay"] == 0 and d["kind"] != "output"
        )
        return list(nx.lexicographical_topological_sort(instant, key=list(self.g.nodes).index))

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
        ordered = nx.lexicographical_topological_sort(condensed, key=rank.__getitem__)
        return [tuple(loops[u[1]]) if u[0] == "loop" else u[1] for u in ordered]

    def emit_schedule(self, backend: str) -> None:
        """Walk the schedule and have the backend's program emit each part: its
        ``emit_loop``, ``emit_input``, ``emit_dense``, ``emit_embedding``,
        ``emit_recurrent`` and, after everything, ``emit_output`` per output."""
        self.check_supported(backend)
        emitter: Any = self
        for node in self.schedule():
            if isinstance(node, tuple):
                emitter.emit_loop(list(node))
                continue
            data = self.g.nodes[node]
            spec = data.get("spec")
            if data["kind"] == "input":
                emitter.emit_input(node)
            elif isinstance(spec, DenseLayer):
                emitter.emit_dense(node, spec)
            elif isinstance(spec, EmbeddingLayer):
                emitter.emit_embedding(node, spec)
            elif isinstance(spec, RecurrentLayer):
                emitter.emit_recurrent(node, spec)
        for name in self.spec.outputs:
            emitter.emit_output(name)

    def check_supported(self, backend: str) -> None:
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
            raise RnncError(
                f"the {backend} backend does not compile these yet: " + ", ".join(problems)
            )

    def loops(self) -> list[list[str]]:
        """Groups of layers that must run step by step together.

        Layers whose step t reads each other's earlier steps (feedback, a recurrent edge
        from what a layer feeds: a cycle through time) form one group; a layer with
        additive attention (its query is its own previous state) is a group at least.
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
            additive = layer.attention is not None and layer.attention.score == "additive"
            if additive and not any(name in group for group in groups):
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
        for source, _ in input_edges(self.g, name):
            data = self.g.nodes[source]
            if fed is not None and source == fed.source:
                pieces.append(Piece("fed", source, data["width"]))
            elif data.get("axis") is None:
                pieces.append(Piece("static", source, data["width"]))
            else:
                pieces.append(Piece("step", source, data["width"]))
        if isinstance(layer, RecurrentLayer):
            for edge in layer.recurrent:
                width = self.g.nodes[edge.from_]["width"]
                pieces.append(Piece("step", edge.from_, width, edge.delay))
            if layer.attention is not None and layer.attention.score == "additive":
                memory = layer.attention.memory
                pieces.append(Piece("context", memory, self.g.nodes[memory]["width"]))
        return pieces

    def output_state(self, name: str) -> int:
        """Index of the output state (h) among a recurrent layer's states."""
        cell = self.analysis.cells[self.spec.layers[name].cell]  # type: ignore[union-attr]
        return cell.state.index(cell.output)


# --- the CompiledModel conventions, shared by every backend -------------------------


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


def _check_inputs(analysis: Analysis, inputs: Mapping[str, np.ndarray]) -> None:
    """Every input present, with the rank, width, dtype and token range the spec says."""
    problems = []
    for name, inp in analysis.spec.inputs.items():
        if name not in inputs:
            problems.append(f"{name}: missing")
            continue
        value = inputs[name]
        steps = "(B, T" if inp.sequence else "(B"
        if isinstance(inp, TokenInput):
            if value.ndim != (2 if inp.sequence else 1):
                problems.append(f"{name}: expected shape {steps}), found {value.shape}")
            elif value.dtype.kind not in "iu":
                problems.append(f"{name}: expected integer token ids, found dtype {value.dtype}")
            elif value.size and (value.min() < 0 or value.max() >= inp.vocab):
                problems.append(f"{name}: token ids must be in 0..{inp.vocab - 1}")
        elif value.ndim != (3 if inp.sequence else 2) or value.shape[-1] != inp.size:
            problems.append(f"{name}: expected shape {steps}, {inp.size}), found {value.shape}")
        elif value.dtype.kind not in "fiu":
            problems.append(f"{name}: expected real numbers, found dtype {value.dtype}")
    unknown = [n for n in inputs if n not in analysis.spec.inputs]
    problems += [f"{n}: not an input of the spec" for n in unknown]
    if problems:
        raise RnncError("inputs do not fit the spec: " + "; ".join(problems))


def dropout_generator(mode: str, seed: int | None) -> np.random.Generator | None:
    """Dropout happens in train mode when a seed is given (off by default and in verify)."""
    return np.random.default_rng(seed) if mode == "train" and seed is not None else None


def prepare_inputs(
    analysis: Analysis,
    inputs: Mapping[str, Any],
    lengths: Any,
    mode: str,
    steps: int | None,
    tf_mask: Any,
    seed: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The CompiledModel conventions, turned into what a generated forward takes.

    ``lengths``: (B,) for a spec with one time axis, else a dict by sequence input
    (default: full length). ``mode="train"``: layers with feedback read the ground truth
    where ``tf_mask`` (B, T) is true; without a mask one is drawn with each layer's
    teacher_forcing probability from ``numpy.random.default_rng(seed)``.
    ``mode="generate"``: a layer with feedback reads the first ground-truth step, then
    its own predictions, for ``steps`` steps.
    """
    if mode not in ("train", "generate"):
        raise RnncError(f"mode must be 'train' or 'generate', found {mode!r}")
    g = analysis.graph
    axes, fed_axes, truths = time_axes(analysis)
    inputs = {name: np.asarray(value) for name, value in inputs.items()}
    _check_inputs(analysis, inputs)
    if mode == "generate":
        if not fed_axes:
            raise RnncError("mode='generate' needs a layer with feedback")
        if steps is None or steps < 1:
            raise RnncError("mode='generate' needs steps >= 1")
        for name in analysis.spec.inputs:
            if g.nodes[name].get("axis") not in fed_axes:
                continue
            value = np.asarray(inputs[name])
            if name in truths:  # only the first step is read; the rest are predictions
                pad = np.zeros((value.shape[0], steps - 1, *value.shape[2:]), dtype=value.dtype)
                inputs[name] = np.concatenate([value[:, :1], pad], axis=1)
            elif value.shape[1] != steps:
                raise RnncError(
                    f"mode='generate' with steps={steps} needs input {name!r} with {steps} steps, "
                    f"found {value.shape[1]}"
                )
    out: dict[str, np.ndarray] = {}
    for axis in axes:
        value = np.asarray(inputs[axis])
        batch, total = value.shape[0], value.shape[1]
        if lengths is None or (mode == "generate" and axis in fed_axes):
            length = np.full(batch, total)
        elif isinstance(lengths, Mapping):
            length = np.asarray(lengths.get(axis, np.full(batch, total)))
        else:
            length = np.asarray(lengths)
        length = length.astype(np.int64)
        if length.shape != (batch,) or length.min(initial=1) < 1 or length.max(initial=1) > total:
            raise RnncError(f"lengths[{axis!r}] must be (B,) = ({batch},) integers in 1..{total}")
        out[axis] = length
    masks: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed)
    for axis, p in fed_axes.items():
        batch, total = np.asarray(inputs[axis]).shape[:2]
        if mode == "generate":
            mask = np.zeros((batch, total), dtype=bool)
            mask[:, 0] = True
        elif tf_mask is not None:
            given = tf_mask.get(axis) if isinstance(tf_mask, Mapping) else tf_mask
            mask = np.asarray(given, dtype=bool)
            if mask.shape != (batch, total):
                raise RnncError(f"tf_mask for {axis!r} must be (B, T) = ({batch}, {total})")
        else:
            mask = rng.random((batch, total)) < p
        masks[axis] = mask
    return inputs, out, masks


@dataclass(frozen=True)
class RunOptions:
    """The keyword options of ``run``, ``vjp`` and ``value_and_grad`` (docs/backends.md)."""

    lengths: Any = None
    mode: str = "train"
    steps: int | None = None
    tf_mask: Any = None
    seed: int = 0
    dropout_seed: int | None = None

    def prepare(
        self, analysis: Analysis, inputs: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Inputs, lengths by time axis and teacher-forcing masks (see prepare_inputs)."""
        return prepare_inputs(
            analysis, inputs, self.lengths, self.mode, self.steps, self.tf_mask, self.seed
        )


Loss = Callable[[dict[str, np.ndarray]], tuple[float, Mapping[str, np.ndarray]]]


class CompiledModelBase:
    """The CompiledModel interface every backend shares, written once: a backend sets
    ``analysis``, ``source`` and ``_shapes`` and implements ``_outputs``,
    ``_value_and_grad``, ``load_params`` and ``params``."""

    analysis: Analysis
    source: str
    _shapes: dict[str, tuple[int, ...]]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def run(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        lengths: Any = None,
        mode: str = "train",
        steps: int | None = None,
        tf_mask: Any = None,
        seed: int = 0,
        dropout_seed: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Outputs of the model, batch-first (see docs/backends.md for the options)."""
        options = RunOptions(lengths, mode, steps, tf_mask, seed, dropout_seed)
        return self._outputs(inputs, options)

    def vjp(
        self,
        inputs: Mapping[str, np.ndarray],
        cotangents: Mapping[str, np.ndarray],
        *,
        lengths: Any = None,
        mode: str = "train",
        steps: int | None = None,
        tf_mask: Any = None,
        seed: int = 0,
        dropout_seed: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Gradients of sum(output * cotangent) for every parameter and real input."""
        options = RunOptions(lengths, mode, steps, tf_mask, seed, dropout_seed)
        return self._value_and_grad(inputs, lambda _: (0.0, cotangents), options)[1]

    def value_and_grad(
        self,
        inputs: Mapping[str, np.ndarray],
        loss: Loss,
        *,
        lengths: Any = None,
        mode: str = "train",
        steps: int | None = None,
        tf_mask: Any = None,
        seed: int = 0,
        dropout_seed: int | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """``loss(outputs) -> (value, cotangents)`` on NumPy outputs; returns the value
        and the gradients of every parameter and real input, from one forward and one
        backward pass (what rnnc train uses)."""
        options = RunOptions(lengths, mode, steps, tf_mask, seed, dropout_seed)
        return self._value_and_grad(inputs, loss, options)

    def _outputs(self, inputs: Mapping[str, Any], options: RunOptions) -> dict[str, np.ndarray]:
        raise NotImplementedError  # pragma: no cover - every backend has its own

    def _value_and_grad(
        self, inputs: Mapping[str, Any], loss: Loss, options: RunOptions
    ) -> tuple[float, dict[str, np.ndarray]]:
        raise NotImplementedError  # pragma: no cover - every backend has its own


def spec_hash(analysis: Analysis) -> str:
    """A short hash of the spec, for the header of generated modules."""
    source = analysis.spec.model_dump_json(by_alias=True)
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def module_header(analysis: Analysis, library: str, backend: str) -> str:
    """The docstring a generated module starts with: rnnc's version and the spec's hash."""
    return (
        f'"""{library} model {analysis.spec.name!r}, generated by rnnc {__version__} '
        f"(spec sha256 {spec_hash(analysis)}).\n\nDo not edit: regenerate with "
        f'`rnnc compile SPEC --backend {backend}`.\n"""'
    )


def load_module(source: str, analysis: Analysis, backend: str) -> dict[str, Any]:
    """Run generated source as a module and return its namespace; the source is
    registered with linecache so tracebacks show the generated lines."""
    filename = f"<rnnc-{backend}:{analysis.spec.name}:{spec_hash(analysis)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": f"rnnc_generated_{analysis.spec.name}"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace
