"""Native kernels: the steps of a cell, everything but their matrix products, as C.

A generated scan in Python pays the interpreter and the array library for every
operation of every step: an LSTM with peepholes is some 15 array calls forward and
30 backward per step, each costing microseconds however small the batch. Here the
elementwise part of a step (the gate activations, the state updates, what the
reverse needs) becomes one C function over the (batch, unit) grid, and its reverse
another; the matrix products stay with the array library, whose BLAS is hard to
beat. A step of the scan is then its recurrent product and one C call.

A product inside the step (GRU's ``W_n @ [x, r * h]``) cuts it into stages: C makes
the operand ``r * h``, the array library multiplies, the next C stage goes on from the
product; the reverse runs the stages the other way round. What a stage hands to a
later one, and what the reverse reads, is kept per step in one buffer.

A step fits when every op but its products is elementwise over width H: the cell
reads its input only through its hoisted projection, and its vector parameters'
gradients are plain sums over the batch. :func:`plan` says whether a step fits and
how it is cut; :func:`emit_c` writes the source. The source holds no text from the
spec: every value is named by its position (``v3``, ``g7``, ``p0``), constants are
written by ``repr`` of a float, and the functions come from an allow-list
(:data:`rnnc.front.equations.FUNCTIONS`).

Each C function comes in float32 and float64 and takes the batch size, the step, the
slots of the previous and the new state, this step's products (or, in the reverse,
the gradients coming back through them), this step's kept values, and one table of
base pointers (all laid out as :class:`NativePlan` says). The
module is compiled at run time by the machine's C compiler (``native_library`` in
the generated module) with ``#pragma omp simd`` loops, so ``exp`` and ``tanh`` run as
glibc's vector functions; without a compiler the Python scan runs instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rnnc.front.functions import FUNCTIONS, c_renderer
from rnnc.ir.lower import Adjoint, Block, CellStep, Op, OpKind, grad_name, reverse

from .emit import TORCH, _shared_projection, gradient_products, pack

FORWARD_KINDS = {
    OpKind.PREV, OpKind.PARAM, OpKind.CONST, OpKind.XPROJ, OpKind.RPROJ, OpKind.FUSED,
    OpKind.BROADCAST, OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.NEG, OpKind.CALL,
    OpKind.MATMUL,
}  # fmt: skip
REVERSE_KINDS = {
    OpKind.ADD,
    OpKind.NEG,
    OpKind.MUL,
    OpKind.DCALL,
    OpKind.SUM_BATCH,
    OpKind.MATMUL_T,
}
LEAVES = ("prev", "param", "const", "xproj", "rproj", "fused")  # read anew where used


@dataclass(frozen=True)
class Product:
    """A product inside the step, ``out = operand @ W[:, start:stop].T``: the C step is
    cut there, the array library multiplies, and stage ``stage`` reads ``out``."""

    out: str
    operand: str
    block: Block
    stage: int


@dataclass(frozen=True)
class NativePlan:
    """How a step runs as C: stages cut at the products inside it, and what each
    keeps per step.

    Forward table: xp (if the step has hoisted blocks); the state buffers of every
    state ((T + 1, B, H), or two slots in turn when no gradient is wanted); ys, the
    outputs (T, B, H); the vector parameters; the step mask (T, B) bytes or NULL.
    Reverse table: d_ys (T, B, H); the carried state gradients (B, H) of every state;
    the state buffers; the vector parameters; the projection gradients (d_xp
    (T, B, nx H) unless shared, then d_rp (T, B, n_s H) of every recurrent state);
    the parameter gradients DP (len(grad_params), H); the step mask. Besides the
    table, a forward stage gets this step's recurrent products and the products just
    made for it; a reverse stage gets the gradients of the recurrent products from
    the step after (rec) and of its products' operands (dop); both get this step's
    ``stored`` values (len(stored), B, H), the reverse also its ``dstored`` ones.
    """

    states: tuple[str, ...]
    recurrent: tuple[str, ...]  # states with a product per step (R_s), in r_blocks order
    params: tuple[str, ...]  # vector parameters, in table order
    grad_params: tuple[str, ...]  # vector parameters with a gradient, in DP order
    shared: str | None  # the state whose d_rp is d_xp (as in an LSTM)
    hidden: int
    x_width: int  # columns of xp: hoisted blocks x H (0: none)
    r_widths: tuple[int, ...]  # columns of each recurrent state's product
    stages: int  # 1 + the products in a row inside the step
    stage: dict[str, int]  # forward var -> its stage; adjoint var -> its reverse stage
    products: tuple[Product, ...]
    # Forward values kept per step: what the reverse reads (but new states, which it
    # reads from the state buffers, and leaves), what a later stage reads, operands.
    stored: tuple[str, ...]
    # Gradients kept per step: each product's output gradient (for the parameter
    # gradient after the loop) and what a later reverse stage reads.
    dstored: tuple[str, ...]
    d_out: dict[str, str]  # product output -> the gradient its reverse multiplies
    adjoint: Adjoint  # the step's reverse (rnnc.ir.lower.reverse)
    kinds: dict[str, str]  # forward and adjoint var -> "batch" | "vector" | "scalar"

    def products_of(self, stage: int) -> tuple[Product, ...]:
        return tuple(p for p in self.products if p.stage == stage)


def _kinds_of_reverse(step: CellStep, adjoint: Adjoint) -> dict[str, str]:
    kinds = dict(step.kinds)
    for s in step.cell.state:
        kinds[grad_name(s)] = "batch"
    order = ("scalar", "vector", "batch")
    for op in adjoint.ops:
        if op.kind == OpKind.SUM_BATCH:
            kinds[op.out] = "vector"
        else:
            kinds[op.out] = max((kinds[a] for a in op.args), key=order.index)
    return kinds


def _reads(op: Op) -> tuple[str, ...]:
    """The values an op's C reads: a slope reads f(a) alone, a broadcast its vector."""
    return op.args[:1] if op.kind in (OpKind.DCALL, OpKind.BROADCAST) else op.args


def _sums(var: str, by_out: dict[str, Op], kinds: dict[str, str]) -> list[Op] | None:
    """The sum_batch ops over batch values whose results add up to the vector ``var``
    (None: it is something else, a vector times a vector say)."""
    op = by_out.get(var)
    if op is None:
        return None
    if op.kind == OpKind.SUM_BATCH:
        return [op] if kinds[op.args[0]] == "batch" else None
    if op.kind != OpKind.ADD:
        return None
    found: list[Op] = []
    for arg in op.args:
        more = _sums(arg, by_out, kinds)
        if more is None:
            return None
        found += more
    return found


def _results(adjoint: Adjoint) -> set[str]:
    """The gradients the reverse writes out per step: of previous states and of the
    projections (a vector parameter's is summed into DP where its terms are)."""
    return {var for key, var in adjoint.grads.items() if not key.startswith("param:")}


def _recomputed(op: Op, kinds: dict[str, str], backward: bool = False) -> bool:
    """Leaves and values of parameters alone: read or computed again where used. The
    reverse gets neither the projections nor the recurrent products, so a value it
    reads from those is kept instead."""
    leaves = ("prev", "param", "const") if backward else LEAVES
    return op.kind in leaves or kinds[op.out] != "batch"


def _admitted(step: CellStep) -> tuple[Adjoint, dict[str, str], list[str]] | None:
    """A step's reverse, the kinds of its values, and the vector parameters whose
    gradients are sums over the batch, if every op of the step and its reverse fits
    the C steps (else None)."""
    H = step.hidden
    if step.uses_x:
        return None
    for op in step.ops:
        if op.kind not in FORWARD_KINDS or (op.kind == OpKind.CALL and op.attr not in FUNCTIONS):
            return None
        if op.kind == OpKind.MATMUL:
            block = op.attr
            if step.kinds[op.args[0]] != "batch" or block.stop - block.start != H:
                return None
    states = tuple(step.cell.state)
    if any(step.kinds[step.states[s]] != "batch" for s in states):
        return None
    adjoint = reverse(step)
    kinds = _kinds_of_reverse(step, adjoint)
    by_out = {op.out: op for op in adjoint.ops}
    for op in adjoint.ops:
        if op.kind not in REVERSE_KINDS:
            return None
        if kinds[op.out] == "vector" and op.kind not in (OpKind.SUM_BATCH, OpKind.ADD):
            return None
    grad_params = []
    for p in step.cell.params:
        var = adjoint.grads.get(f"param:{p.name}")
        if var is not None and p.kind == "vector":
            if kinds[var] != "vector" or _sums(var, by_out, kinds) is None:
                return None
            grad_params.append(p.name)
    return adjoint, kinds, grad_params


def _stages(step: CellStep, adjoint: Adjoint) -> dict[str, int]:
    """The stage of every value of a step and its reverse: a product inside the step
    starts a new one. An adjoint op belongs to the stage of the forward op it came
    from; a product's reverse (matmul_t) sits between stages, in the array library,
    and counts as the stage that reads its result."""
    stage: dict[str, int] = {}
    for op in step.ops:
        base = max((stage[a] for a in op.args), default=0)
        stage[op.out] = base + (op.kind == OpKind.MATMUL)
    for op, origin in zip(adjoint.ops, adjoint.origins, strict=True):
        stage[op.out] = stage[origin] - (op.kind == OpKind.MATMUL_T)  # where its result comes in
    return stage


def _stages_reading(ops: tuple[Op, ...], stage: dict[str, int]) -> dict[str, set[int]]:
    """For each value, the stages of the ops that read it."""
    found: dict[str, set[int]] = {}
    for op in ops:
        for a in _reads(op):
            found.setdefault(a, set()).add(stage[op.out])
    return found


def plan(step: CellStep) -> NativePlan | None:
    """How a step runs natively, or None when it does not fit (see the module docstring)."""
    admitted = _admitted(step)
    if admitted is None:
        return None
    adjoint, kinds, grad_params = admitted
    H = step.hidden
    states = tuple(step.cell.state)

    stage = _stages(step, adjoint)
    live = _live(step.ops, set(step.states.values()) | {step.output})
    ops = tuple(op for op in step.ops if op.out in live)  # a value nothing reads is not made
    products = tuple(
        Product(op.out, op.args[0], op.attr, stage[op.out])
        for op in ops
        if op.kind == OpKind.MATMUL
    )

    forward_uses, reverse_uses = _stages_reading(ops, stage), _stages_reading(adjoint.ops, stage)
    for var in _results(adjoint):  # written at the last stage, 0
        reverse_uses.setdefault(var, set()).add(0)
    new_states = set(step.states.values())
    operands = {product.operand for product in products}  # the array library reads them
    stored = tuple(
        op.out
        for op in ops
        if op.out in operands
        or (
            not _recomputed(op, kinds)
            and any(at > stage[op.out] for at in forward_uses.get(op.out, ()))
        )
        or (
            not _recomputed(op, kinds, backward=True)
            and op.out in reverse_uses
            and op.out not in new_states
        )
    )
    # Each product's output gradient: what its reverse (matmul_t) multiplies.
    d_out = {
        origin: op.args[0]
        for op, origin in zip(adjoint.ops, adjoint.origins, strict=True)
        if op.kind == OpKind.MATMUL_T
    }
    if any(product.out not in d_out for product in products):
        return None  # a product no gradient reaches: left to the Python scan
    incoming = {grad_name(s) for s in states}  # a state's incoming gradient, kept where its
    for product in products:  # product is
        if d_out[product.out] in incoming:
            g = d_out[product.out]
            stage[g] = max(stage.get(g, 0), product.stage)
    d_outs = set(d_out.values())
    dstored = tuple(
        op.out
        for op in adjoint.ops
        if kinds[op.out] == "batch"
        and (any(at < stage[op.out] for at in reverse_uses.get(op.out, ())) or op.out in d_outs)
    ) + tuple(sorted(d_outs & incoming))
    used = {op.attr for op in step.ops if op.kind == OpKind.PARAM}
    return NativePlan(
        states=states,
        recurrent=tuple(step.r_blocks),
        params=tuple(p.name for p in step.cell.params if p.name in used),
        grad_params=tuple(grad_params),
        shared=_shared_projection(step),
        hidden=H,
        x_width=len(step.x_blocks) * H,
        r_widths=tuple(len(blocks) * H for blocks in step.r_blocks.values()),
        stages=1 + max((p.stage for p in products), default=0),
        stage=stage,
        products=products,
        stored=stored,
        dstored=dstored,
        d_out=d_out,
        adjoint=adjoint,
        kinds=kinds,
    )


# --- C source --------------------------------------------------------------------------

_TYPES = {"f32": {"real": "float"}, "f64": {"real": "double"}}

HEADER = """\
/* Generated by rnnc: elementwise steps of cells (see backends/native.py). */
#ifdef RNNC_SCALAR_MATH
#include <math.h>
#else
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
float tanhf(float);
#pragma omp declare simd notinbranch
double exp(double);
#pragma omp declare simd notinbranch
double tanh(double);
#endif
#define fabsf __builtin_fabsf
#define fabs __builtin_fabs
"""


class _CWriter:
    """C expressions for the ops of a step, one (batch row, unit) element at a time."""

    def __init__(self, step: CellStep, plan_: NativePlan, types: dict[str, str]):
        self.step, self.plan, self.t = step, plan_, types
        self.functions = c_renderer(types["real"])  # the cell language's functions in C
        self.names: dict[str, str] = {}

    def lit(self, value: float) -> str:
        return self.functions.literal(value)

    def leaf(self, op: Op) -> str | None:
        H = self.plan.hidden
        if op.kind == OpKind.PREV:
            return f"s{self.plan.states.index(op.attr)}_prev[j]"
        if op.kind == OpKind.PARAM:
            return f"p{self.plan.params.index(op.attr)}[j]"
        if op.kind == OpKind.CONST:
            return self.lit(op.attr)
        if op.kind == OpKind.XPROJ:
            return f"xp_b[{op.attr * H} + j]"
        if op.kind == OpKind.RPROJ:
            r = self.plan.recurrent.index(op.attr[0])
            return f"rp{r}_b[{op.attr[1] * H} + j]"
        if op.kind == OpKind.FUSED:
            r = self.plan.recurrent.index(op.attr[0])
            return f"(xp_b[{op.attr[1] * H} + j] + rp{r}_b[{op.attr[1] * H} + j])"
        return None

    def value(self, op: Op) -> str:
        if op.kind == OpKind.DCALL:
            return self.functions.slope(op.attr, self.names[op.args[0]])[0]
        a = [self.names[x] for x in _reads(op)]
        if op.kind == OpKind.ADD:
            return f"{a[0]} + {a[1]}"
        if op.kind == OpKind.SUB:
            return f"{a[0]} - {a[1]}"
        if op.kind == OpKind.MUL:
            return f"{a[0]} * {a[1]}"
        if op.kind == OpKind.NEG:
            return f"-{a[0]}"
        if op.kind == OpKind.BROADCAST:
            return a[0]
        if op.kind == OpKind.CALL:
            return self.functions.value(op.attr, a[0])[0]
        raise AssertionError(f"no C for {op.kind}")  # pragma: no cover - plan() refuses it

    def define(self, op: Op, name: str, lines: list[str], indent: str) -> None:
        leaf = self.leaf(op)
        text = leaf if leaf is not None else self.value(op)
        lines.append(f"{indent}const {self.t['real']} {name} = {text};")
        self.names[op.out] = name

    def load(self, var: str, name: str, source: str, lines: list[str], indent: str) -> None:
        lines.append(f"{indent}const {self.t['real']} {name} = {source};")
        self.names[var] = name


def _loop(indent: str) -> list[str]:
    return [f"{indent}#pragma omp simd", f"{indent}for (long j = 0; j < H; j++) {{"]


def _signature(p: NativePlan, fn: str, name: str, tag: str, inputs: list[str]) -> list[str]:
    real = _TYPES[tag]["real"]
    args = "".join(f", const {real} *{i}" for i in inputs)
    extra = f", const {real} *Vt, {real} *DVt" if name.startswith("reverse") else f", {real} *Vt"
    kept = ["Vt", "DVt"] if name.startswith("reverse") else ["Vt"]
    return [
        f"void {fn}_{name}_{tag}(long B, long t, long prev, long next{args}{extra}, "
        "void *const *table)",
        "{",
        f"    enum {{ H = {p.hidden} }};",
        "    const long BH = B * H;",
        "    long k = 0;",
        "    (void)t; (void)prev; (void)next; (void)BH;  /* every stage takes the same */",
        "    " + " ".join(f"(void){name};" for name in [*inputs, *kept]),
    ]


def _rows(p: NativePlan, real: str, x: bool, recurrent: bool, lines: list[str]) -> None:
    """Row pointers (row b) of xp, the recurrent products and the previous states."""
    if x and p.x_width:
        lines.append(f"        const {real} *xp_b = xp + b * {p.x_width};")
    if recurrent:
        for r, width in enumerate(p.r_widths):
            lines.append(f"        const {real} *rp{r}_b = rp{r} + b * {width};")
    for i, _ in enumerate(p.states):
        lines.append(f"        const {real} *s{i}_prev = S{i} + prev * BH + b * H;")


def _emit_forward(step: CellStep, p: NativePlan, fn: str, tag: str, stage: int) -> list[str]:
    """Forward stage ``stage``: the ops of that stage, from the products before it."""
    t = _TYPES[tag]
    real = t["real"]
    w = _CWriter(step, p, t)
    products = p.products_of(stage)
    inputs = [f"rp{r}" for r in range(len(p.recurrent))] + [f"mo{k}" for k in range(len(products))]
    lines = _signature(p, fn, f"forward{stage}", tag, inputs)
    if p.x_width:
        lines.append(f"    const {real} *xp = ({real} *)table[k++] + t * B * {p.x_width};")
    for i, _ in enumerate(p.states):
        lines.append(f"    {real} *S{i} = ({real} *)table[k++];")
    lines.append(f"    {real} *y = ({real} *)table[k++] + t * BH;")
    for i, _ in enumerate(p.params):
        lines.append(f"    const {real} *p{i} = (const {real} *)table[k++];")
    lines += [
        "    const unsigned char *mask = (const unsigned char *)table[k++];",
        "    if (mask) mask += t * B;",
        "    for (long b = 0; b < B; b++) {",
    ]
    _rows(p, real, True, True, lines)
    kept = [var for var in p.stored if p.stage[var] == stage]
    written = [s for s in p.states if p.stage[step.states[s]] == stage]
    lines.append("        if (mask && !mask[b]) {  /* past its length: states stay, output 0 */")
    lines += _loop("            ")
    for var in kept:  # zeros: an operand's row goes through a product all the same
        lines.append(f"                Vt[{p.stored.index(var)} * BH + b * H + j] = {w.lit(0.0)};")
    if stage == 0:
        for i, _ in enumerate(p.states):
            lines.append(f"                S{i}[next * BH + b * H + j] = s{i}_prev[j];")
        lines.append(f"                y[b * H + j] = {w.lit(0.0)};")
    lines += ["            }", "            continue;", "        }"]
    lines += _loop("        ")
    ind = "            "
    wanted = set(kept) | {step.states[s] for s in written}
    if p.stage[step.output] == stage:
        wanted.add(step.output)

    def source(op: Op) -> str:
        """Where this stage gets a value: kept by an earlier stage, the product just
        made, or computed here (this stage's ops, leaves, values of parameters alone)."""
        if p.stage[op.out] < stage and op.out in p.stored:
            return "kept"
        if op.kind == OpKind.MATMUL:
            return "product"
        assert p.stage[op.out] == stage or _recomputed(op, p.kinds), op
        return "here"

    live = set(wanted)
    for op in reversed(step.ops):
        if op.out in live and source(op) == "here":
            live.update(_reads(op))
    for n, op in enumerate(step.ops):
        if op.out not in live:
            continue
        if source(op) == "kept":
            w.load(op.out, f"v{n}", f"Vt[{p.stored.index(op.out)} * BH + b * H + j]", lines, ind)
        elif source(op) == "product":
            k = products.index(_product(p, op.out))
            w.load(op.out, f"v{n}", f"mo{k}[b * H + j]", lines, ind)
        else:
            w.define(op, f"v{n}", lines, ind)
    for i, s in enumerate(p.states):
        if s in written:
            lines.append(f"{ind}S{i}[next * BH + b * H + j] = {w.names[step.states[s]]};")
    if step.output in wanted:
        lines.append(f"{ind}y[b * H + j] = {w.names[step.output]};")
    for var in kept:
        lines.append(f"{ind}Vt[{p.stored.index(var)} * BH + b * H + j] = {w.names[var]};")
    lines += ["        }", "    }", "}"]
    return lines


def _product(p: NativePlan, out: str) -> Product:
    return next(product for product in p.products if product.out == out)


def _reverse_outputs(p: NativePlan) -> list[tuple[str, int, str]]:
    """The buffers a reverse stage 0 writes: (name, width, "xproj" | "rproj:s")."""
    outputs: list[tuple[str, int, str]] = []
    if p.x_width and p.shared is None:
        outputs.append(("dxp", p.x_width, "xproj"))
    for r, s in enumerate(p.recurrent):
        outputs.append((f"drp{r}", p.r_widths[r], f"rproj:{s}"))
    return outputs


def _reverse_prologue(p: NativePlan, fn: str, tag: str, stage: int, w: _CWriter) -> list[str]:
    """A reverse stage's signature, its pointers, and the rows past their length (the
    gradients pass through), up to the loop over a row's units."""
    real = _TYPES[tag]["real"]
    after = p.products_of(stage + 1)  # their operands' gradients come in
    inputs = [f"rec{r}" for r in range(len(p.recurrent))] + [f"dop{k}" for k in range(len(after))]
    lines = _signature(p, fn, f"reverse{stage}", tag, inputs)
    lines.append(f"    const {real} *dy = (const {real} *)table[k++] + t * BH;")
    for i, _ in enumerate(p.states):
        lines.append(f"    {real} *G{i} = ({real} *)table[k++];")
    for i, _ in enumerate(p.states):
        lines.append(f"    const {real} *S{i} = (const {real} *)table[k++];")
    for i, _ in enumerate(p.params):
        lines.append(f"    const {real} *p{i} = (const {real} *)table[k++];")
    outputs = _reverse_outputs(p)
    for name, width, _ in outputs:
        lines.append(f"    {real} *{name} = ({real} *)table[k++] + t * B * {width};")
    lines += [
        f"    {real} *DP = ({real} *)table[k++];",
        "    const unsigned char *mask = (const unsigned char *)table[k++];",
        "    if (mask) mask += t * B;",
        "    for (long b = 0; b < B; b++) {",
    ]
    _rows(p, real, False, False, lines)
    for i, _ in enumerate(p.states):
        lines.append(f"        {real} *G{i}_b = G{i} + b * H;")
    for r, _ in enumerate(p.recurrent):
        lines.append(f"        const {real} *rec{r}_b = rec{r} + b * H;")
    for name, width, _ in outputs:
        lines.append(f"        {real} *{name}_b = {name} + b * {width};")
    kept = [var for var in p.dstored if p.stage[var] == stage]
    lines.append("        if (mask && !mask[b]) {  /* past its length: gradients pass through */")
    for var in kept:
        lines.append(
            f"            for (long j = 0; j < H; j++) "
            f"DVt[{p.dstored.index(var)} * BH + b * H + j] = {w.lit(0.0)};"
        )
    if stage == 0:
        for name, width, _ in outputs:
            lines.append(
                f"            for (long j = 0; j < {width}; j++) {name}_b[j] = {w.lit(0.0)};"
            )
        for i, s in enumerate(p.states):
            if s in p.recurrent:
                r = p.recurrent.index(s)
                lines.append(f"            for (long j = 0; j < H; j++) G{i}_b[j] += rec{r}_b[j];")
    lines += ["            continue;", "        }"]
    return lines + _loop("        ")


def _reverse_results(
    p: NativePlan, w: _CWriter, outputs: list[tuple[str, int, str]], ind: str
) -> list[str]:
    """What reverse stage 0 writes: the projections' gradients and the states' before
    the step."""
    zero, H = w.lit(0.0), p.hidden

    def result(key: str) -> str:
        var = p.adjoint.grads.get(key)
        return w.names[var] if var else zero

    lines = []
    for name, width, what in outputs:
        for k in range(width // H):
            key = f"xproj:{k}" if what == "xproj" else f"{what}:{k}"
            lines.append(f"{ind}{name}_b[{k * H} + j] = {result(key)};")
    for i, s in enumerate(p.states):
        lines.append(f"{ind}G{i}_b[j] = {result(f'prev:{s}')};")
    return lines


def _emit_reverse(step: CellStep, p: NativePlan, fn: str, tag: str, stage: int) -> list[str]:
    """Reverse stage ``stage`` (run from the last stage down to 0): its adjoint ops,
    from the gradients of the products' operands after it; stage 0 writes the results."""
    adjoint, kinds = p.adjoint, p.kinds
    w = _CWriter(step, p, _TYPES[tag])
    by_out = {op.out: op for op in adjoint.ops}
    after = p.products_of(stage + 1)
    outputs = _reverse_outputs(p)
    kept = [var for var in p.dstored if p.stage[var] == stage]
    lines = _reverse_prologue(p, fn, tag, stage, w)
    ind = "            "
    here = [
        op
        for op in adjoint.ops
        if p.stage[op.out] == stage and op.kind != OpKind.MATMUL_T and kinds[op.out] != "vector"
    ]
    results = _results(adjoint) if stage == 0 else set()
    # Sums over the batch for vector parameters: each term is added to DP in the stage
    # of the sum that reads it.
    sums: dict[str, list[str]] = {}
    for name in p.grad_params:
        for op in _sums(adjoint.grads[f"param:{name}"], by_out, kinds) or []:
            if p.stage[op.out] == stage:
                sums.setdefault(name, []).append(op.args[0])
    need = set(kept) | results | {v for terms in sums.values() for v in terms}
    for op in reversed(here):
        if op.out in need:
            need.update(_reads(op))
    # The forward values read: kept per step, new states (from the state buffers),
    # leaves and values of parameters alone (again).
    forward = {op.out: op for op in step.ops}
    new_state_of = {step.states[s]: i for i, s in enumerate(p.states)}
    again = {v for v in need if v in forward and v not in p.stored and v not in new_state_of}
    assert all(_recomputed(forward[v], kinds, backward=True) for v in again), again
    again = _live(tuple(op for op in step.ops if _recomputed(op, kinds, backward=True)), again)
    for n, op in enumerate(step.ops):
        if op.out in need and op.out in p.stored:
            w.load(op.out, f"v{n}", f"Vt[{p.stored.index(op.out)} * BH + b * H + j]", lines, ind)
        elif op.out in need and op.out in new_state_of:
            i = new_state_of[op.out]
            w.load(op.out, f"v{n}", f"S{i}[next * BH + b * H + j]", lines, ind)
        elif op.out in again:
            w.define(op, f"v{n}", lines, ind)
    for i, s in enumerate(p.states):
        if grad_name(s) in need:
            terms = [f"G{i}_b[j]"]
            if s in p.recurrent:
                terms.append(f"rec{p.recurrent.index(s)}_b[j]")
            if s == step.cell.output:
                terms.append("dy[b * H + j]")
            w.load(grad_name(s), f"d{i}", " + ".join(terms), lines, ind)
    index = {op.out: n for n, op in enumerate(adjoint.ops)}
    origin = dict(zip((op.out for op in adjoint.ops), adjoint.origins, strict=True))
    for op in adjoint.ops:  # gradients from before this stage: kept, or just multiplied
        if op.out not in need or (p.stage[op.out] == stage and op.kind != OpKind.MATMUL_T):
            continue
        if op.kind == OpKind.MATMUL_T and p.stage[op.out] == stage:  # from the array library
            k = next(k for k, pr in enumerate(after) if pr.out == origin[op.out])
            w.load(op.out, f"g{index[op.out]}", f"dop{k}[b * H + j]", lines, ind)
        else:
            slot = p.dstored.index(op.out)
            w.load(op.out, f"g{index[op.out]}", f"DVt[{slot} * BH + b * H + j]", lines, ind)
    for op in here:
        if op.out in need:
            w.define(op, f"g{index[op.out]}", lines, ind)
    for var in kept:
        lines.append(f"{ind}DVt[{p.dstored.index(var)} * BH + b * H + j] = {w.names[var]};")
    if stage == 0:
        lines += _reverse_results(p, w, outputs, ind)
    for n, name in enumerate(p.grad_params):
        if sums.get(name):
            added = " + ".join(w.names[v] for v in sums[name])
            lines.append(f"{ind}DP[{n * p.hidden} + j] += {added};")
    lines += ["        }", "    }", "}"]
    return lines


def _live(ops: tuple[Op, ...], wanted: set[str]) -> set[str]:
    """The ops whose values reach ``wanted``."""
    live = set(wanted)
    for op in reversed(ops):
        if op.out in live:
            live.update(_reads(op))
    return live


def emit_c(step: CellStep, p: NativePlan, fn: str) -> str:
    """C source of a step's forward and reverse stages, in float32 and float64."""
    parts = []
    for tag in _TYPES:
        for stage in range(p.stages):
            parts.append(
                "\n".join(_unused_pointers_dropped(_emit_forward(step, p, fn, tag, stage)))
            )
        for stage in range(p.stages):
            parts.append(
                "\n".join(_unused_pointers_dropped(_emit_reverse(step, p, fn, tag, stage)))
            )
    return "\n\n".join(parts)


_POINTER = re.compile(r"^\s+(?:const )?\w+ \*(\w+) = [^;]*;$")


def _unused_pointers_dropped(lines: list[str]) -> list[str]:
    """A function's lines without the row and base pointers nothing reads (each stage
    declares the pointers of every buffer it might use)."""
    while True:
        text = "\n".join(lines)
        unused = {
            i
            for i, line in enumerate(lines)
            if (m := _POINTER.match(line)) and len(re.findall(rf"\b{m.group(1)}\b", text)) == 1
        }
        if not unused:
            return lines
        # A table entry nobody reads still takes its place in the table.
        lines = [
            "    k++;" if i in unused else line
            for i, line in enumerate(lines)
            if i not in unused or "table[k++]" in line
        ]


def signatures(p: NativePlan) -> dict[str, int]:
    """C function (without the dtype) -> how many pointers it takes after the four
    longs (B, t, prev, next), the table included."""
    found = {}
    R = len(p.recurrent)
    for stage in range(p.stages):
        found[f"forward{stage}"] = R + len(p.products_of(stage)) + 2  # ..., Vt, table
        found[f"reverse{stage}"] = R + len(p.products_of(stage + 1)) + 3  # ..., Vt, DVt, table
    return found


# --- the scan that calls them (PyTorch) ------------------------------------------------

IMPORTS = """\
import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import warnings

"""

LOADER = '''

NATIVE_TYPES = {torch.float32: "f32", torch.float64: "f64"}
NATIVE_FLAGS = [
    "-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-ffp-contract=off",
    "-shared", "-fPIC",
]  # -ffp-contract=off: no fused multiply-adds, the same rounding as the array libraries
_native = {}


def native_kernels(fn, xs):
    """The C functions (forward and reverse stages) of cell function fn for xs's dtype,
    or None: the scan then runs in Python (on a GPU, in another dtype, with
    RNNC_NATIVE=0, or where no C compiler works)."""
    if xs.device.type != "cpu" or xs.dtype not in NATIVE_TYPES:
        return None
    if "library" not in _native:
        _native["library"] = native_library()
    library = _native["library"]
    if library is None:
        return None
    tag = NATIVE_TYPES[xs.dtype]
    return {name: getattr(library, f"{fn}_{name}_{tag}") for name in NATIVE_CELLS[fn]}


def native_library():
    """NATIVE_SOURCE compiled by the machine's C compiler ($CC, else cc) and loaded, or
    None (with a warning saying why). The library is kept in $RNNC_CACHE (default
    ~/.cache/rnnc) under a hash of the source, the compiler and its version, the
    flags and the CPU: a machine compiles it once. A cached library that this user
    does not own, or that others may write, is not loaded."""
    if os.environ.get("RNNC_NATIVE", "1") == "0":
        return None
    compiler = shlex.split(os.environ.get("CC") or "cc")
    folder = os.environ.get("RNNC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rnnc")
    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True)
        key = "\\0".join([NATIVE_SOURCE, *compiler, version.stdout, *NATIVE_FLAGS, _cpu()])
        path = os.path.join(folder, f"cells-{hashlib.sha256(key.encode()).hexdigest()[:24]}.so")
        if os.path.exists(path):
            owner = os.stat(path)
            if owner.st_uid != os.getuid() or owner.st_mode & 0o022:
                raise OSError(f"{path} is not this user's alone; not loading it")
            try:
                library = ctypes.CDLL(path)
            except OSError:  # a damaged file: built again below
                os.remove(path)
        if not os.path.exists(path):
            _build(compiler, folder, path)
            library = ctypes.CDLL(path)
    except (OSError, subprocess.SubprocessError) as error:
        warnings.warn(f"rnnc: cells run in Python, without their C steps: {error}", stacklevel=2)
        return None
    for fn, functions in NATIVE_CELLS.items():
        for name, pointers in functions.items():
            for tag in NATIVE_TYPES.values():
                function = getattr(library, f"{fn}_{name}_{tag}")
                function.argtypes = [ctypes.c_long] * 4 + [ctypes.c_void_p] * pointers
                function.restype = None
    return library


def _build(compiler, folder, path):
    """Compile NATIVE_SOURCE to path, whole or not at all (other processes may be
    building the same library)."""
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        source, built = os.path.join(work, "cells.c"), os.path.join(work, "cells.so")
        with open(source, "w") as out:
            out.write(NATIVE_SOURCE)
        for extra in (["-lmvec", "-lm"], ["-DRNNC_SCALAR_MATH", "-lm"]):  # vector math, or not
            command = [*compiler, *NATIVE_FLAGS, source, "-o", built, *extra]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode == 0:
                break
        else:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise OSError(f"{' '.join(compiler)} could not compile them ({last})")
        os.chmod(built, 0o755)
        os.replace(built, path)


def _cpu():
    """What the library was compiled for (-march=native): the machine and its CPU's
    feature flags, where the system says them."""
    found = platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as info:
            found += next((line for line in info if line.startswith(("flags", "Features"))), "")
    return found


def pointers(*tensors):
    """A C array of the tensors' data pointers (None: NULL)."""
    return (ctypes.c_void_p * len(tensors))(*(t if t is None else t.data_ptr() for t in tensors))
'''

NATIVE_FUNCTION = '''


class {fn}_function(torch.autograd.Function):
    """{cell} over time through its C steps ({fn}_native; in Python where those
    cannot run); backward runs the reverse, BPTT generated by rnnc."""

    @staticmethod
    def forward(ctx, xs, mask, reverse, taped, names, *tensors):
        P = dict(zip(names, tensors[: len(names)]))
        state = tuple(tensors[len(names) :])
        kernels = native_kernels({fn!r}, xs)
        if kernels is None:
            ys, final, tape = {fn}(xs, mask, reverse, P, state)
        else:
            ys, final, tape = {fn}_native(kernels, xs, mask, reverse, P, state, taped)
        ctx.rnnc = (kernels, tape, xs, mask, reverse, P, names)
        return (ys, *final)

    @staticmethod
    def backward(ctx, d_ys, *d_final):
        kernels, tape, xs, mask, reverse, P, names = ctx.rnnc
        D = {{name: torch.zeros_like(value) for name, value in P.items()}}
        if kernels is None:
            d_xs, d_first = {fn}_backward(d_ys, d_final, tape, xs, mask, reverse, P, D)
        else:
            args = (d_ys, d_final, tape, xs, mask, reverse, P, D)
            d_xs, d_first = {fn}_native_backward(kernels, *args)
        return (d_xs, None, None, None, None, *(D[name] for name in names), *d_first)'''


def emit_torch_scan(step: CellStep, p: NativePlan, fn: str) -> str:
    """``{fn}_native`` and ``{fn}_native_backward``: the scan and its reverse with, per
    step, one matrix product per recurrent state and one C call per stage (a product
    inside the step between two stages)."""
    return _native_scan(step, p, fn) + "\n\n\n" + _native_scan_backward(step, p, fn)


def _native_scan(step: CellStep, p: NativePlan, fn: str) -> str:
    """``{fn}_native``: the forward scan (see emit_torch_scan)."""
    H = p.hidden
    n_states = len(p.states)
    r_index = {s: p.states.index(s) for s in p.recurrent}
    bias = "P['b_x']" if any(step.x_bias) else None
    params = ", ".join(f"P[{name!r}].contiguous()" for name in p.params)
    rps = "".join(f"rp_{i}.data_ptr(), " for i in r_index.values())
    forward = [
        f"def {fn}_native(kernels, xs, mask, reverse, P, state, taped):",
        f'    """{fn} with the C steps: xs (T, B, {step.input_size}) -> ys (T, B, {H}), final\n'
        "    states and the tape (state buffers (T + 1, B, H), the values each step keeps,\n"
        "    mask, parameters); not taped (no gradient wanted): two state slots in turn, and\n"
        '    one step\'s values, written over at every step."""',
        "    T, B = xs.shape[0], xs.shape[1]",
    ]
    if p.x_width:
        product = TORCH.matmul_bias("xs.reshape(T * B, -1)", "P['W_x'].T", bias)
        forward.append(f"    xp = {product}.contiguous()")
    forward += [
        f"    S = [xs.new_empty((T + 1 if taped else 2, B, {H})) for _ in range({n_states})]",
        "    for buffer, first in zip(S, state):",
        "        buffer[T if reverse and taped else 0] = first",
        f"    V = xs.new_empty((T if taped else 1, {max(len(p.stored), 1)}, B, {H}))",
        "    V_at, V_step = V.data_ptr(), V.stride(0) * V.element_size()",
        f"    ys = xs.new_empty((T, B, {H}))",
        f"    params = [{params}]",
        "    valid = None if mask.all() else mask.reshape(T, B).to(torch.uint8).contiguous()",
        f"    table = pointers({'xp, ' if p.x_width else ''}*S, ys, *params, valid)",
    ]
    for s, i in r_index.items():
        forward.append(f"    slots_{i} = S[{i}].unbind(0)")
        forward.append(f"    R_{i} = recurrent_weight(P['R_{s}'].T, slots_{i}[0])")
    for k, pr in enumerate(p.products):
        b = pr.block
        forward.append(f"    operand_{k} = V[:, {p.stored.index(pr.operand)}].unbind(0)")
        forward.append(
            f"    W_{k} = recurrent_weight(P[{b.param!r}][:, {b.start}:{b.stop}].T, operand_{k}[0])"
        )
    forward.append(_bind_kernels("forward", p.stages))
    forward += [
        "    for n, t in enumerate(range(T - 1, -1, -1) if reverse else range(T)):",
        "        if taped:",
        "            prev, new = (t + 1, t) if reverse else (t, t + 1)",
        "        else:",
        "            prev, new = n % 2, (n + 1) % 2",
        "        v = t if taped else 0",
        "        Vt = V_at + v * V_step",
    ]
    for i in r_index.values():  # named: a temporary would be freed before the call
        forward.append(f"        rp_{i} = {TORCH.matmul(f'slots_{i}[prev]', f'R_{i}')}")
    for stage in range(p.stages):
        mos = ""
        for pr in p.products_of(stage):
            k = p.products.index(pr)
            forward.append(f"        mo_{k} = {TORCH.matmul(f'operand_{k}[v]', f'W_{k}')}")
            mos += f"mo_{k}.data_ptr(), "
        forward.append(f"        forward{stage}(B, t, prev, new, {rps}{mos}Vt, table)")
    forward += [
        "    last = (0 if reverse else T) if taped else T % 2",
        "    final = tuple(buffer[last].clone() for buffer in S)",
        "    return ys, final, (S, V, valid, params) if taped else None",
    ]
    return "\n".join(forward)


def _native_scan_backward(step: CellStep, p: NativePlan, fn: str) -> str:
    """``{fn}_native_backward``: the reverse scan (see emit_torch_scan)."""
    H = p.hidden
    n_states = len(p.states)
    r_index = {s: p.states.index(s) for s in p.recurrent}
    outputs = []
    if p.x_width and p.shared is None:
        outputs.append(("d_xp", p.x_width))
    for s, width in zip(p.recurrent, p.r_widths, strict=True):
        outputs.append((f"d_rp_{s}", width))
    backward = [
        f"def {fn}_native_backward(kernels, d_ys, d_state, tape, xs, mask, reverse, P, D):",
        f'    """Reverse of {fn}_native: gradients of xs and of the initial states; parameter\n'
        '    gradients are added to D."""',
        "    S, V, valid, params = tape",
        "    T, B = xs.shape[0], xs.shape[1]",
        "    d_ys = d_ys.contiguous()",
        "    G = [d.clone(memory_format=torch.contiguous_format) for d in d_state]",
    ]
    for name, width in outputs:
        backward.append(f"    {name} = xs.new_empty((T, B, {width}))")
    backward += [
        f"    DP = xs.new_zeros(({max(len(p.grad_params), 1)}, {H}))",
        f"    DV = xs.new_empty((T, {max(len(p.dstored), 1)}, B, {H}))",
        "    V_at, V_step = V.data_ptr(), V.stride(0) * V.element_size()",
        "    DV_at, DV_step = DV.data_ptr(), DV.stride(0) * DV.element_size()",
        f"    table = pointers(d_ys, *G, *S, *params, {''.join(n + ', ' for n, _ in outputs)}"
        "DP, valid)",
    ]
    for s, i in r_index.items():
        backward += [
            f"    rec_{i} = xs.new_zeros((B, {H}))",
            f"    d_rp_{i}_steps = d_rp_{s}.unbind(0)",
            f"    R_{i} = P['R_{s}']",
        ]
    for k, pr in enumerate(p.products):
        b = pr.block
        backward.append(f"    d_out_{k} = DV[:, {p.dstored.index(p.d_out[pr.out])}].unbind(0)")
        backward.append(f"    W_{k} = P[{b.param!r}][:, {b.start}:{b.stop}].contiguous()")
    backward.append(_bind_kernels("reverse", p.stages))
    recs = "".join(f"rec_{i}.data_ptr(), " for i in r_index.values())
    backward += [
        "    for t in (range(T) if reverse else range(T - 1, -1, -1)):",
        "        prev, new = (t + 1, t) if reverse else (t, t + 1)",
        "        Vt, DVt = V_at + t * V_step, DV_at + t * DV_step",
    ]
    for stage in reversed(range(p.stages)):
        dops = ""
        for pr in p.products_of(stage + 1):
            k = p.products.index(pr)
            backward.append(f"        dop_{k} = {TORCH.matmul(f'd_out_{k}[t]', f'W_{k}')}")
            dops += f"dop_{k}.data_ptr(), "
        backward.append(f"        reverse{stage}(B, t, prev, new, {recs}{dops}Vt, DVt, table)")
    for i in r_index.values():
        backward.append(f"        rec_{i} = {TORCH.matmul(f'd_rp_{i}_steps[t]', f'R_{i}')}")
    firsts = [f"G[{i}] + rec_{i}" if i in r_index.values() else f"G[{i}]" for i in range(n_states)]
    backward.append(f"    d_state = {pack(firsts)}")
    for n, name in enumerate(p.grad_params):
        backward.append(f"    D[{name!r}] += DP[{n}]")
    for pr in p.products:  # one product over all steps per block
        b = pr.block
        d_out = f"DV[:, {p.dstored.index(p.d_out[pr.out])}].reshape(T * B, {H})"
        operand = f"V[:, {p.stored.index(pr.operand)}].reshape(T * B, {H})"
        backward.append(
            f"    D[{b.param!r}][:, {b.start}:{b.stop}] += {TORCH.matmul(f'{d_out}.T', operand)}"
        )
    backward.append("    d_xs = torch.zeros_like(xs)")
    for s, i in r_index.items():
        backward.append(f"    prev_{s} = S[{i}][1:] if reverse else S[{i}][:-1]")
    backward += gradient_products(step, TORCH)
    backward.append("    return d_xs, d_state")
    return "\n".join(backward)


def _bind_kernels(direction: str, stages: int) -> str:
    """``forward0, forward1 = kernels['forward0'], kernels['forward1']``."""
    names = [f"{direction}{s}" for s in range(stages)]
    return f"    {', '.join(names)} = {', '.join(f'kernels[{n!r}]' for n in names)}"


def source_block(functions: dict[str, tuple[CellStep, NativePlan]]) -> str:
    """The module's tail: the C source of every native cell family, and the C
    functions of each with how many pointers they take (for the ctypes signatures)."""
    c = HEADER + "\n\n".join(emit_c(step, p, fn) for fn, (step, p) in functions.items())
    assert '"""' not in c and "\\" not in c  # plain text between triple quotes
    cells = {fn: signatures(p) for fn, (_, p) in functions.items()}
    return (
        f"NATIVE_CELLS = {cells!r}  # cell function -> its C functions and their pointers\n"
        f'NATIVE_SOURCE = """\\\n{c}\n"""\n'
    )
