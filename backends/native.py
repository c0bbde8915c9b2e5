"""Native kernels: one step of a cell, everything but its matrix products, as C.

A generated scan in Python pays the interpreter and the array library for every
operation of every step: an LSTM with peepholes is some 15 array calls forward and
30 backward per step, each costing microseconds however small the batch. Here the
elementwise part of a step (the gate activations, the state updates, what the
reverse needs) becomes one C function over the (batch, unit) grid, and its reverse
another; the matrix products stay with the array library, whose BLAS is hard to
beat. A step of the scan is then one product and one C call.

Only a step whose ops are all elementwise over width H fits: no cell input read
outside its hoisted projection, no product inside the step (GRU's ``W @ (r * h)``),
no concatenation, and parameter gradients that are plain sums over the batch.
:func:`plan` says whether a step fits; :func:`emit_c` writes the source. The source
holds no text from the spec: every value is named by its position (``v3``, ``g7``,
``p0``), constants are written by ``repr`` of a float, and the functions come from
an allow-list (:data:`rnnc.equations.FUNCTIONS`).

Each step function comes in float32 and float64, and takes the batch size, the
step, the slots of the previous and the new state, the recurrent products of this
step, and one table of base pointers (laid out as :class:`NativePlan` says). It is
compiled at run time by the machine's C compiler (see the backends' ``native_library``)
with ``#pragma omp simd`` loops, so ``exp`` and ``tanh`` run as glibc's vector
functions; without a compiler the backends run the Python scan instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.emit import TORCH, _shared_projection, gradient_products, pack
from rnnc.equations import FUNCTIONS
from rnnc.lower import Adjoint, CellStep, Op, reverse

FORWARD_KINDS = {"prev", "param", "const", "xproj", "rproj", "fused", "broadcast"} | {
    "add", "sub", "mul", "neg", "call",
}  # fmt: skip
REVERSE_KINDS = {"add", "neg", "mul", "dcall", "sum_batch"}


@dataclass(frozen=True)
class NativePlan:
    """What the C functions of a step read and write, in table order.

    Forward table: xp (if the step has hoisted blocks), the state buffers (T + 1, B, H)
    of every state, the saved values (len(saved), T, B, H), the outputs (T, B, H), the
    vector parameters, the step mask (T, B) bytes or NULL.

    Reverse table: d_ys (T, B, H), the carried state gradients (B, H) of every state,
    the saved values, the state buffers, the vector parameters, the projection
    gradients (d_xp (T, B, nx H) unless shared, then d_rp (T, B, n_s H) of every
    recurrent state), the parameter gradients (len(grad_params), H), the step mask.
    """

    states: tuple[str, ...]
    recurrent: tuple[str, ...]  # states with a product per step (R_s), in r_blocks order
    saved: tuple[str, ...]  # forward values the reverse reads (besides states, parameters)
    # (new states come back from the state buffers)
    params: tuple[str, ...]  # vector parameters, in table order
    grad_params: tuple[str, ...]  # vector parameters with a gradient, in D order
    shared: str | None  # the state whose d_rp is d_xp (as in an LSTM)
    hidden: int
    x_width: int  # columns of xp: hoisted blocks x H (0: none)
    r_widths: tuple[int, ...]  # columns of each recurrent state's product


def _kinds_of_reverse(step: CellStep, adjoint: Adjoint) -> dict[str, str]:
    kinds = dict(step.kinds)
    for s in step.cell.state:
        kinds[f"d_{s}"] = "batch"
    order = ("scalar", "vector", "batch")
    for op in adjoint.ops:
        if op.kind == "sum_batch":
            kinds[op.out] = "vector"
        else:
            kinds[op.out] = max((kinds[a] for a in op.args), key=order.index)
    return kinds


def _batch_terms(var: str, by_out: dict[str, Op], kinds: dict[str, str]) -> list[str] | None:
    """The batch values whose sums over the batch make up the vector ``var`` (None: it
    is something else, a vector times a vector say)."""
    op = by_out.get(var)
    if op is None:
        return None
    if op.kind == "sum_batch" and kinds[op.args[0]] == "batch":
        return [op.args[0]]
    if op.kind == "add":
        terms: list[str] = []
        for arg in op.args:
            found = _batch_terms(arg, by_out, kinds)
            if found is None:
                return None
            terms += found
        return terms
    return None


def plan(step: CellStep) -> NativePlan | None:
    """How a step runs natively, or None when it does not fit (see the module docstring)."""
    if step.uses_x:
        return None
    for op in step.ops:
        if op.kind not in FORWARD_KINDS or (op.kind == "call" and op.attr not in FUNCTIONS):
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
        if kinds[op.out] == "vector" and op.kind not in ("sum_batch", "add"):
            return None
    grad_params = []
    for p in step.cell.params:
        var = adjoint.grads.get(f"param:{p.name}")
        if var is not None:
            if kinds[var] != "vector" or _batch_terms(var, by_out, kinds) is None:
                return None
            grad_params.append(p.name)
    forward = {op.out: op for op in step.ops}
    read: set[str] = set()  # forward values the reverse reads (a slope reads f's output alone)
    for op in adjoint.ops:
        read.update(a for a in (op.args[:1] if op.kind == "dcall" else op.args) if a in forward)
    new_states = set(step.states.values())  # read back from the state buffers
    saved = tuple(
        op.out
        for op in step.ops
        if op.out in read
        and op.out not in new_states
        and op.kind not in ("prev", "param", "const")
        and kinds[op.out] == "batch"
    )
    used = {op.attr for op in step.ops if op.kind == "param"}
    H = step.hidden
    return NativePlan(
        states=states,
        recurrent=tuple(step.r_blocks),
        saved=saved,
        params=tuple(p.name for p in step.cell.params if p.name in used),
        grad_params=tuple(grad_params),
        shared=_shared_projection(step),
        hidden=H,
        x_width=len(step.x_blocks) * H,
        r_widths=tuple(len(blocks) * H for blocks in step.r_blocks.values()),
    )


# --- C source --------------------------------------------------------------------------

_TYPES = {
    "f32": {"real": "float", "exp": "expf", "tanh": "tanhf", "fabs": "fabsf", "suffix": "f"},
    "f64": {"real": "double", "exp": "exp", "tanh": "tanh", "fabs": "fabs", "suffix": ""},
}

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
        self.names: dict[str, str] = {}

    def lit(self, value: float) -> str:
        text = repr(float(value))
        assert text not in ("inf", "-inf", "nan"), text
        if "." not in text and "e" not in text:
            text += ".0"
        return f"(({self.t['real']}){text}{self.t['suffix']})"

    def call(self, fn: str, a: str) -> str:
        one, zero = self.lit(1.0), self.lit(0.0)
        return {
            "sigmoid": f"{one} / ({one} + {self.t['exp']}(-{a}))",
            "tanh": f"{self.t['tanh']}({a})",
            "relu": f"({a} > {zero} ? {a} : {zero})",
            "identity": a,
            "softsign": f"{a} / ({one} + {self.t['fabs']}({a}))",
            "hard_sigmoid": (
                f"({self.lit(0.2)} * {a} + {self.lit(0.5)} < {zero} ? {zero} : "
                f"({self.lit(0.2)} * {a} + {self.lit(0.5)} > {one} ? {one} : "
                f"{self.lit(0.2)} * {a} + {self.lit(0.5)}))"
            ),
        }[fn]

    def slope(self, fn: str, y: str) -> str:
        """f'(a) in terms of y = f(a), as the Python backends write it."""
        one, zero = self.lit(1.0), self.lit(0.0)
        return {
            "sigmoid": f"{y} * ({one} - {y})",
            "tanh": f"{one} - {y} * {y}",
            "relu": f"({y} > {zero} ? {one} : {zero})",
            "identity": one,
            "softsign": f"({one} - {self.t['fabs']}({y})) * ({one} - {self.t['fabs']}({y}))",
            "hard_sigmoid": f"({y} > {zero} && {y} < {one} ? {self.lit(0.2)} : {zero})",
        }[fn]

    def leaf(self, op: Op) -> str | None:
        H = self.plan.hidden
        if op.kind == "prev":
            return f"s{self.plan.states.index(op.attr)}_prev[j]"
        if op.kind == "param":
            return f"p{self.plan.params.index(op.attr)}[j]"
        if op.kind == "const":
            return self.lit(op.attr)
        if op.kind == "xproj":
            return f"xp_b[{op.attr * H} + j]"
        if op.kind == "rproj":
            r = self.plan.recurrent.index(op.attr[0])
            return f"rp{r}_b[{op.attr[1] * H} + j]"
        if op.kind == "fused":
            r = self.plan.recurrent.index(op.attr[0])
            return f"(xp_b[{op.attr[1] * H} + j] + rp{r}_b[{op.attr[1] * H} + j])"
        return None

    def value(self, op: Op) -> str:
        if op.kind == "dcall":
            return self.slope(op.attr, self.names[op.args[0]])
        a = [self.names[x] for x in op.args]
        if op.kind == "add":
            return f"{a[0]} + {a[1]}"
        if op.kind == "sub":
            return f"{a[0]} - {a[1]}"
        if op.kind == "mul":
            return f"{a[0]} * {a[1]}"
        if op.kind == "neg":
            return f"-{a[0]}"
        if op.kind == "broadcast":
            return a[0]
        if op.kind == "call":
            return self.call(op.attr, a[0])
        raise AssertionError(f"no C for {op.kind}")  # pragma: no cover - plan() refuses it

    def define(self, op: Op, name: str, lines: list[str], indent: str) -> None:
        leaf = self.leaf(op)
        text = leaf if leaf is not None else self.value(op)
        lines.append(f"{indent}const {self.t['real']} {name} = {text};")
        self.names[op.out] = name


def _live(ops: tuple[Op, ...], wanted: set[str]) -> set[str]:
    """The ops whose values reach ``wanted`` (lowering leaves a few dead leaves)."""
    live = set(wanted)
    for op in reversed(ops):
        if op.out in live:
            live.update(op.args)
    return live


def _loop(indent: str) -> list[str]:
    return [f"{indent}#pragma omp simd", f"{indent}for (long j = 0; j < H; j++) {{"]


def _emit_forward(step: CellStep, p: NativePlan, fn: str, tag: str) -> list[str]:
    t = _TYPES[tag]
    real = t["real"]
    w = _CWriter(step, p, t)
    rp_args = "".join(f", const {real} *rp{r}" for r in range(len(p.recurrent)))
    lines = [
        f"void {fn}_forward_{tag}(long B, long T, long t, long prev, long next{rp_args}, "
        "void *const *table)",
        "{",
        f"    enum {{ H = {p.hidden} }};",
        "    const long TBH = T * B * H;" if p.saved else "    (void)T;",
        "    long k = 0;",
    ]
    if p.x_width:
        lines.append(f"    const {real} *xp = ({real} *)table[k++] + t * B * {p.x_width};")
    for i, _ in enumerate(p.states):
        lines.append(f"    {real} *S{i} = ({real} *)table[k++];")
        lines.append(f"    const {real} *s{i}_prev_all = S{i} + prev * B * H;")
        lines.append(f"    {real} *s{i}_next_all = S{i} + next * B * H;")
    lines.append(f"    {real} *V = ({real} *)table[k++];")
    lines.append("    if (V) V += t * B * H;")
    lines.append(f"    {real} *y = ({real} *)table[k++] + t * B * H;")
    for i, _ in enumerate(p.params):
        lines.append(f"    const {real} *p{i} = (const {real} *)table[k++];")
    lines += [
        "    const unsigned char *mask = (const unsigned char *)table[k++];",
        "    if (mask) mask += t * B;",
        "    for (long b = 0; b < B; b++) {",
    ]
    for i, _ in enumerate(p.states):
        lines.append(f"        const {real} *s{i}_prev = s{i}_prev_all + b * H;")
        lines.append(f"        {real} *s{i}_next = s{i}_next_all + b * H;")
    lines.append(f"        {real} *y_b = y + b * H;")
    lines += ["        if (mask && !mask[b]) {  /* past its length: states stay, output 0 */"]
    lines += _loop("            ")
    for i, _ in enumerate(p.states):
        lines.append(f"                s{i}_next[j] = s{i}_prev[j];")
    lines += [
        f"                y_b[j] = {w.lit(0.0)};",
        "            }",
        "            continue;",
        "        }",
    ]
    if p.x_width:
        lines.append(f"        const {real} *xp_b = xp + b * {p.x_width};")
    for r, width in enumerate(p.r_widths):
        lines.append(f"        const {real} *rp{r}_b = rp{r} + b * {width};")
    for save in (True, False) if p.saved else (False,):
        if p.saved:
            lines.append("        if (V) {" if save else "        } else {  /* no tape wanted */")
        ind = "            " + ("    " if p.saved else "")
        lines += _loop(ind[:-4])
        wanted = {step.states[s] for s in p.states} | {step.output}
        live = _live(step.ops, wanted | set(p.saved) if save else wanted)
        for n, op in enumerate(step.ops):
            if op.out in live:
                w.define(op, f"v{n}", lines, ind)
        for i, s in enumerate(p.states):
            lines.append(f"{ind}s{i}_next[j] = {w.names[step.states[s]]};")
        lines.append(f"{ind}y_b[j] = {w.names[step.output]};")
        if save:
            for n, var in enumerate(p.saved):
                lines.append(f"{ind}V[{n} * TBH + b * H + j] = {w.names[var]};")
        lines.append(ind[:-4] + "}")
    if p.saved:
        lines.append("        }")
    lines += ["    }", "}"]
    return lines


def _emit_reverse(step: CellStep, p: NativePlan, fn: str, tag: str) -> list[str]:
    t = _TYPES[tag]
    real = t["real"]
    adjoint = reverse(step)
    kinds = _kinds_of_reverse(step, adjoint)
    w = _CWriter(step, p, t)
    by_out = {op.out: op for op in adjoint.ops}
    rec_args = "".join(f", const {real} *rec{r}" for r in range(len(p.recurrent)))
    lines = [
        f"void {fn}_reverse_{tag}(long B, long T, long t, long prev, long next{rec_args}, "
        "void *const *table)",
        "{",
        f"    enum {{ H = {p.hidden} }};",
        "    const long TBH = T * B * H;" if p.saved else "    (void)T;",
        "    long k = 0;",
        f"    const {real} *dy = (const {real} *)table[k++] + t * B * H;",
    ]
    for i, _ in enumerate(p.states):
        lines.append(f"    {real} *G{i} = ({real} *)table[k++];")
    lines.append(f"    const {real} *V = (const {real} *)table[k++] + t * B * H;")
    saved = set(p.saved)
    read = {a for op in adjoint.ops for a in (op.args[:1] if op.kind == "dcall" else op.args)}
    state_of = {var: i for i, var in enumerate(step.states[s] for s in p.states) if var in read}
    unsaved = tuple(op for op in step.ops if op.out not in saved and op.out not in state_of)
    needed = _live(unsaved, {op.out for op in unsaved if op.out in read})
    rows = {f"s{i}_next": i for i in state_of.values()}  # row pointers into state buffers
    for op in step.ops:
        if op.kind == "prev" and op.out in needed:
            rows[f"s{p.states.index(op.attr)}_prev"] = p.states.index(op.attr)
    params_read = {op.attr for op in step.ops if op.kind == "param" and op.out in needed}
    for slot in ("prev", "next"):
        if not any(row.endswith(slot) for row in rows):
            lines.append(f"    (void){slot};")
    for i, _ in enumerate(p.states):
        lines.append(f"    const {real} *S{i} = (const {real} *)table[k++];")
        for row, of in rows.items():
            if of == i:
                slot = row.rsplit("_", 1)[1]
                lines.append(f"    const {real} *{row}_all = S{i} + {slot} * B * H;")
    for i, name in enumerate(p.params):
        if name in params_read:
            lines.append(f"    const {real} *p{i} = (const {real} *)table[k];")
        lines.append("    k++;")
    outputs: list[tuple[str, int, str]] = []  # (buffer, width, "xproj" | "rproj:s")
    if p.x_width and p.shared is None:
        outputs.append(("dxp", p.x_width, "xproj"))
    for r, s in enumerate(p.recurrent):
        outputs.append((f"drp{r}", p.r_widths[r], f"rproj:{s}"))
    for name, width, _ in outputs:
        lines.append(f"    {real} *{name} = ({real} *)table[k++] + t * B * {width};")
    lines += [
        f"    {real} *DP = ({real} *)table[k++];" if p.grad_params else "    k++;",
        "    const unsigned char *mask = (const unsigned char *)table[k++];",
        "    if (mask) mask += t * B;",
        "    for (long b = 0; b < B; b++) {",
    ]
    for row in rows:
        lines.append(f"        const {real} *{row} = {row}_all + b * H;")
    for i, _ in enumerate(p.states):
        lines.append(f"        {real} *G{i}_b = G{i} + b * H;")
    for r, _ in enumerate(p.recurrent):
        lines.append(f"        const {real} *rec{r}_b = rec{r} + b * H;")
    for name, width, _ in outputs:
        lines.append(f"        {real} *{name}_b = {name} + b * {width};")
    lines.append("        if (mask && !mask[b]) {  /* past its length: gradients pass through */")
    for name, width, _ in outputs:
        lines.append(f"            for (long j = 0; j < {width}; j++) {name}_b[j] = {w.lit(0.0)};")
    for i, s in enumerate(p.states):
        if s in p.recurrent:
            r = p.recurrent.index(s)
            lines.append(f"            for (long j = 0; j < H; j++) G{i}_b[j] += rec{r}_b[j];")
    lines += ["            continue;", "        }"]
    lines += _loop("        ")
    ind = "            "
    # The forward values the reverse reads: saved, previous states, parameters,
    # constants, and values of parameters alone (recomputed).
    for n, op in enumerate(step.ops):
        if op.out in saved:
            lines.append(f"{ind}const {real} v{n} = V[{p.saved.index(op.out)} * TBH + b * H + j];")
            w.names[op.out] = f"v{n}"
        elif op.out in state_of:
            lines.append(f"{ind}const {real} v{n} = s{state_of[op.out]}_next[j];")
            w.names[op.out] = f"v{n}"
        elif op.out in needed:
            w.define(op, f"v{n}", lines, ind)
    for i, s in enumerate(p.states):
        terms = [f"G{i}_b[j]"]
        if s in p.recurrent:
            terms.append(f"rec{p.recurrent.index(s)}_b[j]")
        if s == step.cell.output:
            terms.append("dy[b * H + j]")
        lines.append(f"{ind}const {real} d{i} = {' + '.join(terms)};")
        w.names[f"d_{s}"] = f"d{i}"
    for n, op in enumerate(adjoint.ops):
        if kinds[op.out] == "vector":
            continue  # sums over the batch: added to DP below
        w.define(op, f"g{n}", lines, ind)
    zero = w.lit(0.0)
    H = p.hidden
    for name, width, what in outputs:
        for k in range(width // H):
            key = f"xproj:{k}" if what == "xproj" else f"{what}:{k}"
            var = adjoint.grads.get(key)
            lines.append(f"{ind}{name}_b[{k * H} + j] = {w.names[var] if var else zero};")
    for i, s in enumerate(p.states):
        var = adjoint.grads.get(f"prev:{s}")
        lines.append(f"{ind}G{i}_b[j] = {w.names[var] if var else zero};")
    for n, name in enumerate(p.grad_params):
        terms = _batch_terms(adjoint.grads[f"param:{name}"], by_out, kinds) or []
        lines.append(f"{ind}DP[{n * H} + j] += {' + '.join(w.names[v] for v in terms)};")
    lines += ["        }", "    }", "}"]
    return lines


def emit_c(step: CellStep, p: NativePlan, fn: str) -> str:
    """C source of a step's forward and reverse functions, in float32 and float64."""
    parts = []
    for tag in _TYPES:
        parts.append("\n".join(_emit_forward(step, p, fn, tag)))
        parts.append("\n".join(_emit_reverse(step, p, fn, tag)))
    return "\n\n".join(parts)


# --- the scan that calls them (PyTorch) ------------------------------------------------

IMPORTS = """\
import contextlib
import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings

"""

LOADER = '''

NATIVE_TYPES = {torch.float32: "f32", torch.float64: "f64"}
NATIVE_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-shared", "-fPIC"]
_native = {}


def native_kernels(fn, xs):
    """The C forward and reverse step of cell function fn for xs's dtype, or None: the
    scan then runs in Python (on a GPU, in another dtype, with RNNC_NATIVE=0, or where
    no C compiler works)."""
    if xs.device.type != "cpu" or xs.dtype not in NATIVE_TYPES:
        return None
    if "library" not in _native:
        _native["library"] = native_library()
    library = _native["library"]
    if library is None:
        return None
    tag = NATIVE_TYPES[xs.dtype]
    return getattr(library, f"{fn}_forward_{tag}"), getattr(library, f"{fn}_reverse_{tag}")


def native_library():
    """NATIVE_SOURCE compiled by the machine's C compiler ($CC, else cc) and loaded, or
    None. The library is kept in $RNNC_CACHE (default ~/.cache/rnnc) under a hash of
    the source, the compiler, the flags and the CPU: a machine compiles it once."""
    if os.environ.get("RNNC_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC", "cc")
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as info:
            cpu += next((line for line in info if line.startswith("flags")), "")
    key = "\\0".join([NATIVE_SOURCE, compiler, *NATIVE_FLAGS, cpu]).encode()
    folder = os.environ.get("RNNC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rnnc")
    path = os.path.join(folder, f"cells-{hashlib.sha256(key).hexdigest()[:24]}.so")
    try:
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as work:
                source, built = os.path.join(work, "cells.c"), os.path.join(work, "cells.so")
                with open(source, "w") as out:
                    out.write(NATIVE_SOURCE)
                for extra in (["-lmvec", "-lm"], ["-DRNNC_SCALAR_MATH", "-lm"]):
                    command = [compiler, *NATIVE_FLAGS, source, "-o", built, *extra]
                    if subprocess.run(command, capture_output=True).returncode == 0:
                        break
                else:
                    raise OSError(f"{compiler} could not compile the cells")
                os.replace(built, path)  # whole or not at all, for other processes too
        library = ctypes.CDLL(path)
    except OSError as error:
        warnings.warn(f"rnnc: cells run in Python, without their C steps ({error})", stacklevel=2)
        return None
    for fn, products in NATIVE_CELLS.items():
        for tag in NATIVE_TYPES.values():
            step = getattr(library, f"{fn}_forward_{tag}")
            step.argtypes = [ctypes.c_long] * 5 + [ctypes.c_void_p] * (products + 1)
            step.restype = None
            back = getattr(library, f"{fn}_reverse_{tag}")
            back.argtypes = [ctypes.c_long] * 5 + [ctypes.c_void_p] * (products + 1)
            back.restype = None
    return library


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
            ys, final, tape = {fn}_native(kernels[0], xs, mask, reverse, P, state, taped)
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
            d_xs, d_first = {fn}_native_backward(kernels[1], *args)
        return (d_xs, None, None, None, None, *(D[name] for name in names), *d_first)'''


def emit_torch_scan(step: CellStep, p: NativePlan, fn: str) -> str:
    """``{fn}_native`` and ``{fn}_native_backward``: the scan and its reverse with one
    matrix product per recurrent state and one C call per step."""
    H = p.hidden
    n_states = len(p.states)
    r_index = {s: p.states.index(s) for s in p.recurrent}
    bias = "P['b_x']" if any(step.x_bias) else None
    params = ", ".join(f"P[{name!r}].contiguous()" for name in p.params)
    forward = [
        f"def {fn}_native(step, xs, mask, reverse, P, state, taped):",
        f'    """{fn} with the C step: xs (T, B, {step.input_size}) -> ys (T, B, {H}), final\n'
        "    states and the tape (state buffers (T + 1, B, H), saved values, mask, parameters),\n"
        '    or no tape (not taped: no gradient wanted): then two state slots in turn."""',
        "    T, B = xs.shape[0], xs.shape[1]",
    ]
    if p.x_width:
        product = TORCH.matmul_bias("xs.reshape(T * B, -1)", "P['W_x'].T", bias)
        forward.append(f"    xp = {product}.contiguous()")
    forward += [
        f"    S = [xs.new_empty((T + 1 if taped else 2, B, {H})) for _ in range({n_states})]",
        "    for buffer, first in zip(S, state):",
        "        buffer[T if reverse and taped else 0] = first",
        f"    V = xs.new_empty(({max(len(p.saved), 1)}, T, B, {H})) if taped else None",
        f"    ys = xs.new_empty((T, B, {H}))",
        f"    params = [{params}]",
        "    valid = None if mask.all() else mask.reshape(T, B).to(torch.uint8).contiguous()",
        f"    table = pointers({'xp, ' if p.x_width else ''}*S, V, ys, *params, valid)",
    ]
    for s, i in r_index.items():
        forward.append(f"    slots_{i} = S[{i}].unbind(0)")
        forward.append(f"    R_{i} = recurrent_weight(P['R_{s}'].T, slots_{i}[0])")
    forward += [
        "    for n, t in enumerate(range(T - 1, -1, -1) if reverse else range(T)):",
        "        if taped:",
        "            prev, new = (t + 1, t) if reverse else (t, t + 1)",
        "        else:",
        "            prev, new = n % 2, (n + 1) % 2",
    ]
    for i in r_index.values():  # named: a temporary would be freed before the call
        forward.append(f"        rp_{i} = {TORCH.matmul(f'slots_{i}[prev]', f'R_{i}')}")
    products = "".join(f", rp_{i}.data_ptr()" for i in r_index.values())
    forward += [
        f"        step(B, T, t, prev, new{products}, table)",
        "    last = (0 if reverse else T) if taped else T % 2",
        "    final = tuple(buffer[last].clone() for buffer in S)",
        "    return ys, final, (S, V, valid, params) if taped else None",
    ]
    outputs = []
    if p.x_width and p.shared is None:
        outputs.append(("d_xp", p.x_width))
    for s, width in zip(p.recurrent, p.r_widths, strict=True):
        outputs.append((f"d_rp_{s}", width))
    backward = [
        f"def {fn}_native_backward(step, d_ys, d_state, tape, xs, mask, reverse, P, D):",
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
        f"    table = pointers(d_ys, *G, V, *S, *params, {''.join(n + ', ' for n, _ in outputs)}DP, valid)",
    ]
    for s, i in r_index.items():
        backward += [
            f"    rec_{i} = xs.new_zeros((B, {H}))",
            f"    d_rp_{i}_steps = d_rp_{s}.unbind(0)",
            f"    R_{i} = P['R_{s}']",
        ]
    recs = "".join(f", rec_{i}.data_ptr()" for i in r_index.values())
    backward += [
        "    for t in (range(T) if reverse else range(T - 1, -1, -1)):",
        f"        step(B, T, t, *((t + 1, t) if reverse else (t, t + 1)){recs}, table)",
    ]
    for i in r_index.values():
        backward.append(f"        rec_{i} = {TORCH.matmul(f'd_rp_{i}_steps[t]', f'R_{i}')}")
    firsts = [f"G[{i}] + rec_{i}" if i in r_index.values() else f"G[{i}]" for i in range(n_states)]
    backward.append(f"    d_state = {pack(firsts)}")
    for n, name in enumerate(p.grad_params):
        backward.append(f"    D[{name!r}] += DP[{n}]")
    backward.append("    d_xs = torch.zeros_like(xs)")
    for s, i in r_index.items():
        backward.append(f"    prev_{s} = S[{i}][1:] if reverse else S[{i}][:-1]")
    backward += gradient_products(step, TORCH)
    backward.append("    return d_xs, d_state")
    return "\n".join(forward) + "\n\n\n" + "\n".join(backward)


def source_block(functions: dict[str, tuple[CellStep, NativePlan]]) -> str:
    """The module's tail: the C source of every native cell family and how many
    recurrent products each step takes (for the ctypes signatures)."""
    c = HEADER + "\n\n".join(emit_c(step, p, fn) for fn, (step, p) in functions.items())
    assert '"""' not in c and "\\" not in c  # plain text between triple quotes
    cells = {fn: len(p.recurrent) for fn, (_, p) in functions.items()}
    return f'NATIVE_CELLS = {cells!r}  # cell function -> recurrent products per step\nNATIVE_SOURCE = """\\\n{c}\n"""\n'
