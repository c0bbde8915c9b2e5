"""Lowering a whole checked network to ops, and deriving its reverse.

:mod:`rnnc.ir.lower` turns one cell into the ops of one time step. This module does the
same for everything around the cells: inputs, embeddings, dense layers, bridges, the
merge of two directions, residuals, dropout masks, attention, feedback and recurrent
edges become ops of the same kind (:class:`rnnc.ir.lower.Op`, kinds in
:class:`rnnc.ir.lower.OpKind`), and :func:`reverse_network` derives the backward of all
of them with the same reverse rules (``rnnc.ir.lower.REVERSE_RULES``). A backend renders
the forward ops and the reverse ops; it writes no gradient by hand.

Values outside step loops are time-major arrays ``(T, B, width)``, or ``(B, width)``
for what has no time axis. A recurrent layer outside a step loop is one ``scan`` op
per depth and direction (the generated cell scan; its reverse is the generated
reverse scan, as JAX's scan is transposed into a scan). Layers that must run step by
step together (feedback, additive attention, a recurrent edge back from what a layer
feeds) become one ``loop`` op whose body is ops on ``(B, width)`` values at step t;
its reverse is the reverse of the body run backward over time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rnnc.front.checks import Analysis
from rnnc.front.graph import input_edges
from rnnc.front.spec import DenseLayer, EmbeddingLayer, RecurrentLayer, TokenInput, bridge_params
from rnnc.ir.lower import NO_GRADIENT, REVERSE_RULES, Op, OpKind, _Reverse
from rnnc.ir.program import Program

# Kinds of value: arrays with a time axis ("seq"), rows per example ("batch"),
# parameter vectors and matrices, and what no gradient reaches.
DIFFERENTIABLE = {"seq", "batch", "vector", "matrix"}


@dataclass(frozen=True)
class Scan:
    """A recurrent layer's depth and direction run as one generated scan."""

    layer: str
    depth: int
    direction: str  # fwd | bwd
    input_size: int

    @property
    def prefix(self) -> str:
        """Where its parameters are named: ``encoder.fwd.l0.``."""
        return f"{self.layer}.{self.direction}.l{self.depth}."


@dataclass(frozen=True)
class Carry:
    """A value a step loop carries from one step to the next."""

    name: str  # the body's CARRY leaf reads it
    init: str  # the outer value it starts from
    next: str  # the body value it becomes


@dataclass(frozen=True)
class Loop:
    """The body of a step loop over ``axis``: ``ops`` at step t, on (B, width) values.

    The loop's value is a tuple: one (T, B, width) array per write (``writes``: each
    member's body value at t, then any attention weights an output asks for), then the
    final value of every carry, then the tape.
    """

    axis: str
    mask: str  # the outer (T, B, 1) step mask
    ops: tuple[Op, ...]
    kinds: dict[str, str]
    carries: tuple[Carry, ...]
    writes: tuple[tuple[str, str], ...]  # (member or LAYER:weights, body value written at t)
    extents: dict[str, str]  # write -> the outer (S, ...) array whose length is its width


@dataclass(frozen=True)
class StepContract:
    """The step loop with feedback as functions a decoding strategy drives (rnnc.runtime.decoding):
    ``init`` runs the ops before the loop, ``step`` one step of ``body`` with the fed
    value given (FEED: token ids, or the vector itself), ``finish`` the ops after it."""

    loop: str  # the LOOP op whose steps these are
    body: Loop
    input: str  # the input whose first step starts the feedback
    prediction: str  # the member whose output is fed back
    tokens: bool  # fed back as the argmax's ids through an embedding; else the vector


@dataclass(frozen=True)
class Network:
    """The forward ops of a whole network; ``outputs`` names each output's value."""

    ops: tuple[Op, ...]
    kinds: dict[str, str]
    outputs: dict[str, str]
    inputs: dict[str, str]  # real input -> its INPUT leaf
    params: dict[str, str]  # parameter -> its PARAM leaf
    step: StepContract | None = None  # the first step loop with feedback, if any


class _Builder:
    """Emits ops into a list, with the kind of every value."""

    def __init__(self, prefix: str = "", outer: dict[str, str] | None = None):
        self.ops: list[Op] = []
        self.kinds: dict[str, str] = {}
        self.outer = outer if outer is not None else {}  # kinds of values outside a loop
        self.prefix = prefix
        self.count = 0

    def named(self, var: str, name: str) -> str:
        """Give an unnamed value that nothing reads yet a name (else keep its own)."""
        if not var.startswith(f"{self.prefix}$") or name in self.kinds:
            return var
        if any(var in op.args for op in self.ops):
            return var
        for i in range(len(self.ops) - 1, -1, -1):
            op = self.ops[i]
            if op.out == var:
                self.ops[i] = Op(name, op.kind, op.args, op.attr)
                self.kinds[name] = self.kinds.pop(var)
                return name
        return var

    def kind(self, var: str) -> str:
        return self.kinds[var] if var in self.kinds else self.outer[var]

    def emit(
        self, kind: OpKind, args: tuple[str, ...], attr: Any, value: str, out: str = ""
    ) -> str:
        if not out:
            self.count += 1
            out = f"{self.prefix}${self.count}"
        elif out in self.kinds or out in self.outer:  # a name given twice: keep SSA
            self.count += 1
            out = f"{out}${self.count}"
        self.ops.append(Op(out, kind, args, attr))
        self.kinds[out] = value
        return out

    def like(self, kind: OpKind, args: tuple[str, ...], attr: Any = None, out: str = "") -> str:
        """An op whose value is of the kind of its widest argument."""
        order = ("scalar", "vector", "batch", "seq")
        value = max((self.kind(a) for a in args if self.kind(a) in order), key=order.index)
        return self.emit(kind, args, attr, value, out)


class _Lowering:
    """Lowers a checked spec, node by node in the program's schedule."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self.spec = analysis.spec
        self.g = analysis.graph
        self.program = Program(analysis)
        self.b = _Builder()
        self.leaves: dict[tuple[Any, ...], str] = {}
        self.inputs: dict[str, str] = {}
        self.params: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.finals: dict[tuple[str, int, int], str] = {}  # (layer, depth, state) -> final
        self.ends: dict[str, Any] = {}  # layer -> how its finals are had (see final)
        self.keys_of: dict[str, str] = {}  # layer -> its attention keys (in a step loop)
        self.weights: dict[str, str] = {}  # layer -> its attention weights (T, B, S)
        self.wanted_weights = {o.from_ for o in self.spec.outputs.values() if o.attention}
        self.value: dict[str, str] = {}  # input or layer -> the value it gives
        self.step: StepContract | None = None

    # --- leaves -------------------------------------------------------------------

    def param(self, name: str, vector: bool = False) -> str:
        """A parameter: a matrix (a weight, a table), or a vector (a bias, attention's v)."""
        if name not in self.params:
            kind = "vector" if vector else "matrix"
            self.params[name] = self.b.emit(OpKind.PARAM, (), name, kind, out=name)
        return self.params[name]

    def const(self, value: float) -> str:
        key = ("const", value)
        if key not in self.leaves:
            self.leaves[key] = self.b.emit(OpKind.CONST, (), value, "scalar")
        return self.leaves[key]

    def mask(self, axis: str) -> str:
        return f"mask:{axis}"

    # --- nodes --------------------------------------------------------------------

    def lower(self) -> Network:
        self.program.check_supported()
        for node in self.program.schedule():
            if isinstance(node, tuple):
                self.loop(list(node))
                continue
            data = self.g.nodes[node]
            spec = data.get("spec")
            if data["kind"] == "input":
                self.input(node)
            elif isinstance(spec, DenseLayer):
                self.value[node] = self.dense(node, spec, self.joined(node))
            elif isinstance(spec, EmbeddingLayer):
                ids = f"{spec.input}:ids"
                kind = self.b.kinds[ids]
                value = "seq" if kind == "int_seq" else "batch"
                table = self.param(f"{node}.embedding")
                self.value[node] = self.b.emit(OpKind.LOOKUP, (table, ids), None, value, out=node)
            elif isinstance(spec, RecurrentLayer):
                self.recurrent(node, spec)
        for name in self.spec.outputs:
            self.output(name)
        return Network(
            tuple(self.b.ops), self.b.kinds, self.outputs, self.inputs, self.params, self.step
        )

    def input(self, name: str) -> None:
        data = self.g.nodes[name]
        inp = data["spec"]
        sequence = data["axis"] is not None
        b = self.b
        if isinstance(inp, TokenInput):
            if sequence:
                raw = b.emit(OpKind.IDS, (), name, "int", out=f"{name}:given")
                ids = b.emit(OpKind.TRANSPOSE, (raw,), None, "int_seq", out=f"{name}:ids")
            else:
                ids = b.emit(OpKind.IDS, (), name, "int", out=f"{name}:ids")
            self.value[name] = ids
            if inp.embed is not None:
                table = self.param(f"{name}.embedding")
                value = "seq" if sequence else "batch"
                self.value[name] = b.emit(OpKind.LOOKUP, (table, ids), None, value, out=name)
        else:
            if sequence:
                raw = b.emit(OpKind.INPUT, (), name, "batch", out=f"{name}:given")
                self.value[name] = b.emit(OpKind.TRANSPOSE, (raw,), None, "seq", out=name)
            else:
                raw = self.value[name] = b.emit(OpKind.INPUT, (), name, "batch", out=name)
            self.inputs[name] = raw
        if sequence and data["axis"] == name:
            source = f"{name}:ids" if isinstance(inp, TokenInput) else name
            b.emit(OpKind.STEP_MASK, (source,), name, "mask", out=self.mask(name))

    def joined(self, name: str) -> str:
        """A node's inputs side by side (then its recurrent edges, shifted in time)."""
        axis = self.g.nodes[name]["axis"]
        edges = [(s, e.get("select"), 0) for s, e in input_edges(self.g, name)]
        spec = self.g.nodes[name]["spec"]
        if isinstance(spec, RecurrentLayer):
            edges += [(e.from_, None, e.delay) for e in spec.recurrent]
        parts, widths = [], []
        for source, select, delay in edges:
            value = self.read(source, select)
            steps = select is None and self.g.nodes[source].get("axis") is not None
            if axis is not None and not steps:
                value = self.b.emit(
                    OpKind.BROADCAST_T, (value, self.mask(axis)), None, "seq", out=f"{source}:steps"
                )
            if delay:
                value = self.b.emit(OpKind.SHIFT, (value,), delay, "seq")
            parts.append(value)
            widths.append(self.g.nodes[source]["width"])
        if len(parts) == 1:
            return parts[0]
        return self.b.like(OpKind.CONCAT, tuple(parts), tuple(widths), out=f"{name}:in")

    def read(self, source: str, select: str | None) -> str:
        """What a reader takes of ``source``: its value, or (B, width) per example: a
        final state, the last valid step, or the valid steps pooled."""
        if select is None:
            return self.value[source]
        key = ("read", source, select)
        if key in self.leaves:
            return self.leaves[key]
        b = self.b
        if select.startswith("state"):
            layer = self.spec.layers[source]
            assert isinstance(layer, RecurrentLayer)
            state = self.analysis.cells[layer.cell].state.index(select.split()[1])
            value = self.final(source, layer.depth - 1, state)
        else:
            axis = self.g.nodes[source]["axis"]
            steps, mask = self.value[source], self.mask(axis)
            out = f"{source}:{select}"
            if select == "last":
                value = b.emit(OpKind.LAST, (steps,), axis, "batch", out=out)
            elif select == "mean":
                weights = self.leaves.get(("mean", axis))
                if weights is None:  # one per time axis, whatever is pooled over it
                    weights = b.emit(OpKind.MEAN_WEIGHTS, (mask,), None, "mask", out=f"mean:{axis}")
                    self.leaves["mean", axis] = weights
                weighted = b.like(OpKind.MUL, (steps, weights), out=f"{source}:weighted")
                value = b.emit(OpKind.SUM0, (weighted,), None, "batch", out=out)
            else:
                filled = b.emit(OpKind.FILL, (steps, mask), -1e30, "seq", out=f"{source}:filled")
                value = b.emit(OpKind.MAX0, (filled,), None, "batch", out=out)
        self.leaves[key] = value
        return value

    def final(self, name: str, depth: int, state: int) -> str:
        """A recurrent layer's final state at a depth (directions merged): made where it
        is first read, from the scans or the step loop that ran the layer."""
        key = (name, depth, state)
        if key not in self.finals:
            layer = self.spec.layers[name]
            assert isinstance(layer, RecurrentLayer)
            s = self.analysis.cells[layer.cell].state[state]
            top = depth == layer.depth - 1
            out = f"{name}:final_{s}" if top else f"{name}.l{depth}:final_{s}"
            how, held = self.ends[name]
            if how == "loop":  # the loop's tuple holds each carry's final value
                loop, index = held
                j = index[f"{name}.l{depth}.{s}"]
                self.finals[key] = self.b.emit(OpKind.ITEM, (loop,), (j,), "batch", out=out)
            else:
                finals = [
                    self.b.emit(OpKind.ITEM, (scan,), (1, state), "batch", out=f"{run}:{s}")
                    for scan, run in held[depth]
                ]
                self.finals[key] = self.merge(layer, finals, out=out)
        return self.finals[key]

    def affine(self, x: str, W: str, bias: str, out: str = "") -> str:
        """x @ W.T + b."""
        product = self.b.like(
            OpKind.LINEAR, (x, self.param(W)), out=f"{out}:product" if out else ""
        )
        return self.b.like(OpKind.ADD, (product, self.param(bias, vector=True)), out=out)

    def activation(self, function: str, x: str, b: _Builder | None = None, out: str = "") -> str:
        b = b or self.b
        if function == "identity":
            return x
        kind = {"softmax": OpKind.SOFTMAX, "log_softmax": OpKind.LOG_SOFTMAX}.get(function)
        if kind is not None:
            return b.like(kind, (x,), out=out)
        return b.like(OpKind.CALL, (x,), function, out=out)

    def dense(self, name: str, layer: DenseLayer, joined: str) -> str:
        pre = self.affine(joined, f"{name}.W", f"{name}.b", out=f"{name}:pre")
        return self.activation(layer.activation, pre, out=name)

    def merge(self, layer: RecurrentLayer, parts: list[str], out: str = "") -> str:
        """A layer's two directions combined (one part: itself)."""
        b = self.b
        if len(parts) == 1:
            return b.named(parts[0], out) if out else parts[0]
        if layer.merge == "concat":
            return b.like(OpKind.CONCAT, tuple(parts), (layer.hidden, layer.hidden), out=out)
        if layer.merge == "mul":
            return b.like(OpKind.MUL, tuple(parts), out=out)
        total = b.like(OpKind.ADD, tuple(parts), out="" if layer.merge == "mean" else out)
        if layer.merge == "mean":
            return b.like(OpKind.MUL, (self.const(0.5), total), out=out)
        return total

    def starts(self, name: str, layer: RecurrentLayer, like: str) -> list[list[str]]:
        """The initial states of each depth (every direction alike): zeros; or the init
        source's final h (maybe through a dense bridge); or, with ``init.states``, depth
        k's listed states from the source's depth k (each through a bridge of its own)."""
        states = self.analysis.cells[layer.cell].state
        zeros = ""
        if layer.init is None or set(states) - set(layer.init.states or states):
            zeros = self.b.emit(OpKind.ZEROS, (like,), layer.hidden, "zeros", out=f"{name}:zeros")
        if layer.init is None:
            return [[zeros] * len(states)] * layer.depth
        source, dense = layer.init.from_, layer.init.bridge == "dense"
        if layer.init.states is None:
            src = self.spec.layers.get(source)
            if isinstance(src, RecurrentLayer):
                cell = self.analysis.cells[src.cell]
                value = self.final(source, src.depth - 1, cell.state.index(cell.output))
            else:
                value = self.value[source]
            if dense:
                value = self.bridge(name, value, *bridge_params(name), out=f"{name}:h0")
            return [[value] * len(states)] * layer.depth
        src = self.spec.layers[source]
        assert isinstance(src, RecurrentLayer)
        given = self.analysis.cells[src.cell].state
        starts = []
        for k in range(layer.depth):
            row = []
            for s in states:
                if s not in layer.init.states:
                    row.append(zeros)
                    continue
                value = self.final(source, k, given.index(s))
                if dense:
                    value = self.bridge(
                        name, value, *bridge_params(name, k, s), f"{name}.l{k}:{s}0"
                    )
                row.append(value)
            starts.append(row)
        return starts

    def bridge(self, name: str, value: str, W: str, bias: str, out: str) -> str:
        """A dense bridge: tanh(W value + b)."""
        return self.activation("tanh", self.affine(value, W, bias, out=f"{out}_pre"), out=out)

    def recurrent(self, name: str, layer: RecurrentLayer) -> None:
        b = self.b
        axis = self.g.nodes[name]["axis"]
        mask = self.mask(axis)
        cell = self.analysis.cells[layer.cell]
        x = b.named(self.joined(name), f"{name}.l0:in")
        width = sum(self.g.nodes[s]["width"] for s, _ in input_edges(self.g, name))
        width += sum(self.g.nodes[e.from_]["width"] for e in layer.recurrent)
        starts = self.starts(name, layer, mask)
        top = layer.depth - 1
        luong = layer.attention is not None
        held: list[list[tuple[str, str]]] = []  # per depth: (scan, run) per direction
        for k in range(layer.depth):
            ys = []
            held.append([])
            for d in layer.directions:
                run = f"{name}.{d}.l{k}"
                scan = Scan(name, k, d, width if k == 0 else layer.output_width)
                P = b.emit(OpKind.PACK, (), scan, "packed", out=f"{run}:P")
                s = b.emit(OpKind.SCAN, (x, mask, P, *starts[k]), scan, "tuple", out=f"{run}:scan")
                ys.append(b.emit(OpKind.ITEM, (s,), (0,), "seq", out=run))
                b.emit(OpKind.ITEM, (s,), (2,), "tape", out=f"{run}:tape")
                held[k].append((s, run))
            merged = self.merge(layer, ys)
            if k > 0 and layer.residual:
                merged = b.like(OpKind.ADD, (merged, x))
            target = f"{name}.l{k + 1}:in" if k < top else (f"{name}:h" if luong else name)
            if k < top and layer.dropout > 0:
                drop = b.emit(
                    OpKind.DROPMASK, (mask,), (layer.dropout, layer.output_width), "mask",
                    out=f"{name}.l{k + 1}:drop",
                )  # fmt: skip
                x = b.like(OpKind.MUL, (merged, drop), out=target)
            else:
                x = b.named(merged, target)
        self.ends[name] = ("scans", held)
        for i in range(len(cell.state)):
            self.final(name, top, i)
        self.value[name] = self.luong(name, layer, x, name) if luong else x

    def keys(self, name: str, layer: RecurrentLayer) -> str:
        assert layer.attention is not None
        memory = self.value[layer.attention.memory]
        key = {"additive": "W_k", "general": "W_a"}.get(layer.attention.score)
        if key is None:
            return memory
        return self.b.like(
            OpKind.LINEAR, (memory, self.param(f"{name}.attention.{key}")), out=f"{name}:keys"
        )

    def attend(
        self, name: str, scores: str, memory: str, b: _Builder, rows: str, weighs: dict[str, str]
    ) -> str:
        """Softmax of scores over the memory's valid steps (kept in ``weighs``); the
        context it weighs."""
        valid = self.valid(memory)
        at = "@t" if rows == "b" else ""
        filled = b.emit(
            OpKind.FILL, (scores, valid), -1e30, b.kind(scores), out=f"{name}:scores_masked{at}"
        )
        weights = b.like(OpKind.SOFTMAX, (filled,), out=f"{name}:weights{at}")
        weighs[name] = weights
        spec = f"{rows}s,sbm->{rows}m"
        return b.like(OpKind.EINSUM, (weights, self.value[memory]), spec, out=f"{name}:context{at}")

    def valid(self, memory: str) -> str:
        axis = self.g.nodes[memory]["axis"]
        key = ("valid", axis)
        if key not in self.leaves:
            self.leaves[key] = self.b.emit(
                OpKind.VALID, (self.mask(axis),), None, "mask", out=f"valid:{axis}"
            )
        return self.leaves[key]

    def luong(
        self,
        name: str,
        layer: RecurrentLayer,
        h: str,
        out: str,
        b: _Builder | None = None,
        weighs: dict[str, str] | None = None,
    ) -> str:
        """Luong attention on the new h: tanh(W_c [context, h] + b_c)."""
        assert layer.attention is not None
        b = b or self.b
        weighs = self.weights if weighs is None else weighs
        memory = layer.attention.memory
        keys = self.keys_of[name] if b is not self.b else self.keys(name, layer)
        rows = "b" if b is not self.b else "tb"
        at = "@t" if rows == "b" else ""
        scores = b.like(OpKind.EINSUM, (h, keys), f"{rows}h,sbh->{rows}s", out=f"{name}:scores{at}")
        context = self.attend(name, scores, memory, b, rows, weighs)
        M = self.g.nodes[memory]["width"]
        cat = b.like(
            OpKind.CONCAT, (context, h), (M, layer.hidden), out=f"{name}:attentional_in{at}"
        )
        W_c = self.param(f"{name}.attention.W_c")
        b_c = self.param(f"{name}.attention.b_c", vector=True)
        product = b.like(OpKind.LINEAR, (cat, W_c), out=f"{name}:attentional_product{at}")
        pre = b.like(OpKind.ADD, (product, b_c), out=f"{name}:attentional_pre{at}")
        return b.like(OpKind.CALL, (pre,), "tanh", out=out)

    def output(self, name: str) -> None:
        b = self.b
        out = self.spec.outputs[name]
        source = out.from_
        axis = self.g.nodes[source].get("axis")
        steps = self.weights[source] if out.attention else self.read(source, out.select)
        if out.select is not None or axis is None:
            value = steps
        else:  # (B, T, ...) with zeros past each example's length
            pair = (steps, self.mask(axis))
            masked = b.like(OpKind.MUL, pair, ("output", source), out=f"{source}:masked")
            value = b.emit(OpKind.TRANSPOSE, (masked,), None, "seq", out=f"output:{name}")
        self.outputs[name] = b.emit(
            OpKind.OUTPUT, (value,), name, b.kinds[value], out=f"out:{name}"
        )

    # --- step loops ---------------------------------------------------------------

    def loop(self, members: list[str]) -> None:
        """Members that run step by step together: what they read from outside is made
        before the loop (initial states, packed parameters, dropout masks, attention
        keys); their steps are the body of one loop op."""
        axis = self.g.nodes[members[0]]["axis"]
        setups = {
            name: self.loop_setup(name, layer)
            for name in members
            if isinstance(layer := self.spec.layers[name], RecurrentLayer)
        }
        if any(self.program.fed(n) is not None for n in members):
            truth = f"truth:{axis}"
            if truth not in self.b.kinds:
                self.b.emit(OpKind.TRUTH, (self.mask(axis),), axis, "mask", out=truth)
        body = _Body(self, axis, members, setups)
        for name in members:
            body.member(name)
        loop = body.loop()
        outer = self.b
        args = tuple(dict.fromkeys(a for op in loop.ops for a in op.args if a not in body.b.kinds))
        inits = tuple(c.init for c in loop.carries)
        s = outer.emit(OpKind.LOOP, (*args, *inits), loop, "tuple", out=f"loop:{axis}:{members[0]}")
        fed = next((f for n in members if (f := self.program.fed(n)) is not None), None)
        if fed is not None and self.step is None:
            stepped = _Body(self, axis, members, setups, feed=True)
            for name in members:
                stepped.member(name)
            source = fed.ids if fed.tokens else fed.source
            self.step = StepContract(s, stepped.loop(), source, fed.prediction, fed.tokens)
        for j, (write, _) in enumerate(loop.writes):
            item = outer.emit(OpKind.ITEM, (s,), (j,), "seq", out=write)
            if write in members:
                self.value[write] = item
            else:  # LAYER:weights
                self.weights[write.split(":")[0]] = item
        carried = {c.name: len(loop.writes) + i for i, c in enumerate(loop.carries)}
        outer.emit(OpKind.ITEM, (s,), (len(carried) + len(loop.writes),), "tape", out=f"{s}:tape")
        for name, layer in ((n, self.spec.layers[n]) for n in setups):
            self.ends[name] = ("loop", (s, carried))
            top = layer.depth - 1  # type: ignore[union-attr]
            for i in range(len(self.analysis.cells[layer.cell].state)):  # type: ignore[union-attr]
                self.final(name, top, i)

    def loop_setup(self, name: str, layer: RecurrentLayer) -> dict[str, Any]:
        """Before the loop: initial states, packed parameters, dropout masks, keys."""
        b = self.b
        mask = self.mask(self.g.nodes[name]["axis"])
        width = sum(p.width for p in self.program.loop_pieces(name))
        setup: dict[str, Any] = {"starts": self.starts(name, layer, mask), "P": [], "drop": {}}
        if layer.attention is not None and layer.attention.input_feeding:
            setup["feeding"] = b.emit(
                OpKind.ZEROS, (mask,), layer.hidden, "zeros", out=f"{name}:attentional_zeros"
            )
        for k in range(layer.depth):
            scan = Scan(name, k, "fwd", width if k == 0 else layer.output_width)
            setup["P"].append(b.emit(OpKind.PACK, (), scan, "packed", out=f"{name}.fwd.l{k}:P"))
            if k > 0 and layer.dropout > 0:
                setup["drop"][k] = b.emit(
                    OpKind.DROPMASK, (mask,), (layer.dropout, layer.output_width), "mask",
                    out=f"{name}.l{k}:drop",
                )  # fmt: skip
        if layer.attention is not None:
            self.keys_of[name] = self.keys(name, layer)
        return setup


class _Body:
    """The body of one step loop, member by member: ops on (B, width) values at step t."""

    def __init__(
        self,
        lowering: _Lowering,
        axis: str,
        members: list[str],
        setups: dict[str, Any],
        feed: bool = False,
    ):
        self.low = lowering
        self.feed = feed  # the fed value comes from outside (FEED), not chosen here
        self.axis = axis
        self.members = members
        self.setups = setups
        self.b = _Builder(prefix="t", outer=lowering.b.kinds)
        self.carries: dict[str, Carry] = {}
        self.steps: dict[tuple[str, int], str] = {}  # (outer array, delay) -> its step
        self.values: dict[str, str] = {}  # member -> its value at t
        self.weights: dict[str, str] = {}  # member -> its attention weights at t
        self.mask_t = self.at(lowering.mask(axis), 0, "mask")

    def loop(self) -> Loop:
        kinds = {**self.low.b.kinds, **self.b.kinds}
        writes = [(n, self.values[n]) for n in self.members]
        extents = {}
        for name in self.members:  # attention weights an output asks for
            if name in self.low.wanted_weights:
                writes.append((f"{name}:weights", self.weights[name]))
                layer = self.low.spec.layers[name]
                extents[f"{name}:weights"] = self.low.value[layer.attention.memory]  # type: ignore[union-attr]
        carries = tuple(self.carries.values())
        mask = self.low.mask(self.axis)
        return Loop(self.axis, mask, tuple(self.b.ops), kinds, carries, tuple(writes), extents)

    def at(self, array: str, delay: int = 0, kind: str = "batch") -> str:
        """An outer (T, ...) array at step t - delay."""
        if (array, delay) not in self.steps:
            when = f"@t-{delay}" if delay else "@t"
            self.steps[array, delay] = self.b.emit(
                OpKind.AT, (array,), delay, kind, out=array + when
            )
        return self.steps[array, delay]

    def past(self, member: str, delay: int) -> str:
        """A member's own output at step t - delay (at t: its value this step)."""
        if delay == 0:
            return self.values[member]
        return self.b.emit(OpKind.PAST, (), (member, delay), "batch", out=f"{member}@t-{delay}")

    def carry(self, name: str, init: str) -> str:
        """The value of a carry before the step."""
        if name not in self.carries:
            self.carries[name] = Carry(name, init, "")
            self.b.emit(OpKind.CARRY, (), name, "batch", out=f"carry:{name}")
        return f"carry:{name}"

    def member(self, name: str) -> None:
        layer = self.low.spec.layers[name]
        if isinstance(layer, RecurrentLayer):
            self.values[name] = self.cell(name, layer, self.joined(name, layer))
        else:
            assert isinstance(layer, DenseLayer)
            low, b = self.low, self.b
            product = b.like(OpKind.LINEAR, (self.joined(name, layer), low.param(f"{name}.W")))
            bias = low.param(f"{name}.b", vector=True)
            pre = b.like(OpKind.ADD, (product, bias), out=f"{name}:pre@t")
            self.values[name] = b.named(low.activation(layer.activation, pre, b), f"{name}@t")

    def joined(self, name: str, layer: RecurrentLayer | DenseLayer) -> str:
        """What a member reads at step t, side by side."""
        context = None
        attention = getattr(layer, "attention", None)
        if attention is not None and attention.score == "additive":
            context = self.additive(name, layer)  # type: ignore[arg-type]
        pieces, widths = [], []
        for piece in self.low.program.loop_pieces(name):
            widths.append(piece.width)
            if piece.kind == "fed":
                pieces.append(self.fed(name))
            elif piece.kind == "static":
                pieces.append(self.low.read(piece.source, piece.select))
            elif piece.kind == "context":
                assert context is not None
                pieces.append(context)
            elif piece.kind == "feeding":  # the attentional vector of step t - 1
                pieces.append(self.carry(f"{name}:attentional", self.setups[name]["feeding"]))
            elif piece.source in self.members:
                pieces.append(self.past(piece.source, piece.delay))
            else:
                pieces.append(self.at(self.low.value[piece.source], piece.delay))
        if len(pieces) == 1:
            return pieces[0]
        return self.b.like(OpKind.CONCAT, tuple(pieces), tuple(widths), out=f"{name}:in@t")

    def fed(self, name: str) -> str:
        """The ground truth at t where the teacher-forcing mask says so (and at step 0),
        else the prediction of step t - 1: its argmax through the embedding for tokens."""
        fed = self.low.program.fed(name)
        assert fed is not None
        b = self.b
        if self.feed:
            given = b.emit(OpKind.FEED, (), fed.tokens, "int" if fed.tokens else "batch", out="x_t")
            if not fed.tokens:
                return given
            table = self.low.param(fed.table)
            return b.emit(OpKind.LOOKUP, (table, given), None, "batch", out=f"{name}:fed@t")
        cond = b.emit(OpKind.FIRST_OR, (f"truth:{self.axis}",), None, "mask", out=f"{name}:truth@t")
        previous = self.past(fed.prediction, 1)
        if not fed.tokens:
            given = self.at(self.low.value[fed.source])
            return b.like(OpKind.SELECT, (cond, given, previous), True, out=f"{name}:fed@t")
        given = self.at(f"{fed.ids}:ids", 0, "int")
        guess = b.emit(OpKind.ARGMAX, (previous,), None, "int", out=f"{name}:guess@t")
        ids = b.emit(OpKind.SELECT, (cond, given, guess), False, "int", out=f"{name}:fed_ids@t")
        table = self.low.param(fed.table)
        return b.emit(OpKind.LOOKUP, (table, ids), None, "batch", out=f"{name}:fed@t")

    def additive(self, name: str, layer: RecurrentLayer) -> str:
        """Bahdanau attention at step t: the query is the top depth's previous h."""
        assert layer.attention is not None
        low, b = self.low, self.b
        cell = low.analysis.cells[layer.cell]
        top = layer.depth - 1
        start = self.setups[name]["starts"][top][cell.state.index(cell.output)]
        query = self.carry(f"{name}.l{top}.{cell.output}", start)
        keys = low.keys_of[name]
        W_q = low.param(f"{name}.attention.W_q")
        v = low.param(f"{name}.attention.v", vector=True)
        projected = b.like(OpKind.LINEAR, (query, W_q), out=f"{name}:query@t")
        spread = b.emit(
            OpKind.BROADCAST_T, (projected, keys), None, "seq", out=f"{name}:query_steps@t"
        )
        pre = b.like(OpKind.ADD, (keys, spread), out=f"{name}:energy_pre@t")
        energy = b.like(OpKind.CALL, (pre,), "tanh", out=f"{name}:energy@t")
        scores = b.emit(OpKind.EINSUM, (energy, v), "sba,a->bs", "batch", out=f"{name}:scores@t")
        return low.attend(name, scores, layer.attention.memory, b, "b", self.weights)

    def cell(self, name: str, layer: RecurrentLayer, x: str) -> str:
        """A recurrent member at step t: one generated cell step per depth."""
        b, setup = self.b, self.setups[name]
        states = self.low.analysis.cells[layer.cell].state
        y = x
        for k in range(layer.depth):
            prev = [
                self.carry(f"{name}.l{k}.{s}", setup["starts"][k][i]) for i, s in enumerate(states)
            ]
            args = (x, self.mask_t, setup["P"][k], *prev)
            step = b.emit(
                OpKind.CELL_STEP, args, Scan(name, k, "fwd", 0), "tuple", out=f"{name}.l{k}@t"
            )
            for i, s in enumerate(states):
                new = b.emit(OpKind.ITEM, (step,), (0, i), "batch", out=f"{name}.l{k}:{s}@t")
                carry = self.carries[f"{name}.l{k}.{s}"]
                self.carries[carry.name] = Carry(carry.name, carry.init, new)
            y = b.emit(OpKind.ITEM, (step,), (1,), "batch", out=f"{name}.l{k}:out@t")
            b.emit(OpKind.ITEM, (step,), (2,), "tape", out=f"{name}.l{k}:tape@t")
            if k > 0 and layer.residual:
                y = b.like(OpKind.ADD, (y, x))
            if k + 1 in setup["drop"]:
                y = b.like(OpKind.MUL, (y, self.at(setup["drop"][k + 1], 0, "mask")))
            x = y
        if layer.attention is not None and layer.attention.score != "additive":
            y = self.low.luong(name, layer, y, "", b, self.weights)
        if "feeding" in setup:  # the attentional vector joins the next step's input
            fed = f"{name}:attentional"
            self.carries[fed] = Carry(fed, setup["feeding"], y)
        return y


def needed(ops: tuple[Op, ...], wanted: list[str]) -> tuple[Op, ...]:
    """The ops that compute ``wanted``, and what they read in turn (in order)."""
    reads = set(wanted)
    kept = []
    for op in reversed(ops):
        if op.out in reads:
            kept.append(op)
            reads.update(op.args)
    return tuple(reversed(kept))


def before_feed(ops: tuple[Op, ...]) -> tuple[tuple[Op, ...], tuple[str, ...]]:
    """The part of one step (``ops``, in order) that reads the carries but neither the
    value fed at t (FEED) nor a memory gathered by weights (a context): Bahdanau's
    attention weights, which read only the state before the step. It is the same for
    every hypothesis with the same carry, so a beam search does it once per parent
    rather than once per child. Returns those ops and the values the rest of the step
    reads from them (each rows-first: (B, ...)); nothing when there is no such part."""
    after: set[str] = set()  # what reads the fed value, or a memory through weights
    carried: set[str] = set()
    for op in ops:
        gathers = op.kind == OpKind.EINSUM and einsum_form(op.attr) == "bs,sbx->bx"
        if op.kind == OpKind.FEED or gathers or after.intersection(op.args):
            after.add(op.out)
        elif op.kind in (OpKind.CARRY, OpKind.PAST) or carried.intersection(op.args):
            carried.add(op.out)
    leaves = (OpKind.CARRY, OpKind.PAST)
    early = needed(
        tuple(op for op in ops if op.out not in after),
        [op.out for op in ops if op.out in carried and op.kind not in leaves],
    )
    early = tuple(op for op in early if op.kind not in leaves)
    made = {op.out for op in early}
    ready = tuple(
        dict.fromkeys(a for op in ops if op.out not in made for a in op.args if a in made)
    )
    given = {op.out for op in ops if op.kind in leaves}
    if not early or not ready or not set(ready) <= _rows_first(early, given):
        return (), ()
    return early, ready


def einsum_form(spec: str) -> str:
    """An einsum's spec with its one width letter (not s, b) written x."""
    widths = set(spec) - set("sb,->")
    return spec.replace(widths.pop(), "x") if len(widths) == 1 else spec


def _rows_first(ops: tuple[Op, ...], rows: set[str]) -> set[str]:
    """``rows`` (values known to be rows-first: (B, ...)) and those of ``ops`` (a
    step's) that are too: a step of a time-major array, an einsum whose result starts
    with the batch, and what a row-wise op makes of a rows-first value."""
    rows = set(rows)
    row_wise = (OpKind.LINEAR, OpKind.SOFTMAX, OpKind.FILL, OpKind.CALL)
    for op in ops:
        step_of = op.kind == OpKind.AT  # (T, B, ...)[t]
        batch_first = op.kind == OpKind.EINSUM and op.attr.split("->")[1].startswith("b")
        if step_of or batch_first or (op.kind in row_wise and op.args[0] in rows):
            rows.add(op.out)
    return rows


def batch_axis(op: Op, kind: str) -> int | None:
    """Where a value made outside a step loop keeps its examples (what a decoding
    strategy reorders when it picks among hypotheses): time-major arrays (T, B, ...) on
    axis 1, rows (B, ...) on axis 0; parameters, numbers and tuples nowhere."""
    if kind in ("seq", "int_seq"):
        return 1
    if kind == "mask":
        return 0 if op.kind == OpKind.VALID else 1  # VALID is (B, S); the others (T, B, ...)
    if kind in ("batch", "int", "zeros"):
        return 0
    return None


def live(ops: tuple[Op, ...]) -> tuple[Op, ...]:
    """The ops an output needs (and every dropout draw, whose order the random stream
    depends on): what a forward without a reverse runs."""
    return needed(ops, [op.out for op in ops if op.kind in (OpKind.OUTPUT, OpKind.DROPMASK)])


def lower_network(analysis: Analysis) -> Network:
    """The forward ops of a checked spec (see the module docstring)."""
    return _Lowering(analysis).lower()


# --- reverse ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopBack:
    """The reverse of a loop: the body's reverse ``ops`` at step t, and where what they
    give goes. ``results`` lists, per outer value that gets a gradient, how: "at"
    (read at t - delay: added into an array like it), "whole" (read as is: summed over
    steps) or "carry" (the gradient of a carry's start)."""

    loop: Loop
    ops: tuple[Op, ...]
    kinds: dict[str, str]
    saved: tuple[str, ...]  # body values the reverse reads, kept per step by the forward
    recomputed: tuple[Op, ...]  # body values the reverse reads again (a step of an array)
    at: tuple[tuple[str, str, int], ...]  # (body gradient, outer array, delay)
    past: tuple[tuple[str, str, int], ...]  # (body gradient, member, delay)
    whole: tuple[tuple[str, str], ...]  # (body gradient, outer value)
    carries: tuple[tuple[str, str | None], ...]  # (carry, body gradient of its value before t)
    results: tuple[str, ...]  # the outer values given gradients, in the tuple's order


@dataclass(frozen=True)
class Backward:
    """The reverse of a network: ops, and the gradient of each parameter and input."""

    ops: tuple[Op, ...]
    kinds: dict[str, str]
    params: dict[str, str]  # parameter -> its gradient
    inputs: dict[str, str]  # real input -> its gradient (batch-first)


def _zeros_for(r: _Reverse, var: str) -> str:
    return r.emit(OpKind.ZEROS_LIKE, (var,), None, r.kinds[var])


def _parts_of(r: _Reverse, op: Op, paths: list[tuple[int, ...]], like: list[str]) -> list[str]:
    """The gradient of each part of tuple ``op.out``; where none came, zeros shaped
    like the matching value of ``like``."""
    out = []
    for path, shape in zip(paths, like, strict=True):
        grad = r.part_total(op.out, path)
        out.append(grad if grad is not None else _zeros_for(r, shape))
    return out


def _give(r: _Reverse, var: str, grad: str) -> None:
    if r.kinds[var] not in NO_GRADIENT_KINDS:
        r.add_term(var, grad)


def _reverse_scan(r: _Reverse, op: Op, grad: str) -> None:
    xs, mask, P, *starts = op.args
    n = len(starts)
    items = r.context["items"]
    paths = [(0,), *((1, i) for i in range(n))]
    d_ys, *d_finals = _parts_of(r, op, paths, [items[op.out, (0,)], *starts])
    tape = items[op.out, (2,)]
    back = r.emit(OpKind.SCAN_BACK, (d_ys, *d_finals, tape, xs, mask, P), op.attr, "tuple")
    _give(r, xs, r.emit(OpKind.ITEM, (back,), (0,), r.kinds[xs]))
    for i, start in enumerate(starts):
        if r.kinds[start] not in NO_GRADIENT_KINDS:
            r.add_term(start, r.emit(OpKind.ITEM, (back,), (1, i), "batch"))


def _reverse_cell_step(r: _Reverse, op: Op, grad: str) -> None:
    x, mask_t, P, *states = op.args
    n = len(states)
    items = r.context["items"]
    paths = [*((0, i) for i in range(n)), (1,)]
    *d_states, d_y = _parts_of(r, op, paths, [*states, items[op.out, (1,)]])
    tape = items[op.out, (2,)]
    back = r.emit(OpKind.CELL_STEP_BACK, (*d_states, d_y, tape, x, mask_t, P), op.attr, "tuple")
    _give(r, x, r.emit(OpKind.ITEM, (back,), (0,), "batch"))
    for i, state in enumerate(states):
        r.add_term(state, r.emit(OpKind.ITEM, (back,), (1, i), "batch"))


def _reverse_item(r: _Reverse, op: Op, grad: str) -> None:
    r.add_part(op.args[0], op.attr, grad)


def _reverse_linear(r: _Reverse, op: Op, grad: str) -> None:
    x, W = op.args
    _give(r, x, r.emit(OpKind.LINEAR_X, (grad, W), None, r.kinds[x]))
    r.add_term(W, r.emit(OpKind.LINEAR_W, (grad, x), None, "matrix"))


def _reverse_einsum(r: _Reverse, op: Op, grad: str) -> None:
    a, b = op.args
    operands, result = op.attr.split("->")
    left, right = operands.split(",")
    _give(r, a, r.emit(OpKind.EINSUM, (grad, b), f"{result},{right}->{left}", r.kinds[a]))
    _give(r, b, r.emit(OpKind.EINSUM, (a, grad), f"{left},{result}->{right}", r.kinds[b]))


def _reverse_softmax(r: _Reverse, op: Op, grad: str) -> None:
    """y (d - sum(d y)): the Jacobian of softmax times d, from its value y."""
    inner = r.emit(OpKind.ROWSUM, (r.emit(OpKind.MUL, (grad, op.out)),))
    r.add_term(op.args[0], r.emit(OpKind.MUL, (op.out, r.emit(OpKind.SUB, (grad, inner)))))


def _reverse_log_softmax(r: _Reverse, op: Op, grad: str) -> None:
    """d - softmax(x) sum(d)."""
    probs = r.emit(OpKind.SOFTMAX, (op.args[0],))
    total = r.emit(OpKind.ROWSUM, (grad,))
    r.add_term(op.args[0], r.emit(OpKind.SUB, (grad, r.emit(OpKind.MUL, (probs, total)))))


def _reverse_select(r: _Reverse, op: Op, grad: str) -> None:
    cond, a, b = op.args
    zero = r.context["zero"]
    _give(r, a, r.emit(OpKind.SELECT, (cond, grad, zero), op.attr))
    _give(r, b, r.emit(OpKind.SELECT, (cond, zero, grad), op.attr))


def _reverse_output(r: _Reverse, op: Op, grad: str) -> None:
    _give(r, op.args[0], r.emit(OpKind.COTANGENT, (op.args[0],), op.attr))


def _reverse_lookup(r: _Reverse, op: Op, grad: str) -> None:
    table, ids = op.args
    r.add_term(table, r.emit(OpKind.SCATTER, (grad, table, ids), None, "matrix"))


def _pass(kind: OpKind, extra: Callable[[Op], tuple[str, ...]] = lambda op: ()) -> Any:
    """A linear op's rule: its reverse is ``kind`` of the gradient (and ``extra``)."""

    def rule(r: _Reverse, op: Op, grad: str) -> None:
        _give(r, op.args[0], r.emit(kind, (grad, *extra(op)), op.attr, r.kinds[op.args[0]]))

    return rule


def _record(r: _Reverse, op: Op, grad: str) -> None:
    """A leaf of a loop body: its gradient is a result of the step's reverse."""
    r.grads[op.attr if op.kind == OpKind.CARRY else op.out] = grad


# Ops only a reverse writes, and ops whose value takes no gradient (no rule of their own).
REVERSE_ONLY = frozenset(
    {
        OpKind.COTANGENT, OpKind.SCATTER, OpKind.LINEAR_X, OpKind.LINEAR_W, OpKind.SUM_ROWS,
        OpKind.ROWSUM, OpKind.UNSHIFT, OpKind.AT_LAST, OpKind.AT_MAX, OpKind.ZEROS_LIKE,
        OpKind.SCAN_BACK, OpKind.LOOP_BACK, OpKind.CELL_STEP_BACK,
    }
)  # fmt: skip
WITHOUT_GRADIENT = frozenset(
    {
        OpKind.IDS, OpKind.STEP_MASK, OpKind.VALID, OpKind.TRUTH, OpKind.ZEROS, OpKind.DROPMASK,
        OpKind.PACK, OpKind.ARGMAX, OpKind.FIRST_OR, OpKind.FEED, OpKind.MEAN_WEIGHTS,
    }
)  # fmt: skip

REVERSE_RULES.update(
    {
        OpKind.INPUT: lambda r, op, grad: r.grads.__setitem__(f"input:{op.attr}", grad),
        OpKind.TRANSPOSE: _pass(OpKind.TRANSPOSE),
        OpKind.LOOKUP: _reverse_lookup,
        OpKind.LINEAR: _reverse_linear,
        OpKind.SOFTMAX: _reverse_softmax,
        OpKind.LOG_SOFTMAX: _reverse_log_softmax,
        OpKind.BROADCAST_T: _pass(OpKind.SUM0),
        OpKind.SUM0: _pass(OpKind.BROADCAST_T, lambda op: (op.args[0],)),
        OpKind.MAX0: lambda r, op, grad: _give(
            r, op.args[0], r.emit(OpKind.AT_MAX, (grad, op.args[0], op.out), None, "seq")
        ),
        OpKind.SHIFT: _pass(OpKind.UNSHIFT),
        OpKind.EINSUM: _reverse_einsum,
        OpKind.FILL: lambda r, op, grad: r.add_term(
            op.args[0], r.emit(OpKind.FILL, (grad, op.args[1]), 0.0)
        ),
        OpKind.SELECT: _reverse_select,
        OpKind.LAST: _pass(OpKind.AT_LAST, lambda op: (op.args[0],)),
        OpKind.ITEM: _reverse_item,
        OpKind.SCAN: _reverse_scan,
        OpKind.CELL_STEP: _reverse_cell_step,
        OpKind.LOOP: lambda r, op, grad: _reverse_loop(r, op),
        OpKind.OUTPUT: _reverse_output,
        OpKind.AT: _record,
        OpKind.PAST: _record,
        OpKind.CARRY: _record,
    }
)


def _derive(
    ops: tuple[Op, ...], kinds: dict[str, str], seeds: list[tuple[str, str]], prefix: str
) -> _Reverse:
    """Reverse mode over ``ops``: each op in reverse order passes the gradient of its
    value (for a tuple, of its parts) to its arguments by its rule in REVERSE_RULES."""
    r = _Reverse(dict(kinds), {op.out for op in ops} | {grad for _, grad in seeds}, prefix)
    r.context = {
        "items": {(op.args[0], op.attr): op.out for op in ops if op.kind == OpKind.ITEM},
        "zero": "",
    }
    zero = r.emit(OpKind.CONST, (), 0.0, "scalar")
    r.context["zero"] = zero
    for var, grad in seeds:
        r.add_term(var, grad)
    for op in reversed(ops):
        r.current = op.out
        kind = r.kinds[op.out]
        if op.kind == OpKind.OUTPUT:
            REVERSE_RULES[op.kind](r, op, "")
        elif kind == "tuple":
            if op.out in r.parts:
                REVERSE_RULES[op.kind](r, op, "")
        elif kind not in NO_GRADIENT_KINDS and op.kind != OpKind.CONST:
            total = r.total(op.out)
            if total is not None:
                REVERSE_RULES[op.kind](r, op, total)
    return r


def _reverse_loop(r: _Reverse, op: Op) -> None:
    """The reverse of a step loop: the body's reverse, seeded at step t with the
    gradient of what the step writes (a member's output at t, as the outer reverse and
    later steps gave it) and of the carries after the step."""
    loop: Loop = op.attr
    members = len(loop.writes)
    seeds = [(value, f"dbuf:{member}") for member, value in loop.writes]
    seeds += [(c.next, f"dcarry:{c.name}") for c in loop.carries]
    kinds = dict(loop.kinds)
    for member, _ in loop.writes:
        kinds[f"dbuf:{member}"] = "batch"
    for c in loop.carries:
        kinds[f"dcarry:{c.name}"] = "batch"
    body = _derive(loop.ops, kinds, seeds, prefix="$b")
    own = {o.out for o in loop.ops}
    by_out = {o.out: o for o in loop.ops}
    totals = {}
    for var in list(body.terms):
        if var not in own:
            total = body.total(var)
            if total is not None:
                totals[var] = total
    name = _readable(body)
    at, past = [], []
    for var, grad in body.grads.items():
        leaf = by_out.get(var)
        if leaf is None:
            continue  # a carry's
        if leaf.kind == OpKind.AT:
            at.append((name(grad), leaf.args[0], leaf.attr))
        elif leaf.kind == OpKind.PAST:
            past.append((name(grad), *leaf.attr))
    carries = [(c.name, _maybe(name, body.grads.get(c.name))) for c in loop.carries]
    whole = [(name(total), var) for var, total in totals.items()]
    outer = [a for _, a, _ in at] + [v for _, v in whole]
    outer += [c.init for c in loop.carries if r.kinds[c.init] not in NO_GRADIENT_KINDS]
    results = tuple(v for v in dict.fromkeys(outer) if r.kinds[v] not in NO_GRADIENT_KINDS)
    reads = {a for o in body.ops for a in o.args if a in own}
    cheap = (OpKind.AT, OpKind.PAST)
    saved = tuple(o.out for o in loop.ops if o.out in reads and o.kind not in cheap)
    again = tuple(o for o in loop.ops if o.out in reads and o.kind in cheap)
    back = LoopBack(
        loop, _renamed(body.ops, name), body.kinds, saved, again, tuple(at), tuple(past), tuple(whole),
        tuple(carries), results,
    )  # fmt: skip
    items = r.context["items"]
    grads = _parts_of(
        r, op, [(j,) for j in range(members)], [items[op.out, (j,)] for j in range(members)]
    )
    for i, c in enumerate(loop.carries):
        final = r.part_total(op.out, (members + i,))
        grads.append(final if final is not None else r.emit(OpKind.ZEROS_LIKE, (c.init,)))
    tape = r.context["items"][op.out, (members + len(loop.carries),)]
    result = r.emit(OpKind.LOOP_BACK, (*grads, tape, *op.args), back, "tuple")
    for j, var in enumerate(results):
        r.add_term(var, r.emit(OpKind.ITEM, (result,), (j,), r.kinds[var]))


NO_GRADIENT_KINDS = NO_GRADIENT | {"tuple"}


def reverse_network(net: Network) -> Backward:
    """The backward of a network, derived from its forward ops."""
    r = _derive(net.ops, net.kinds, [], prefix="$d")
    name = _readable(r)
    params = {p: name(r.grads[f"param:{p}"]) for p in net.params if f"param:{p}" in r.grads}
    inputs = {i: name(r.grads[f"input:{i}"]) for i in net.inputs if f"input:{i}" in r.grads}
    return Backward(_renamed(r.ops, name), r.kinds, params, inputs)


def _readable(r: _Reverse) -> Callable[[str], str]:
    """Gradients named after the value they are the gradient of (``d$decoder``)."""
    names = r.names()
    return lambda var: names.get(var, var)


def _maybe(name: Callable[[str], str], var: str | None) -> str | None:
    return None if var is None else name(var)


def _renamed(ops: list[Op], name: Callable[[str], str]) -> tuple[Op, ...]:
    return tuple(Op(name(o.out), o.kind, tuple(map(name, o.args)), o.attr) for o in ops)
