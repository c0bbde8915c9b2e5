"""Writing a network's ops (rnnc.ir.network) as Python: what every target shares.

A :class:`ModuleWriter` turns ops into lines, one assignment per op, each value a local
named after what it is (``decoder_energy_t``, ``d_out_pre``); parameters, constants and
carried states are read where they are used. How each op is spelled is a table,
:data:`EXPRESSIONS`, written for NumPy; a target overrides the entries its library
spells differently (as :class:`backends.emit.Dialect` does for the cell functions) and
adds the statements that are its own (how it runs a scan, a step loop's buffers).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

from rnnc.front.checks import Analysis
from rnnc.ir.lower import Op, OpKind
from rnnc.ir.network import (
    Loop,
    Network,
    Scan,
    StepContract,
    batch_axis,
    before_feed,
    einsum_form,
    live,
    needed,
)

from .emit import RESERVED, CellFunctions, Dialect, Namespace, pack


def _items(path: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in path)


def _at(array: str, delay: int, lib: str) -> str:
    """An array at step t - delay, zeros before."""
    if not delay:
        return f"{array}[t]"
    return f"({array}[t - {delay}] if t >= {delay} else {lib}.zeros_like({array}[0]))"


Expression = Callable[["ModuleWriter", Op, list[str]], str]

# Attention's products (s: a memory's steps, b: the batch) spelled as matrix products,
# which BLAS does (einsum does them in a loop of its own): by the einsum's form, with x
# the letter of the width. A target lists those it is faster with (ModuleWriter.products).
PRODUCTS = {
    "sbx,x->bs": "({0} @ {1}).T",  # scores: energies (S, B, A) by v (A,)
    "bs,sbx->bx": "({0}[:, None, :] @ {1}.swapaxes(0, 1))[:, 0]",  # context: weights by memory
    "bx,sbx->bs": "({1}.swapaxes(0, 1) @ {0}[:, :, None])[:, :, 0]",  # dot scores
}

# How NumPy spells every op of the network as an expression of its arguments' names
# (a target's writer overrides the entries its library spells differently).
EXPRESSIONS: dict[OpKind, Expression] = {
    OpKind.PARAM: lambda w, op, a: f"params[{op.attr!r}]",
    OpKind.CONST: lambda w, op, a: repr(float(op.attr)),
    OpKind.INPUT: lambda w, op, a: f"np.asarray(inputs[{op.attr!r}], dtype=dtype)",
    OpKind.IDS: lambda w, op, a: f"np.asarray(inputs[{op.attr!r}])",
    OpKind.STEP_MASK: lambda w, op, a: f"step_mask(lengths[{op.attr!r}], {a[0]}.shape[0])",
    OpKind.VALID: lambda w, op, a: f"{a[0]}[:, :, 0].T",
    OpKind.TRUTH: lambda w, op, a: (
        f"tf_masks.get({op.attr!r}, np.ones({a[0]}.shape[1::-1], dtype=bool)).T"
    ),
    OpKind.ZEROS: lambda w, op, a: w.zeros(op.attr, f"{a[0]}.shape[1]"),
    OpKind.DROPMASK: lambda w, op, a: (
        f"dropout_mask(dropout, {a[0]}.shape[:2] + ({op.attr[1]},), {op.attr[0]!r}, dtype)"
    ),
    OpKind.PACK: lambda w, op, a: f"{w.function(op.attr)}_params(params, {op.attr.prefix!r})",
    OpKind.COTANGENT: lambda w, op, a: f"cotangent(cotangents, {op.attr!r}, {a[0]})",
    OpKind.TRANSPOSE: lambda w, op, a: f"{a[0]}.swapaxes(0, 1)",
    OpKind.LOOKUP: lambda w, op, a: f"{a[0]}[{a[1]}]",
    OpKind.SCATTER: lambda w, op, a: f"scatter_rows({a[1]}, {a[2]}, {a[0]})",
    OpKind.LINEAR: lambda w, op, a: f"{a[0]} @ {a[1]}.T",
    OpKind.LINEAR_X: lambda w, op, a: f"{a[0]} @ {a[1]}",
    OpKind.LINEAR_W: lambda w, op, a: f"rows({a[0]}).T @ rows({a[1]})",
    OpKind.SUM_ROWS: lambda w, op, a: f"rows({a[0]}).sum(axis=0)",
    OpKind.SUM_BATCH: lambda w, op, a: f"{a[0]}.sum(axis=0)",
    OpKind.SOFTMAX: lambda w, op, a: f"softmax({a[0]})",
    OpKind.LOG_SOFTMAX: lambda w, op, a: f"log_softmax({a[0]})",
    OpKind.ROWSUM: lambda w, op, a: f"{a[0]}.sum(axis=-1, keepdims=True)",
    OpKind.BROADCAST_T: lambda w, op, a: w.xp.broadcast(a[0], f"{a[1]}.shape[0]"),
    OpKind.SUM0: lambda w, op, a: f"{a[0]}.sum(axis=0)",
    OpKind.MAX0: lambda w, op, a: f"{a[0]}.max(axis=0)",
    OpKind.AT_MAX: lambda w, op, a: f"at_max({a[0]}, {a[1]}, {a[2]})",
    OpKind.MEAN_WEIGHTS: lambda w, op, a: f"{a[0]} / {a[0]}.sum(axis=0, dtype=dtype)",
    OpKind.SHIFT: lambda w, op, a: f"shift({a[0]}, {op.attr})",
    OpKind.UNSHIFT: lambda w, op, a: f"unshift({a[0]}, {op.attr})",
    OpKind.EINSUM: lambda w, op, a: w.contract(op.attr, a[0], a[1]),
    OpKind.FILL: lambda w, op, a: f"{w.xp.lib}.where({a[1]}, {a[0]}, {op.attr!r})",
    OpKind.SELECT: lambda w, op, a: (
        f"{w.xp.lib}.where({a[0]}{'[:, None]' if op.attr else ''}, {a[1]}, {a[2]})"
    ),
    OpKind.ARGMAX: lambda w, op, a: f"{a[0]}.argmax(axis=-1)",
    OpKind.LAST: lambda w, op, a: f"{a[0]}[lengths[{op.attr!r}] - 1, np.arange({a[0]}.shape[1])]",
    OpKind.AT_LAST: lambda w, op, a: f"at_last({a[0]}, {a[1]}, lengths[{op.attr!r}])",
    OpKind.ITEM: lambda w, op, a: f"{a[0]}{_items(op.attr)}",
    OpKind.ZEROS_LIKE: lambda w, op, a: f"{w.xp.lib}.zeros_like({a[0]})",
    OpKind.ADD: lambda w, op, a: f"{a[0]} + {a[1]}",
    OpKind.SUB: lambda w, op, a: f"{a[0]} - {a[1]}",
    OpKind.MUL: lambda w, op, a: f"{a[0]} * {a[1]}",
    OpKind.NEG: lambda w, op, a: f"-{a[0]}",
    OpKind.CALL: lambda w, op, a: f"{op.attr}({a[0]})",
    OpKind.DCALL: lambda w, op, a: w.xp.functions.slope(op.attr, y=a[0])[0],
    OpKind.CONCAT: lambda w, op, a: f"{w.xp.cat}([{', '.join(a)}], axis=-1)",
    OpKind.SLICE: lambda w, op, a: f"{a[0]}[..., {op.attr[0]}:{op.attr[0] + op.attr[1]}]",
    OpKind.AT: lambda w, op, a: _at(a[0], op.attr, w.xp.lib),
    OpKind.PAST: lambda w, op, a: w.past(*op.attr),
    OpKind.CARRY: lambda w, op, a: w.carry(op.attr),
    OpKind.FIRST_OR: lambda w, op, a: f"{a[0]}[t] | (t == 0)",
    OpKind.FEED: lambda w, op, a: "x_t",
}

# Names the modules' functions use themselves (values never take them).
WRITER_NAMES = {
    "v", "outputs", "inputs", "lengths", "dtype", "device", "like", "tf_masks", "dropout",
    "uniform", "cotangents", "input_grads", "name", "value", "D", "d_x", "d_prev", "d_rps",
    "d_in", "rows", "scatter_rows", "at_last", "dropout_mask", "cotangent", "unshift",
    "zeros_like_all", "weights", "ys", "finals", "at_max",
}  # fmt: skip

# Leaves read where they are used instead of getting a line of their own.
INLINE = (OpKind.PARAM, OpKind.CONST, OpKind.CARRY, OpKind.FEED)


class ModuleWriter:
    """Writes a network's ops as the body of a generated function (see the module
    docstring); a target subclasses it with its tables."""

    expressions: ClassVar[dict[OpKind, Expression]] = EXPRESSIONS
    products: ClassVar[tuple[str, ...]] = tuple(PRODUCTS)  # those faster than the einsum
    xp: Dialect
    statements: ClassVar[dict[OpKind, Statement]] = {}

    def __init__(self, analysis: Analysis, net: Network, xp: Dialect, grads: bool):
        self.analysis = analysis
        self.net = net
        self.xp = xp
        self.names = Namespace(RESERVED | WRITER_NAMES)
        self.cells = CellFunctions(analysis, xp, grads=grads)
        self.inline: dict[str, str] = {}
        self.saved: dict[str, tuple[str, ...]] = {}  # loop -> body values kept per step
        for op in net.ops:  # parameters and numbers: read where they are used
            if op.kind in (OpKind.PARAM, OpKind.CONST):
                self.inline[op.out] = self.expressions[op.kind](self, op, [])

    def function(self, scan: Scan) -> str:
        """The generated cell functions a scan or a step runs."""
        layer = self.analysis.spec.layers[scan.layer]
        return self.cells(scan.layer, scan.depth, layer, scan.input_size)  # type: ignore[arg-type]

    def name(self, var: str) -> str:
        """The Python name of a value (or what it reads, if it is inlined)."""
        if var in self.inline:
            return self.inline[var]
        return self.local(var)

    def local(self, text: str) -> str:
        """A Python name for ``text``: characters no identifier holds become ``_``;
        never a generated cell function's (``cell_...``)."""
        text = text if text.startswith("$") else re.sub(r"\W", "_", text)
        return self.names(f"v_{text}" if text.startswith("cell_") else text)

    def buffer(self, member: str) -> str:
        return self.local(f"buf_{member}")

    def carry(self, name: str) -> str:
        return self.local(f"carry_{name}")

    def past(self, member: str, delay: int) -> str:
        """A step loop member's output at step t - delay, zeros before."""
        zeros = self.local(f"zeros_{member}")
        return f"({self.buffer(member)}[t - {delay}] if t >= {delay} else {zeros})"

    def lines(self, ops: tuple[Op, ...], indent: str) -> list[str]:
        out: list[str] = []
        for op in ops:
            args = [self.name(a) for a in op.args]
            statement = self.statements.get(op.kind)
            if statement is not None:
                out += [indent + line for line in statement(self, op, args)]
                continue
            text = self.expressions[op.kind](self, op, args)
            if op.kind in INLINE:
                self.inline[op.out] = text
            else:
                out.append(f"{indent}{self.name(op.out)} = {text}")
        return out

    # --- statements every target writes the same way ------------------------------

    def cell_step(self, op: Op, a: list[str]) -> list[str]:
        x, mask_t, P, *states = a
        fn = self.cells.of[op.attr.layer, op.attr.depth]
        step = self.cells.steps[fn]
        bias = f" + {P}['b_x']" if any(step.x_bias) else ""
        xp = f"{x} @ {P}['W_x'].T{bias}" if step.x_blocks else "None"
        return [f"{self.name(op.out)} = {fn}_step({xp}, {x}, {mask_t}, {pack(states)}, {P})"]

    def contract(self, spec: str, a: str, b: str) -> str:
        """An einsum of two arrays: a matrix product where the target has a faster one."""
        form = einsum_form(spec)
        if form in self.products:
            return PRODUCTS[form].format(a, b)
        return f"{self.xp.lib}.einsum({spec!r}, {a}, {b})"

    def output(self, op: Op, a: list[str]) -> list[str]:
        self.inline[op.out] = a[0]
        return [f"outputs[{op.attr!r}] = {a[0]}"]

    def begin_function(self) -> None:
        """Called before writing each function's lines (a target's state per function)."""

    def new_buffer(self, width: int | str) -> str:
        """Where a step loop writes a member's output, step by step."""
        return f"np.zeros((T, B, {width}), dtype=dtype)"

    def zeros(self, width: int, rows: str = "B") -> str:
        """Zeros of (rows, width) in the model's dtype."""
        return f"np.zeros(({rows}, {width}), dtype=dtype)"

    def write_width(self, loop: Loop, write: str) -> int | str:
        """The width of what a step loop writes at each step: a member's, or the
        length of the memory attention weights are over."""
        if write in loop.extents:
            return f"{self.name(loop.extents[write])}.shape[0]"
        return int(self.analysis.graph.nodes[write]["width"])

    def loop(self, op: Op, a: list[str]) -> list[str]:
        """A step loop: the body at every step, each member's output written at t, the
        carries passed on; with a tape of what the reverse reads, if it has one."""
        loop: Loop = op.attr
        saved = self.saved.get(op.out, ())
        members = ", ".join(m for m, _ in loop.writes)
        lines = [
            f"# Step loop over {loop.axis!r}: {members} (each step reads earlier steps)",
            f"T, B = {self.name(loop.mask)}.shape[:2]",
        ]
        read = {o.attr[0] for o in loop.ops if o.kind == OpKind.PAST}
        for member, _ in loop.writes:
            width = self.write_width(loop, member)
            lines.append(f"{self.buffer(member)} = {self.new_buffer(width)}")
            if member in read:  # a member's output (attention weights are never read)
                lines.append(f"{self.local(f'zeros_{member}')} = {self.zeros(int(width))}")
        for c in loop.carries:
            lines.append(f"{self.carry(c.name)} = {self.name(c.init)}")
        tape = self.local(f"tape_{op.out}")
        if saved:
            lines.append(f"{tape} = [None] * T")
        lines.append("for t in range(T):")
        lines += self.lines(loop.ops, "    ")
        for member, value in loop.writes:
            lines.append(f"    {self.buffer(member)}[t] = {self.name(value)}")
        if saved:
            lines.append(f"    {tape}[t] = {pack([self.name(s) for s in saved])}")
        for c in loop.carries:
            lines.append(f"    {self.carry(c.name)} = {self.name(c.next)}")
        for member, _ in loop.writes:
            lines += [line[4:] for line in self.xp.buffer_done(self.buffer(member))]
        parts = [self.buffer(m) for m, _ in loop.writes] + [
            self.carry(c.name) for c in loop.carries
        ]
        lines.append(f"{self.name(op.out)} = {pack([*parts, tape if saved else 'None'])}")
        return lines

    # --- the step contract: init, step, finish -------------------------------------

    # Lines that set up what the generated lines read (dtype, ...), at the start of
    # init (from the parameters) and of step and finish (from the carry).
    init_setup = (
        "dtype = np.result_type(*params.values()) if params else np.float64",
        "dropout = None",
        "like = np.zeros(0, dtype=dtype)",
    )
    carry_setup = ("like = carry['like']", "dtype = like.dtype")

    def step_contract(self) -> str:
        """``init``, ``step`` and ``finish`` around the step loop with feedback (see
        rnnc.ir.network.StepContract): what rnnc.runtime.decoding's strategies drive."""
        contract = self.net.step
        if contract is None:
            return ""
        ops = self.net.ops
        at = next(i for i, op in enumerate(ops) if op.out == contract.loop)
        finish = live(ops[at + 1 :])
        body = contract.body
        reads = [a for op in (*body.ops, *finish) for a in op.args]
        reads += [c.init for c in body.carries]
        init = needed(ops[:at], reads)
        self.begin_function()
        made = {op.out for op in init}
        env = [v for v in dict.fromkeys(reads) if v in made and v not in self.inline]
        members = [m for m, _ in body.writes]
        by_out = {op.out: op for op in init}
        step: dict[str, Any] = {"input": contract.input, "prediction": contract.prediction}
        step["tokens"] = contract.tokens
        # where each value the steps read keeps its examples (None: shared by all)
        step["batch_axes"] = {v: batch_axis(by_out[v], self.net.kinds[v]) for v in env}
        # the members whose earlier outputs a step reads (the others' need not be kept)
        step["history"] = sorted({op.attr[0] for op in body.ops if op.kind == OpKind.PAST})
        # what prepare gives step (rows-first), and what it reads of what init made
        ops = needed(body.ops, _wanted(body))
        early, ready = before_feed(ops)
        step["ready"] = list(ready)
        step["prepare_reads"] = [v for v in env if any(v in op.args for op in early)]
        lines = [f"STEP = {step!r}  # what decoding strategies feed and reorder", "", ""]
        lines += [*self._init(contract, init, env), "", ""]
        lines += [*self._step(contract, env, members, ops, early, ready), "", ""]
        lines += self._finish(contract, finish, env, members)
        return "\n".join(lines)

    def _unpack(self, env: list[str], used: set[str]) -> list[str]:
        return [f"    {self.name(v)} = env[{v!r}]" for v in env if v in used]

    def _init(self, contract: StepContract, init: tuple[Op, ...], env: list[str]) -> list[str]:
        carries = ", ".join(f"{c.name!r}: {self.name(c.init)}" for c in contract.body.carries)
        members = ", ".join(f"{m!r}: []" for m, _ in contract.body.writes)
        return [
            "def init(params, inputs, lengths):",
            f'    """Everything before the step loop over {contract.body.axis!r} (what\n'
            "    rnnc.runtime.decoding's strategies start from): inputs batch-first, lengths\n"
            "    (B,) per sequence input. Returns the carry: the step t, what the steps read,\n"
            '    the carried states, each member\'s outputs so far."""',
            *(f"    {line}" for line in self.init_setup),
            *self.lines(init, "    "),
            "    env = {" + ", ".join(f"{v!r}: {self.name(v)}" for v in env) + "}",
            f"    return {{'t': 0, 'like': like, 'env': env, 'carries': {{{carries}}}, 'ys': {{{members}}}}}",
        ]

    def _step(
        self,
        contract: StepContract,
        env: list[str],
        members: list[str],
        ops: tuple[Op, ...],
        early: tuple[Op, ...],
        ready: tuple[str, ...],
    ) -> list[str]:
        """``step``, the step's ``ops``; first ``prepare`` if some of them (``early``,
        making ``ready``: rnnc.ir.network.before_feed) read no fed value."""
        body = contract.body
        fed = "token ids (B,)" if contract.tokens else "vectors (B, width)"
        lines = []
        if early:
            lines += [
                "def prepare(params, carry):",
                '    """What step t does before it reads x_t, from the carry alone: the same for\n'
                "    every row with the same carry, so a strategy may do it once for rows that\n"
                '    share one (step does it when the carry has none)."""',
                *self._step_reads(contract, env, early),
                *self.lines(early, "    "),
                "    ready = {" + ", ".join(f"{v!r}: {self.name(v)}" for v in ready) + "}",
                "    return {**carry, 'ready': ready}",
                "",
                "",
            ]
        rest = tuple(op for op in ops if op not in early)
        lines += [
            "def step(params, carry, x_t):",
            f'    """One step of {", ".join(members)}: x_t, the {fed} fed at this step\n'
            f"    (the ground truth, or what a strategy picked from {contract.prediction!r} at\n"
            '    t - 1). Returns the new carry and each member\'s output at t."""',
        ]
        if early:
            lines += ["    if 'ready' not in carry:", "        carry = prepare(params, carry)"]
        lines += [*self._step_reads(contract, env, rest), "    B = x_t.shape[0]"]
        lines += [f"    {self.name(v)} = carry['ready'][{v!r}]" for v in ready]
        lines += self.lines(rest, "    ")
        outs = ", ".join(f"{m!r}: {self.name(v)}" for m, v in body.writes)
        carries = ", ".join(f"{c.name!r}: {self.name(c.next)}" for c in body.carries)
        history = ", ".join(f"{m!r}: carry['ys'][{m!r}] + [{self.name(v)}]" for m, v in body.writes)
        lines += [
            f"    y_t = {{{outs}}}",
            f"    carry = {{'t': t + 1, 'like': like, 'env': env, 'carries': {{{carries}}}, "
            f"'ys': {{{history}}}}}",
            "    return carry, y_t",
        ]
        return lines

    def _step_reads(self, contract: StepContract, env: list[str], ops: tuple[Op, ...]) -> list[str]:
        """The start of a function of one step: what ``ops`` read from the carry."""
        body = contract.body
        used = {a for op in ops for a in op.args}
        read = {op.attr[0] for op in ops if op.kind == OpKind.PAST}
        lines = [
            *(f"    {line}" for line in self.carry_setup),
            "    t, env = carry['t'], carry['env']",
            *self._unpack(env, used),
        ]
        carried = {op.attr for op in body.ops if op.kind == OpKind.CARRY and op.out in used}
        for c in body.carries:
            if c.name in carried:
                lines.append(f"    {self.carry(c.name)} = carry['carries'][{c.name!r}]")
        for member, _ in body.writes:
            if member in read:
                width = self.analysis.graph.nodes[member]["width"]
                lines.append(f"    {self.buffer(member)} = carry['ys'][{member!r}]")
                lines.append(f"    {self.local(f'zeros_{member}')} = {self.zeros(width)}")
        return lines

    def _finish(
        self, contract: StepContract, finish: tuple[Op, ...], env: list[str], members: list[str]
    ) -> list[str]:
        used = {a for op in finish for a in op.args}
        parts = [f"{self.xp.lib}.stack(carry['ys'][{m!r}])" for m in members]
        parts += [f"carry['carries'][{c.name!r}]" for c in contract.body.carries]
        return [
            "def finish(params, carry):",
            '    """The outputs, from the carry after the last step (batch-first)."""',
            *(f"    {line}" for line in self.carry_setup),
            "    env = carry['env']",
            *self._unpack(env, used),
            "    outputs = {}",
            f"    {self.name(contract.loop)} = {pack([*parts, 'None'])}",
            *self.lines(finish, "    "),
            "    return outputs",
        ]


def _wanted(body: Loop) -> list[str]:
    """What one step must make: each member's output and each carry's next value."""
    return [v for _, v in body.writes] + [c.next for c in body.carries]


Statement = Callable[[ModuleWriter, Op, list[str]], list[str]]
