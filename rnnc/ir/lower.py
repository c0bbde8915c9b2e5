"""Lowering a cell to one time step of straight-line ops, and deriving its reverse.

A backend emits code from this, never from the equations themselves. Lowering
does the optimisations the program makes visible, once, for every backend:

- ``W @ [x, h]`` splits into column blocks, one per part of the concatenation;
- blocks that multiply the cell input ``x`` are *hoisted*: stacked into one matrix
  ``W_x`` and applied to every time step at once, outside the loop;
- blocks that multiply a previous state ``s`` are stacked into one matrix ``R_s``,
  so each step does one matrix product per state instead of one per gate;
- any other product (``W_n @ [x, r * h]``'s ``r * h`` part) stays in the step.

A step is a list of :class:`Op` in SSA form. :func:`reverse` derives the step's
vector-Jacobian product by reverse-mode differentiation of that list: more ops in
the same language, so every backend can emit the backward pass as source too.

Within a step, values are (B, width) arrays; parameter vectors are (H,) and
broadcast over the batch; constants are scalars.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from rnnc.front.equations import Binary, Call, Cell, Concat, Expr, MatMul, Neg, Num, Ref

# Names the lowering makes hold a "$", which no name in a spec can: a cell may call a
# value "_1", "h_prev" or "d_h" without meeting one of them. Backends turn "$" into
# "_" when they write code (backends.emit.Namespace keeps the results apart).


def prev_name(state: str) -> str:
    """The value of a state before the step."""
    return f"{state}$prev"


def grad_name(state: str) -> str:
    """The gradient coming into the step's new value of a state."""
    return f"d${state}"


@dataclass(frozen=True)
class Block:
    """Columns ``start:stop`` of cell parameter matrix ``param``."""

    param: str
    start: int
    stop: int


class OpKind(StrEnum):
    """What an :class:`Op` computes; ``attr`` holds what is not a value."""

    # leaves
    X = "x"  # the cell input at this step
    PREV = "prev"  # a state's value before the step (attr: the state)
    PARAM = "param"  # a vector parameter, (H,) (attr: its name)
    CONST = "const"  # a number (attr: the value)
    XPROJ = "xproj"  # block k of the hoisted input product x @ W_x.T (attr: k)
    RPROJ = "rproj"  # block k of the product of a previous state (attr: (state, k))
    FUSED = "fused"  # xproj(k) + rproj(state, k), added for n blocks at once
    # forward
    BROADCAST = "broadcast"  # a vector repeated for every row of the second argument
    MATMUL = "matmul"  # operand @ block.T (attr: the Block)
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    NEG = "neg"
    CALL = "call"  # a function of the cell language (attr: its name; rnnc.front.functions)
    CONCAT = "concat"  # side by side (attr: the widths)
    # reverse
    MATMUL_T = "matmul_t"  # gradient @ block (attr: the Block)
    DCALL = "dcall"  # the function's slope from its value (args: value, argument)
    SLICE = "slice"  # columns offset:offset + width (attr: (offset, width))
    SUM_BATCH = "sum_batch"  # summed over the batch: the gradient of a broadcast vector
    # the network around the cells (rnnc.ir.network): arrays (T, B, width) or (B, width)
    INPUT = "input"  # a real input as given, batch-first (attr: its name)
    IDS = "ids"  # token ids as given (attr: the input's name)
    STEP_MASK = "step_mask"  # (T, B, 1): step t is within the example's length (attr: axis)
    VALID = "valid"  # (B, T) booleans of a step mask: the memory steps attention may weigh
    TRUTH = "truth"  # (T, B) booleans: where feedback reads the ground truth (attr: axis)
    ZEROS = "zeros"  # (B, attr) zeros, B from the first argument's second axis
    DROPMASK = "dropmask"  # inverted dropout: (T, B, width) of 0 or 1 / (1 - p) (attr: p, width)
    PACK = "pack"  # a cell's parameters stacked for its generated functions (attr: a Scan)
    OUTPUT = "output"  # an output of the model (attr: its name); the reverse starts here
    COTANGENT = "cotangent"  # the gradient given for an output (attr: its name)
    TRANSPOSE = "transpose"  # the first two axes swapped (batch-first <-> time-major)
    LOOKUP = "lookup"  # rows of a table (args: table, ids)
    SCATTER = "scatter"  # reverse of lookup: rows added into zeros like the table
    LINEAR = "linear"  # x @ W.T
    LINEAR_X = "linear_x"  # d @ W: the gradient of x
    LINEAR_W = "linear_w"  # the gradient of W, summed over every row of d and x
    SUM_ROWS = "sum_rows"  # summed over all axes but the last: the gradient of a bias
    SOFTMAX = "softmax"  # over the last axis
    LOG_SOFTMAX = "log_softmax"
    ROWSUM = "rowsum"  # summed over the last axis, kept as an axis of 1
    BROADCAST_T = "broadcast_t"  # (B, w) repeated along the first axis of the second arg
    SUM0 = "sum0"  # summed over the first axis (over time)
    MAX0 = "max0"  # the maximum over the first axis (over time)
    AT_MAX = "at_max"  # reverse of max0 (args: d, x, max): d shared by the steps at the max
    MEAN_WEIGHTS = "mean_weights"  # (T, B, 1): 1 / length within each example's length, else 0
    SHIFT = "shift"  # along time: step t reads step t - attr, zeros before
    UNSHIFT = "unshift"
    EINSUM = "einsum"  # a product of two arrays spelled as numpy.einsum (attr: the spec)
    FILL = "fill"  # where the second argument is false, attr instead
    SELECT = "select"  # where(cond, a, b) (attr: whether cond is per row of a matrix)
    ARGMAX = "argmax"  # over the last axis; no gradient
    LAST = "last"  # each example's last valid step (attr: the axis)
    AT_LAST = "at_last"  # reverse of last: zeros like the second argument, d at the last step
    ITEM = "item"  # a part of a tuple value (attr: its path of indices)
    ZEROS_LIKE = "zeros_like"
    SCAN = "scan"  # a generated cell scan: (ys, final states, tape) (attr: a Scan)
    SCAN_BACK = "scan_back"  # its reverse: (d_xs, d_first states); adds parameter gradients
    LOOP = "loop"  # layers run step by step together (attr: the Loop body)
    LOOP_BACK = "loop_back"  # its reverse, the reverse of the body run back over time
    # inside a step loop, at step t
    AT = "at"  # an outer (T, ...) array at step t - attr, zeros before
    PAST = "past"  # a member's own output at step t - delay (attr: (member, delay))
    CARRY = "carry"  # a carried value before the step (attr: the carry's name)
    FIRST_OR = "first_or"  # truth[t] | (t == 0): step 0 always reads the ground truth
    FEED = "feed"  # in a step function: what the decoding strategy feeds at t (x_t)
    CELL_STEP = "cell_step"  # one generated cell step: (new states, y, tape) (attr: a Scan)
    CELL_STEP_BACK = "cell_step_back"  # its reverse: (d_x, d_states before)


# The kinds a cell step and its reverse are written in (rnnc.ir.network uses the others,
# and the elementwise ones among these).
CELL_KINDS = frozenset(list(OpKind)[: list(OpKind).index(OpKind.SUM_BATCH) + 1])


@dataclass(frozen=True)
class Op:
    """``out = kind(*args)``; ``attr`` holds what is not a value (a function, a block)."""

    out: str
    kind: OpKind
    args: tuple[str, ...] = ()
    attr: Any = None


@dataclass(frozen=True)
class CellStep:
    """One step of a cell for given input and hidden sizes, split and stacked."""

    cell: Cell
    input_size: int
    hidden: int
    x_blocks: tuple[Block, ...]  # hoisted: XP = x @ W_x.T, W_x = rows of these blocks
    r_blocks: dict[str, tuple[Block, ...]]  # per previous state: RP_s = s @ R_s.T
    ops: tuple[Op, ...]
    states: dict[str, str]  # state -> SSA var of its new value
    output: str  # SSA var of the output state's new value
    kinds: dict[str, str] = field(default_factory=dict)  # SSA var -> "batch" | "vector" | "scalar"
    # The bias vector folded into each hoisted block (added once, for all steps).
    x_bias: tuple[str | None, ...] = ()
    # (state s, n): blocks 0..n-1 of x and of s pair up, so the step adds them in one go.
    fused: tuple[str, int] | None = None
    # (function, first block, count): fused blocks side by side that each go through
    # the same activation alone (i, f, o of an LSTM): one call can do them all.
    groups: tuple[tuple[str, int, int], ...] = ()

    @property
    def uses_x(self) -> bool:
        return any(op.kind == OpKind.X for op in self.ops)


def _width(expr: Expr, cell_widths: dict[str, int], X: int, H: int) -> int:
    if isinstance(expr, Ref):
        if expr.kind == "input":
            return X
        if expr.kind == "local":
            return cell_widths[expr.name]
        return H
    if isinstance(expr, Concat):
        return sum(_width(p, cell_widths, X, H) for p in expr.parts)
    if isinstance(expr, (Call, Neg)):
        inner = expr.arg if isinstance(expr, Call) else expr.operand
        return _width(inner, cell_widths, X, H)
    if isinstance(expr, Binary):
        for side in (expr.left, expr.right):
            if not isinstance(side, Num):
                return _width(side, cell_widths, X, H)
    return H  # MatMul, and numbers (never asked)


class _Builder:
    def __init__(self, cell: Cell, X: int, H: int):
        self.cell, self.X, self.H = cell, X, H
        self.ops: list[Op] = []
        self.kinds: dict[str, str] = {}
        self.names: dict[str, str] = {}  # equation target -> SSA var
        self.widths: dict[str, int] = {}
        self.x_blocks: list[Block] = []
        self.r_blocks: dict[str, list[Block]] = {}
        self.counter = 0
        self.leaves: dict[tuple[Any, ...], str] = {}

    def emit(
        self, kind: OpKind, args: tuple[str, ...] = (), attr: Any = None, out: str | None = None
    ) -> str:
        if out is None:
            self.counter += 1
            out = f"${self.counter}"
        self.ops.append(Op(out, kind, args, attr))
        arg_kinds = [self.kinds[a] for a in args]
        if kind in (
            OpKind.X,
            OpKind.PREV,
            OpKind.XPROJ,
            OpKind.RPROJ,
            OpKind.FUSED,
            OpKind.BROADCAST,
        ):
            self.kinds[out] = "batch"
        elif kind == OpKind.PARAM:
            self.kinds[out] = "vector"
        elif kind == OpKind.CONST:
            self.kinds[out] = "scalar"
        else:
            order = ("scalar", "vector", "batch")
            self.kinds[out] = max(arg_kinds, key=order.index)
        return out

    def leaf(self, key: tuple[Any, ...], kind: OpKind, attr: Any = None) -> str:
        """One op per distinct leaf (x, a previous state, a parameter, a constant)."""
        if key not in self.leaves:
            names = {OpKind.X: "x", OpKind.PREV: prev_name(attr)}
            self.leaves[key] = self.emit(kind, (), attr, out=names.get(kind))
        return self.leaves[key]

    def expr(self, e: Expr) -> str:
        if isinstance(e, Num):
            return self.leaf((OpKind.CONST, e.value), OpKind.CONST, e.value)
        if isinstance(e, Ref):
            if e.kind == "input":
                return self.leaf((OpKind.X,), OpKind.X)
            if e.kind == "previous":
                return self.leaf((OpKind.PREV, e.name), OpKind.PREV, e.name)
            if e.kind == OpKind.PARAM:
                return self.leaf((OpKind.PARAM, e.name), OpKind.PARAM, e.name)
            return self.names[e.name]
        if isinstance(e, Call):
            return self.emit(OpKind.CALL, (self.expr(e.arg),), e.function)
        if isinstance(e, Neg):
            return self.emit(OpKind.NEG, (self.expr(e.operand),))
        if isinstance(e, Binary):
            left, right = self.expr(e.left), self.expr(e.right)
            arithmetic = {"+": OpKind.ADD, "-": OpKind.SUB, "*": OpKind.MUL}
            return self.emit(arithmetic[e.op], (left, right))
        if isinstance(e, Concat):
            parts = [self.expr(p) for p in e.parts]
            widths = tuple(_width(p, self.widths, self.X, self.H) for p in e.parts)
            return self.emit(OpKind.CONCAT, tuple(parts), widths)
        assert isinstance(e, MatMul)
        return self.matmul(e)

    def matmul(self, e: MatMul) -> str:
        parts = e.operand.parts if isinstance(e.operand, Concat) else (e.operand,)
        terms = []
        start = 0
        for part in parts:
            stop = start + _width(part, self.widths, self.X, self.H)
            block = Block(e.param, start, stop)
            if isinstance(part, Ref) and part.kind == "input":
                self.x_blocks.append(block)
                terms.append(self.emit(OpKind.XPROJ, (), len(self.x_blocks) - 1))
            elif isinstance(part, Ref) and part.kind == "previous":
                blocks = self.r_blocks.setdefault(part.name, [])
                blocks.append(block)
                terms.append(self.emit(OpKind.RPROJ, (), (part.name, len(blocks) - 1)))
            else:
                terms.append(self.emit(OpKind.MATMUL, (self.expr(part),), block))
            start = stop
        total = terms[0]
        for term in terms[1:]:
            total = self.emit(OpKind.ADD, (total, term))
        return total


def lower_cell(cell: Cell, input_size: int, hidden: int) -> CellStep:
    """The ops of one step of ``cell`` for these sizes (see the module docstring)."""
    b = _Builder(cell, input_size, hidden)
    for eq in cell.equations:
        var = b.expr(eq.expr)
        if eq.target in cell.state and b.kinds[var] != "batch":
            # A state computed from parameters alone is still one row per example.
            var = b.emit(
                OpKind.BROADCAST, (var, b.leaf((OpKind.PREV, eq.target), OpKind.PREV, eq.target))
            )
        elif var in b.leaves.values() or var in b.names.values():
            var = b.emit(
                OpKind.ADD, (var, b.leaf((OpKind.CONST, 0.0), OpKind.CONST, 0.0))
            )  # a fresh name
        b.ops[-1] = Op(eq.target, b.ops[-1].kind, b.ops[-1].args, b.ops[-1].attr)
        b.kinds[eq.target] = b.kinds.pop(var)
        b.names[eq.target] = eq.target
        b.widths[eq.target] = eq.width.size(input_size, hidden)
    states = {s: b.names[s] for s in cell.state}
    step = CellStep(
        cell,
        input_size,
        hidden,
        tuple(b.x_blocks),
        {s: tuple(blocks) for s, blocks in b.r_blocks.items()},
        tuple(b.ops),
        states,
        states[cell.output],
        b.kinds,
        (None,) * len(b.x_blocks),
    )
    return _readable_names(_group_activations(_fold_biases(_fuse_pairs(step))))


def _readable_names(step: CellStep) -> CellStep:
    """Name the values the lowering made after what they are, as torch.fx names a node
    after its op: the argument of the function an equation applies is ``pre$t`` (the
    pre-activation of gate t), a function of a named value ``tanh$c``. Backends write
    these (``pre_o``, ``tanh_c``), and the reverse names gradients after them
    (``d_pre_o``). Values with no such name keep their number."""
    targets = {eq.target for eq in step.cell.equations}
    uses = uses_of(step.ops)
    taken = {op.out for op in step.ops}
    renamed: dict[str, str] = {}

    def rename(var: str, name: str) -> None:
        if var.startswith("$") and var not in renamed and name not in taken and uses.get(var, 0):
            renamed[var] = name
            taken.add(name)

    for op in step.ops:
        if op.kind == OpKind.PARAM:  # a parameter's own name (never a value's)
            rename(op.out, op.attr)
    for op in step.ops:
        if op.kind == OpKind.CALL and op.out in targets and uses.get(op.args[0]) == 1:
            rename(op.args[0], f"pre${op.out}")
    for op in step.ops:
        arg = renamed.get(op.args[0], op.args[0]) if op.args else ""
        if op.kind == OpKind.CALL and not arg.startswith("$"):
            rename(op.out, f"{op.attr}${arg}")
    if not renamed:
        return step
    ops = tuple(
        Op(renamed.get(op.out, op.out), op.kind, tuple(renamed.get(a, a) for a in op.args), op.attr)
        for op in step.ops
    )
    kinds = {renamed.get(v, v): k for v, k in step.kinds.items()}
    return replace(step, ops=ops, kinds=kinds)


def uses_of(ops: tuple[Op, ...] | list[Op]) -> dict[str, int]:
    """How many times each var is an argument of an op."""
    counts: dict[str, int] = {}
    for op in ops:
        for arg in op.args:
            counts[arg] = counts.get(arg, 0) + 1
    return counts


def _fuse_pairs(step: CellStep) -> CellStep:
    """Where ``W @ [x, s]`` made block k of x and block k of s for k = 0..n-1, add the
    two projections once per step as one (B, n H) array instead of gate by gate."""
    kinds = {op.out: op for op in step.ops}
    pairs: dict[str, set[int]] = {}
    for op in step.ops:
        if op.kind == OpKind.ADD and len(op.args) == 2:
            a, b = (kinds[x] for x in op.args)
            if a.kind == OpKind.XPROJ and b.kind == OpKind.RPROJ and a.attr == b.attr[1]:
                pairs.setdefault(b.attr[0], set()).add(a.attr)
    best, n = None, 0
    for state, ks in pairs.items():
        count = 0
        while count in ks:
            count += 1
        if count > n:
            best, n = state, count
    if best is None or n < 2:
        return step
    ops = []
    for op in step.ops:
        if op.kind == OpKind.ADD and len(op.args) == 2:
            a, b = (kinds[x] for x in op.args)
            if (
                a.kind == OpKind.XPROJ
                and b.kind == OpKind.RPROJ
                and b.attr == (best, a.attr)
                and a.attr < n
            ):
                ops.append(Op(op.out, OpKind.FUSED, (), (best, a.attr)))
                continue
        ops.append(op)
    return replace(step, ops=tuple(ops), fused=(best, n))


def _fold_biases(step: CellStep) -> CellStep:
    """Fold a bias vector added to a hoisted projection into the hoisted product, so it
    is added once for all steps instead of at every step.

    A sum of terms (a chain of ``add``) that holds a hoisted block k (``xproj`` or
    ``fused``) and a vector parameter used nowhere else loses the parameter; block k's
    bias becomes that parameter.
    """
    ops = list(step.ops)
    by_out = {op.out: op for op in ops}
    uses = uses_of(ops)
    bias = list(step.x_bias)
    param_uses: dict[str, int] = {}
    for op in ops:
        if op.kind == OpKind.PARAM:
            param_uses[op.attr] = param_uses.get(op.attr, 0) + uses.get(op.out, 0)

    targets = {eq.target for eq in step.cell.equations}

    def inner(arg: str) -> bool:
        """Whether an add's argument is part of the same sum: an add used only there,
        and not a value the equations name (h in s = h + b must keep its own value)."""
        return by_out[arg].kind == OpKind.ADD and uses.get(arg, 0) == 1 and arg not in targets

    def terms(var: str) -> list[str]:
        op = by_out[var]
        if op.kind == OpKind.ADD:
            found = []
            for arg in op.args:
                found += terms(arg) if inner(arg) else [arg]
            return found
        return [var]

    consumed_by_add = {a for op in ops if op.kind == OpKind.ADD for a in op.args if inner(a)}
    roots = [op for op in ops if op.kind == OpKind.ADD and op.out not in consumed_by_add]
    replaced: dict[str, list[Op]] = {}
    dropped: set[str] = set()
    for root in roots:
        found = terms(root.out)
        hoisted = [t for t in found if by_out[t].kind in (OpKind.XPROJ, OpKind.FUSED)]
        vectors = [
            t
            for t in found
            if by_out[t].kind == OpKind.PARAM and param_uses.get(by_out[t].attr) == 1
        ]
        if not hoisted or not vectors:
            continue
        block = by_out[hoisted[0]].attr
        k = block if isinstance(block, int) else block[1]
        if bias[k] is not None:
            continue
        bias[k] = by_out[vectors[0]].attr
        keep = [t for t in found if t != vectors[0]]
        # The old chain's inner adds go; the root is rebuilt from the remaining terms.
        stack = [root.out]
        while stack:
            var = stack.pop()
            for arg in by_out[var].args:
                if inner(arg):
                    dropped.add(arg)
                    stack.append(arg)
        if len(keep) == 1:
            dropped.add(keep[0])
        replaced[root.out] = _sum_of(root.out, keep, by_out, f"$f{len(replaced)}_")
    if not replaced:
        return step
    out_ops: list[Op] = []
    for op in ops:
        if op.out in replaced:
            out_ops += replaced[op.out]
        elif op.out not in dropped:
            out_ops.append(op)
    live = uses_of(out_ops)
    kept = [op for op in out_ops if op.kind != OpKind.PARAM or live.get(op.out, 0) > 0]
    kinds = dict(step.kinds)
    for op in kept:
        if op.out.startswith("$f"):
            kinds[op.out] = "batch"
    return replace(step, ops=tuple(kept), x_bias=tuple(bias), kinds=kinds)


def _sum_of(out: str, terms: list[str], by_out: dict[str, Op], prefix: str) -> list[Op]:
    """Ops giving ``out`` the sum of ``terms`` (one term: that term's own op, renamed);
    the partial sums are named ``prefix`` + a number."""
    if len(terms) == 1:
        only = by_out[terms[0]]
        return [Op(out, only.kind, only.args, only.attr)]
    ops = []
    acc = terms[0]
    for n, term in enumerate(terms[1:-1], 1):
        ops.append(Op(f"{prefix}{n}", OpKind.ADD, (acc, term)))
        acc = f"{prefix}{n}"
    return [*ops, Op(out, OpKind.ADD, (acc, terms[-1]))]


def _group_activations(step: CellStep) -> CellStep:
    """Put the fused gate blocks in an order where gates with the same activation sit
    side by side (an LSTM's i, f, g, o become i, f, o, g) and record each run, so a
    backend applies one activation to a run in one call instead of one per gate.
    Only the stacking order of W_x and R_s changes; parameters keep their names."""
    if step.fused is None:
        return step
    state, n = step.fused
    uses = uses_of(step.ops)
    by_out = {op.out: op for op in step.ops}
    activation: dict[int, str] = {}  # fused block -> the function it alone goes through
    for op in step.ops:
        if op.kind == OpKind.CALL:
            arg = by_out[op.args[0]]
            if arg.kind == OpKind.FUSED and uses[arg.out] == 1:
                activation[arg.attr[1]] = op.attr
    functions = list(dict.fromkeys(activation[k] for k in range(n) if k in activation))
    if all(list(activation.values()).count(fn) < 2 for fn in functions):
        return step  # no two gates to do in one call: keep the order the equations have
    rank = {
        k: functions.index(activation[k]) if k in activation else len(functions) for k in range(n)
    }
    order = sorted(range(n), key=lambda k: (rank[k], k))
    moved = {old: new for new, old in enumerate(order)}

    def renumber(op: Op) -> Op:
        if op.kind == OpKind.XPROJ and op.attr < n:
            return replace(op, attr=moved[op.attr])
        if op.kind in (OpKind.RPROJ, OpKind.FUSED) and op.attr[0] == state and op.attr[1] < n:
            return replace(op, attr=(state, moved[op.attr[1]]))
        return op

    def permute(items: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(items[k] for k in order) + items[n:]

    groups = []
    k = 0
    while k < n:
        fn = activation.get(order[k])
        run = 1
        while fn is not None and k + run < n and activation.get(order[k + run]) == fn:
            run += 1
        if fn is not None and run > 1:
            groups.append((fn, k, run))
        k += run
    r_blocks = dict(step.r_blocks)
    r_blocks[state] = permute(step.r_blocks[state])
    return replace(
        step,
        x_blocks=permute(step.x_blocks),
        r_blocks=r_blocks,
        x_bias=permute(step.x_bias),
        ops=tuple(renumber(op) for op in step.ops),
        groups=tuple(groups),
    )


# --- reverse mode ----------------------------------------------------------------------


@dataclass(frozen=True)
class Adjoint:
    """The reverse of a step: ops computing the gradients of every input of the step.

    Inputs of the reverse are the forward vars it reads and ``d_<state>`` for every
    new state. It produces ``d_<s>_prev`` for previous states, ``d_xp`` pieces (per
    hoisted block), ``d_rp`` pieces (per stacked block), ``d_x``, and for parameters:
    ``d_<vector param>`` (summed over the batch) and per local ``matmul`` block the
    pair (gradient of the block's output, the operand) for the caller to multiply.
    """

    ops: tuple[Op, ...]
    grads: dict[str, str]  # what -> SSA var: "prev:h", "x", "param:b_i", "xproj:3", "rproj:h:0"
    block_grads: tuple[tuple[Block, str, str], ...]  # (block, d_out var, operand var)
    origins: tuple[str, ...] = ()  # per op: the forward var whose reverse emitted it


# Kinds of value no gradient reaches (a value's kind: rnnc.ir.lower and rnnc.ir.network).
NO_GRADIENT = frozenset({"scalar", "int", "int_seq", "mask", "zeros", "packed", "tape"})


class _Reverse:
    """The state of one reverse pass: the ops written so far, and the gradient terms
    collected for each forward var until its own rule runs (for a tuple value, per
    part)."""

    def __init__(self, kinds: dict[str, str], inputs: set[str], prefix: str = "$d"):
        self.kinds = kinds
        self.ops: list[Op] = []
        self.origins: list[str] = []
        self.terms: dict[str, list[str]] = {}
        self.parts: dict[str, dict[tuple[int, ...], list[str]]] = {}  # tuple var -> path -> terms
        self.grads: dict[str, str] = {}
        self.block_grads: list[tuple[Block, str, str]] = []
        self.current = ""  # the forward var being differentiated
        # what each written value is, for its name: (rank, name); rank 0 first
        self.hints: dict[str, tuple[int, str]] = {}
        self.inputs = inputs
        self.prefix = prefix
        self.context: Any = None  # what rules of the caller's ops need (rnnc.ir.network)

    def emit(self, kind: OpKind, args: tuple[str, ...], attr: Any = None, value: str = "") -> str:
        out = f"{self.prefix}{len(self.ops) + 1}"
        self.ops.append(Op(out, kind, args, attr))
        self.origins.append(self.current)
        if value:
            self.kinds[out] = value
        return out

    def add_part(self, var: str, path: tuple[int, ...], grad: str) -> None:
        """A gradient term for part ``path`` of tuple value ``var``."""
        self.parts.setdefault(var, {}).setdefault(path, []).append(grad)

    def part_total(self, var: str, path: tuple[int, ...]) -> str | None:
        terms = self.parts.get(var, {}).get(path)
        if not terms:
            return None
        acc = terms[0]
        for term in terms[1:]:
            acc = self.emit(OpKind.ADD, (acc, term))
        return acc

    def add_term(self, var: str, grad: str) -> None:
        self.terms.setdefault(var, []).append(grad)
        self.hint(grad, 1, f"d${var}")

    def hint(self, value: str, rank: int, name: str) -> None:
        if value not in self.inputs and value not in self.hints:
            self.hints[value] = (rank, name)

    def total(self, var: str) -> str | None:
        """The sum of the terms collected for ``var`` (None: it gets no gradient)."""
        parts = self.terms.get(var)
        if not parts:
            return None
        acc = parts[0]
        for part in parts[1:]:
            acc = self.emit(OpKind.ADD, (acc, part))
        if len(parts) > 1:
            self.hint(acc, 0, f"d${var}")
        return acc

    def names(self) -> dict[str, str]:
        """A name for every value written: ``d$v`` for the gradient of forward value v
        (the whole of it first, then its terms ``d$v$2`` ...), else its number."""
        taken = set(self.inputs)
        names: dict[str, str] = {}
        for value, (_, base) in sorted(self.hints.items(), key=lambda item: item[1][0]):
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base}$total" if n == 2 and base in self.inputs else f"{base}${n}"
            taken.add(name)
            names[value] = name
        return names

    def pass_to(self, arg: str, out: str, grad: Callable[[], str]) -> None:
        """Give operand ``arg`` of ``out`` the gradient ``grad()`` (written only if
        ``arg`` takes one: not a constant), summed over the batch where ``arg`` is a
        vector that ``out`` broadcast."""
        if self.kinds[arg] in NO_GRADIENT:
            return
        value = grad()
        if self.kinds[arg] == "vector" and self.kinds[out] == "batch":
            value = self.emit(OpKind.SUM_BATCH, (value,))
        elif self.kinds[arg] == "vector" and self.kinds[out] == "seq":
            value = self.emit(OpKind.SUM_ROWS, (value,))
        self.add_term(arg, value)


Rule = Callable[[_Reverse, Op, str], None]


def _reverse_matmul(r: _Reverse, op: Op, grad: str) -> None:
    r.block_grads.append((op.attr, grad, op.args[0]))
    r.add_term(op.args[0], r.emit(OpKind.MATMUL_T, (grad,), op.attr))


def _reverse_add(r: _Reverse, op: Op, grad: str) -> None:
    for arg in op.args:
        r.pass_to(arg, op.out, lambda: grad)


def _reverse_sub(r: _Reverse, op: Op, grad: str) -> None:
    left, right = op.args
    r.pass_to(left, op.out, lambda: grad)
    r.pass_to(right, op.out, lambda: r.emit(OpKind.NEG, (grad,)))


def _reverse_mul(r: _Reverse, op: Op, grad: str) -> None:
    left, right = op.args
    r.pass_to(left, op.out, lambda: r.emit(OpKind.MUL, (grad, right)))
    r.pass_to(right, op.out, lambda: r.emit(OpKind.MUL, (grad, left)))


def _reverse_call(r: _Reverse, op: Op, grad: str) -> None:
    (arg,) = op.args
    slope = r.emit(OpKind.DCALL, (op.out, arg), op.attr)  # rnnc.front.functions: f' from f
    r.hint(slope, 2, f"slope${op.out}")
    r.add_term(arg, r.emit(OpKind.MUL, (grad, slope)))


def _reverse_concat(r: _Reverse, op: Op, grad: str) -> None:
    offset = 0
    for arg, width in zip(op.args, op.attr, strict=True):
        r.add_term(arg, r.emit(OpKind.SLICE, (grad,), (offset, width)))
        offset += width


def _result(key: Callable[[Op], list[str]]) -> Rule:
    """A leaf's rule: its gradient is a result of the reverse, under ``key(op)``."""

    def rule(r: _Reverse, op: Op, grad: str) -> None:
        for name in key(op):
            r.grads[name] = grad

    return rule


# The reverse rule of every forward kind (as a JAX primitive's transpose rule): given
# the op and the gradient of its value, pass gradients to its arguments.
REVERSE_RULES: dict[OpKind, Rule] = {
    OpKind.X: _result(lambda op: ["x"]),
    OpKind.PREV: _result(lambda op: [f"prev:{op.attr}"]),
    OpKind.PARAM: _result(lambda op: [f"param:{op.attr}"]),  # the caller sums the batch
    OpKind.XPROJ: _result(lambda op: [f"xproj:{op.attr}"]),
    OpKind.RPROJ: _result(lambda op: [f"rproj:{op.attr[0]}:{op.attr[1]}"]),
    OpKind.FUSED: _result(lambda op: [f"xproj:{op.attr[1]}", f"rproj:{op.attr[0]}:{op.attr[1]}"]),
    OpKind.MATMUL: _reverse_matmul,
    OpKind.ADD: _reverse_add,
    OpKind.SUB: _reverse_sub,
    OpKind.BROADCAST: lambda r, op, grad: r.pass_to(op.args[0], op.out, lambda: grad),
    OpKind.NEG: lambda r, op, grad: r.add_term(op.args[0], r.emit(OpKind.NEG, (grad,))),
    OpKind.MUL: _reverse_mul,
    OpKind.CALL: _reverse_call,
    OpKind.CONCAT: _reverse_concat,
}


def reverse(step: CellStep) -> Adjoint:
    """Reverse-mode differentiation of a step, as ops (see :class:`Adjoint`): the ops
    in reverse order, each passing its gradient on by its rule in REVERSE_RULES."""
    r = _Reverse(step.kinds, {grad_name(s) for s in step.states} | {op.out for op in step.ops})
    for state, var in step.states.items():
        r.add_term(var, grad_name(state))
    for op in reversed(step.ops):
        if op.kind == OpKind.CONST:
            continue
        r.current = op.out
        grad = r.total(op.out)
        if grad is not None:
            REVERSE_RULES[op.kind](r, op, grad)
    names = r.names()

    def name(var: str) -> str:
        return names.get(var, var)

    ops = tuple(Op(name(o.out), o.kind, tuple(map(name, o.args)), o.attr) for o in r.ops)
    grads = {key: name(var) for key, var in r.grads.items()}
    blocks = tuple((block, name(d), operand) for block, d, operand in r.block_grads)
    return Adjoint(ops, grads, blocks, tuple(r.origins))
