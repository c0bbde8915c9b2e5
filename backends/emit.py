"""Source for one lowered cell, shared by the NumPy and PyTorch backends.

:func:`emit_cell` writes, for a :class:`rnnc.ir.lower.CellStep`, the functions a backend
runs a recurrent layer with: its parameters (input blocks of every gate stacked into
``W_x``, recurrent blocks into ``R_s``), one step and the step's reverse, the scan over
time and its reverse. The text is the same for both backends except for a few array
functions, which a :class:`Dialect` names: NumPy arrays and torch tensors share
``@``, slicing, ``.T``, ``reshape`` and ``sum(axis=...)``.
"""

from __future__ import annotations

import ast
import functools
import keyword
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from rnnc.front import functions
from rnnc.front.checks import Analysis
from rnnc.front.functions import Renderer
from rnnc.front.spec import RecurrentLayer
from rnnc.ir.lower import (
    Adjoint,
    CellStep,
    Op,
    OpKind,
    grad_name,
    lower_cell,
    prev_name,
    reverse,
    uses_of,
)


@dataclass(frozen=True)
class Dialect:
    """How a backend's generated code spells the array functions that differ: a table
    of templates, one instance per target (a new target fills its own)."""

    lib: str  # the module: np.where, torch.where, ...
    cat: str  # concatenation along an axis
    functions: Renderer  # the cell language's functions and their slopes
    matmul_template: str  # a @ b: {a}, {b}
    matmul_bias_template: str  # (a @ b + bias), as one call where the library has one
    matmul_precedence: int
    broadcast_template: str  # {ref} (B, width) repeated for {steps} time steps
    empty_template: str  # an uninitialised array of {shape} like {like}
    zeros_template: str  # zeros of {shape} with the dtype (and device) of {like}
    steps_template: str  # something indexed by step t giving {array}[t]
    buffer_template: str  # where a loop writes one step at a time: buf[t] = value
    buffer_done_template: str | None  # what turns that buffer into an array, if anything
    # Whether a step multiplies by a contiguous copy of R_s.T (faster in OpenBLAS than
    # R_s.T as a view; the backward multiplies by R_s itself).
    transposed_recurrent: bool

    def broadcast(self, ref: str, steps: str) -> str:
        return self.broadcast_template.format(ref=ref, steps=steps)

    def zeros_like(self, a: str) -> str:
        return f"{self.lib}.zeros_like({a})"

    def matmul(self, a: str, b: str) -> str:
        return self.matmul_template.format(a=a, b=b)

    def matmul_bias(self, a: str, b: str, bias: str | None) -> str:
        if bias is None:
            return f"({self.matmul(a, b)})"
        return self.matmul_bias_template.format(a=a, b=b, bias=bias)

    def steps(self, array: str) -> str:
        return self.steps_template.format(array=array)

    def buffer(self, shape: str, like: str) -> str:
        return self.buffer_template.format(shape=shape, like=like)

    def buffer_done(self, name: str) -> list[str]:
        template = self.buffer_done_template
        return [] if template is None else [f"    {name} = {template.format(name=name)}"]

    def empty(self, shape: str, like: str) -> str:
        return self.empty_template.format(shape=shape, like=like)

    def zeros(self, shape: str, like: str) -> str:
        return self.zeros_template.format(shape=shape, like=like)


NUMPY = Dialect(
    lib="np",
    cat="np.concatenate",
    functions=functions.NUMPY,
    matmul_template="{a} @ {b}",
    matmul_bias_template="({a} @ {b} + {bias})",
    matmul_precedence=2,
    broadcast_template="np.broadcast_to({ref}, ({steps},) + {ref}.shape)",
    empty_template="np.empty({shape}, dtype={like}.dtype)",
    zeros_template="np.zeros({shape}, dtype={like}.dtype)",
    steps_template="{array}",
    buffer_template="np.empty({shape}, dtype={like}.dtype)",
    buffer_done_template=None,
    transposed_recurrent=True,
)

TORCH = replace(
    NUMPY,
    lib="torch",
    cat="torch.cat",
    functions=functions.TORCH,
    # the prelude's mm: oneDNN where it is faster, which adds the bias in the product's
    # own pass instead of another pass over a (T B, 4 H) array
    matmul_template="mm({a}, {b})",
    matmul_bias_template="mm({a}, {b}, {bias})",
    matmul_precedence=4,
    broadcast_template="{ref}.expand(({steps},) + tuple({ref}.shape))",
    empty_template="{like}.new_empty({shape})",
    zeros_template="{like}.new_zeros({shape})",
    # unbind makes every step's view at once, which indexing in the loop does one by one;
    # a tensor written step by step costs a kernel launch per write: a list, stacked
    steps_template="{array}.unbind(0)",
    buffer_template="[None] * T",
    buffer_done_template="torch.stack({name})",
    transposed_recurrent=False,
)

RESERVED = {
    *functions.FUNCTIONS, "np", "torch", "softmax", "log_softmax", "accumulate", "step_mask", "range", "len", "reversed", "zip", "add_in_place",
    "mm", "shift", "attend", "flip_within", "fused_scan", "register", "ONEDNN", "FUSED",
    "onednn", "recurrent_weight", "pointers", "native_kernels", "native_library",
    "xs", "mask", "mask_t", "xp", "xp_t", "W_x", "T", "B", "H", "t", "ys", "tape", "saved",
    "params", "prefix", "init", "finals", "reverse", "order", "d_ys", "d_finals", "d_xs",
    "d_xp", "grads", "carry", "x_t",
}  # fmt: skip

ACTIVATIONS = ("identity", "tanh", "relu", "sigmoid", "softmax", "log_softmax")


def function_definitions(xp: Dialect, own: Mapping[str, str]) -> str:
    """A Python function for every function of the cell language, as ``xp`` writes its
    value (rnnc.front.functions), or its source in ``own``."""
    blocks: list[str] = []  # definitions, and runs of aliases
    aliases: list[str] = []
    for name in functions.FUNCTIONS:
        value = xp.functions.value(name, "a")[0]
        library_call = re.fullmatch(r"([\w.]+)\(a\)", value)
        if name not in own and library_call:  # an alias: no Python call in between
            aliases.append(f"{name} = {library_call[1]}")
            continue
        if aliases:
            blocks.append("\n".join(aliases))
            aliases = []
        code = own.get(name) or f"def {name}(a):\n    return {value}"
        blocks.append(code.strip())
    return "\n\n\n".join(blocks + (["\n".join(aliases)] if aliases else []))


def used_helpers(library: str, body: str, keep: Iterable[str] = ()) -> str:
    """The top-level statements of ``library`` (Python source of helper functions and
    aliases) that ``body`` uses, directly or through another helper, in their order;
    imports always, and the helpers named in ``keep`` (ones the runtime looks up by
    name). A generated module carries only what it runs."""
    blocks = _helper_blocks(library)
    words = set(re.findall(r"\w+", body)) | set(keep)
    used: set[str] = set()
    while True:
        more = {name for defined, _ in blocks for name in defined & words} - used
        if not more:
            break
        used |= more
        for defined, text in blocks:
            if defined & more:
                words |= set(re.findall(r"\w+", text))
    out = ""
    for defined, text in blocks:
        if defined and not defined & used:
            continue
        one_liner = "\n" not in text and not text.startswith(("def ", "class "))
        joined = one_liner and out and "\n" not in out.rsplit("\n\n\n", 1)[-1]
        out += ("\n" if joined else "\n\n\n" if out else "") + text
    return out


@functools.cache
def _helper_blocks(library: str) -> tuple[tuple[frozenset[str], str], ...]:
    """The top-level statements of ``library``: the names each defines (none for an
    import) and its source with the comments before it. Parsed once per library."""
    tree = ast.parse(library)
    lines = library.splitlines()
    blocks = []
    start = 0
    for node in tree.body:
        text = "\n".join(lines[start : node.end_lineno]).strip("\n")
        start = node.end_lineno or start
        if isinstance(node, ast.Import | ast.ImportFrom):
            defined: frozenset[str] = frozenset()
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined = frozenset({node.name})
        else:  # assignments, and try blocks of assignments
            defined = frozenset(t.id for n in ast.walk(node) for t in _targets(n))
        blocks.append((defined, text))
    return tuple(blocks)


def _targets(node: ast.AST) -> list[ast.Name]:
    if isinstance(node, ast.Assign):
        return [t for t in node.targets if isinstance(t, ast.Name)]
    return []


def unpack(names: list[str]) -> str:
    """Left side of a tuple assignment: ``a, b`` (``a,`` for one name)."""
    return ", ".join(names) + ("," if len(names) == 1 else "")


def pack(items: list[str]) -> str:
    """A tuple literal: ``(a, b)`` (``(a,)`` for one item)."""
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


class Namespace:
    """Python names for spec names: never a keyword, a builtin we use, or taken twice."""

    def __init__(self, reserved: set[str]):
        self.taken = set(reserved)
        self.names: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self.names:
            candidate = name.replace("$", "_")  # a name the lowering made
            while candidate in self.taken or keyword.iskeyword(candidate):
                candidate += "_"
            self.taken.add(candidate)
            self.names[name] = candidate
        return self.names[name]


# --- one cell step ---------------------------------------------------------------------


class _StepWriter:
    """Renders the ops of a step (or its reverse) as Python lines, inlining what it can."""

    def __init__(self, step: CellStep, names: Namespace, xp: Dialect):
        self.step = step
        self.xp = xp
        self.names = names
        self.H = step.hidden
        self.exprs: dict[str, tuple[str, int]] = {}  # var -> (expression, precedence)

    def var(self, name: str) -> str:
        return self.names(name)

    def block(self, k: int) -> str:
        return f"{k * self.H}:{(k + 1) * self.H}"

    def leaf(self, op: Op) -> str | None:
        """How a leaf reads (x, a previous state, a parameter, a number, a block of a
        projection); None for an op that computes."""
        rule = _LEAVES.get(op.kind)
        return None if rule is None else rule(self, op)

    def ref(self, var: str, level: int) -> str:
        text, precedence = self.exprs[var]
        return f"({text})" if precedence < level else text

    def render(self, op: Op) -> tuple[str, int]:
        """An op that computes, as an expression of its arguments, and its precedence."""
        return _RENDERINGS[op.kind](self, op, [*op.args])

    def product(self, operand: str, block: Any, transposed: bool) -> tuple[str, int]:
        """``operand`` times a column block of a weight (transposed: the forward's)."""
        weight = f"{self.var(block.param)}[:, {block.start}:{block.stop}]"
        product = self.xp.matmul(self.ref(operand, 3), weight + (".T" if transposed else ""))
        return product, self.xp.matmul_precedence

    def grouped(self, op: Op, by_out: dict[str, Op], out: list[str], indent: str) -> str | None:
        """A gate's value as its slice of one activation over its group (see
        CellStep.groups), writing that activation's line the first time."""
        if op.kind != OpKind.CALL or self.step.fused is None:
            return None
        arg = by_out.get(op.args[0])
        if arg is None or arg.kind != OpKind.FUSED:
            return None
        state, k = arg.attr
        for fn, start, count in self.step.groups:
            if fn == op.attr and start <= k < start + count:
                name = f"act_{self.var(state)}_{start}"
                if name not in self.exprs:
                    H = self.H
                    pre = f"pre_{self.var(state)}[:, {start * H}:{(start + count) * H}]"
                    out.append(f"{indent}{name} = {fn}({pre})  # {count} gates at once")
                    self.exprs[name] = (name, 4)
                return f"{name}[:, {(k - start) * self.H}:{(k - start + 1) * self.H}]"
        return None

    def lines(
        self, ops: tuple[Op, ...], named: set[str], indent: str, group: bool = False
    ) -> list[str]:
        out: list[str] = []
        by_out = {op.out: op for op in ops}
        for op in ops:
            leaf = self.leaf(op)
            if leaf is not None and op.out not in named:
                self.exprs[op.out] = (leaf, 4)
                continue
            sliced = self.grouped(op, by_out, out, indent) if group else None
            if sliced is not None:
                text, precedence = sliced, 4
            else:
                text, precedence = (leaf, 4) if leaf is not None else self.render(op)
            if op.out in named:
                name = self.var(op.out)
                out.append(f"{indent}{name} = {text}")
                self.exprs[op.out] = (name, 4)
            else:
                self.exprs[op.out] = (text, precedence)
        return out


Leaf = Callable[[_StepWriter, Op], str]
Rendering = Callable[[_StepWriter, Op, list[str]], tuple[str, int]]

_LEAVES: dict[OpKind, Leaf] = {
    OpKind.X: lambda w, op: "x_t",
    OpKind.PREV: lambda w, op: w.var(prev_name(op.attr)),
    OpKind.PARAM: lambda w, op: w.var(op.attr),
    OpKind.CONST: lambda w, op: repr(float(op.attr)),
    OpKind.XPROJ: lambda w, op: f"xp_t[:, {w.block(op.attr)}]",
    OpKind.RPROJ: lambda w, op: f"rp_{w.var(op.attr[0])}[:, {w.block(op.attr[1])}]",
    OpKind.FUSED: lambda w, op: f"pre_{w.var(op.attr[0])}[:, {w.block(op.attr[1])}]",
}

# Every op that computes, as Python over the Dialect's arrays (precedence: 4 an atom
# or a call, 3 unary minus, 2 a product, 1 a sum; see rnnc.front.functions).
_RENDERINGS: dict[OpKind, Rendering] = {
    OpKind.ADD: lambda w, op, a: (f"{w.ref(a[0], 1)} + {w.ref(a[1], 2)}", 1),
    OpKind.SUB: lambda w, op, a: (f"{w.ref(a[0], 1)} - {w.ref(a[1], 2)}", 1),
    OpKind.MUL: lambda w, op, a: (f"{w.ref(a[0], 2)} * {w.ref(a[1], 3)}", 2),
    OpKind.NEG: lambda w, op, a: (f"-{w.ref(a[0], 3)}", 3),
    OpKind.BROADCAST: lambda w, op, a: (
        f"{w.ref(a[0], 1)} + {w.xp.zeros_like(w.ref(a[1], 4))}",
        1,
    ),
    OpKind.CALL: lambda w, op, a: (f"{op.attr}({w.ref(a[0], 0)})", 4),
    OpKind.CONCAT: lambda w, op, a: (
        f"{w.xp.cat}([" + ", ".join(w.ref(x, 0) for x in a) + "], axis=-1)",
        4,
    ),
    OpKind.MATMUL: lambda w, op, a: w.product(a[0], op.attr, transposed=True),
    OpKind.MATMUL_T: lambda w, op, a: w.product(a[0], op.attr, transposed=False),
    OpKind.DCALL: lambda w, op, a: w.xp.functions.slope(op.attr, y=w.ref(a[0], 4)),
    OpKind.SLICE: lambda w, op, a: (
        f"{w.ref(a[0], 4)}[:, {op.attr[0]}:{op.attr[0] + op.attr[1]}]",
        4,
    ),
    OpKind.SUM_BATCH: lambda w, op, a: (f"{w.ref(a[0], 4)}.sum(axis=0)", 4),
}


def _forward_named(step: CellStep) -> set[str]:
    """Vars that get a line of their own: equations, and what the reverse reads."""
    uses = uses_of(step.ops)
    named = {eq.target for eq in step.cell.equations}
    for op in step.ops:
        if op.kind == OpKind.CALL:
            named.add(op.out)
        if op.kind in (OpKind.MUL, OpKind.MATMUL):
            named.update(op.args)
    named.update(v for v, n in uses.items() if n > 1)
    # x, previous states, parameters and constants are names already; projections
    # that the reverse reads get a line of their own like any other value.
    leaves = {
        op.out for op in step.ops if op.kind in (OpKind.X, OpKind.PREV, OpKind.PARAM, OpKind.CONST)
    }
    return named - leaves


def emit_cell(step: CellStep, fn: str, xp: Dialect = NUMPY, grads: bool = True) -> str:
    """Generated functions for one lowered cell: its parameters, one step and its reverse,
    and the scan over time and its reverse (see the module docstring)."""
    names = Namespace(RESERVED)
    states = list(step.cell.state)
    named = _forward_named(step)
    order = [op.out for op in step.ops]
    saved = sorted(named, key=order.index)
    parts = [
        _emit_params(step, fn, names, xp),
        _emit_step(step, fn, names, named, saved, xp),
        _emit_step_backward(step, fn, names, saved, states, xp),
        _emit_scan(step, fn, saved, xp),
        _emit_recurrent_grads(step, fn, saved, xp),
    ]
    if grads:  # the NumPy backend's split of stacked gradients back into parameters
        parts.append(_emit_grads(step, fn))
    return "\n\n\n".join(parts)


def _stack(blocks: tuple[Any, ...], xp: Dialect) -> str:
    joined = ", ".join(f"P[{b.param!r}][:, {b.start}:{b.stop}]" for b in blocks)
    return f"{xp.cat}([{joined}], axis=0)"


def _emit_params(step: CellStep, fn: str, names: Namespace, xp: Dialect) -> str:
    params = tuple(p.name for p in step.cell.params)
    lines = [
        f"def {fn}_params(params, prefix):",
        f'    """{step.cell.name} parameters of one layer and direction, with W_x (the input\n'
        "    blocks of every gate, stacked: applied to all steps at once) and R_s (the\n"
        '    recurrent blocks on each previous state s, stacked: one product per step)."""',
        f"    P = {{name: params[prefix + name] for name in {params!r}}}",
    ]
    if step.x_blocks:
        lines.append(f"    P['W_x'] = {_stack(step.x_blocks, xp)}")
    if any(step.x_bias):
        zeros = xp.zeros(str(step.hidden), "P['W_x']")
        pieces = [f"P[{b!r}]" if b else zeros for b in step.x_bias]
        lines.append(f"    P['b_x'] = {xp.cat}([{', '.join(pieces)}])  # biases, added once")
    for state, blocks in step.r_blocks.items():
        lines.append(f"    P['R_{state}'] = {_stack(blocks, xp)}")
        if xp.transposed_recurrent:
            lines.append(f"    P['R_{state}_T'] = np.ascontiguousarray(P['R_{state}'].T)")
    lines.append("    return P")
    return "\n".join(lines)


def _step_params(
    step: CellStep, names: Namespace, block_ops: tuple[Op, ...], transposed: bool = False
) -> list[str]:
    """Lines binding to local names the vector parameters of a step and the matrices
    whose blocks ``block_ops`` multiply in the step (``transposed``: R_s_T for R_s)."""
    used = sorted(
        {op.attr for op in step.ops if op.kind == OpKind.PARAM}
        | {op.attr.param for op in block_ops if op.kind in (OpKind.MATMUL, OpKind.MATMUL_T)}
    )
    lines = [f"    {names(p)} = P[{p!r}]" for p in used]
    suffix = "_T" if transposed else ""
    lines += [f"    R_{names(s)}{suffix} = P['R_{s}{suffix}']" for s in step.r_blocks]
    return lines


def _emit_step(
    step: CellStep, fn: str, names: Namespace, named: set[str], saved: list[str], xp: Dialect
) -> str:
    H = step.hidden
    prev = [names(prev_name(s)) for s in step.cell.state]
    lines = [
        f"def {fn}_step(xp_t, x_t, mask_t, state, P):",
        f'    """One step of {step.cell.name}: new states (unchanged where mask_t is 0), the\n'
        '    output, and what the reverse needs."""',
        *_step_params(step, names, step.ops, transposed=xp.transposed_recurrent),
        f"    {unpack(prev)} = state",
    ]
    for state in step.r_blocks:
        R = f"R_{names(state)}" + ("_T" if xp.transposed_recurrent else ".T")
        product = xp.matmul(names(prev_name(state)), R)
        lines.append(f"    rp_{names(state)} = {product}")
    if step.fused is not None:
        state, n = step.fused
        whole = n == len(step.x_blocks) == len(step.r_blocks[state])
        cut = "" if whole else f"[:, :{n * H}]"
        rp = f"rp_{names(state)}"
        lines.append(f"    pre_{names(state)} = xp_t{cut} + {rp}{cut}  # {n} gates at once")
    lines += _StepWriter(step, names, xp).lines(step.ops, named, "    ", group=True)
    new = [
        f"{xp.lib}.where(mask_t, {names(step.states[s])}, {p})"
        for s, p in zip(step.cell.state, prev, strict=True)
    ]
    kept = pack([names(v) for v in saved] + prev)
    unmasked = pack([names(step.states[s]) for s in step.cell.state])
    lines += [
        "    if mask_t is None:  # every example is within its length",
        f"        return {unmasked}, {names(step.output)}, {kept}",
        f"    new_state = {pack(new)}",
        f"    return new_state, {xp.lib}.where(mask_t, {names(step.output)}, 0.0), {kept}",
    ]
    return "\n".join(lines)


def _emit_step_backward(
    step: CellStep, fn: str, names: Namespace, saved: list[str], states: list[str], xp: Dialect
) -> str:
    adjoint: Adjoint = reverse(step)
    d = {s: names(grad_name(s)) for s in states}
    prev = [names(prev_name(s)) for s in states]
    lines = [
        f"def {fn}_step_backward(d_state, d_y, saved, x_t, mask_t, P, D):",
        f'    """Reverse of {fn}_step: gradients of xp_t, x_t and the previous states.\n'
        '    Parameter gradients are added to D."""',
        *_step_params(step, names, adjoint.ops),
        f"    {unpack([names(v) for v in saved] + prev)} = saved",
        f"    {unpack(list(d.values()))} = d_state",
        "    if mask_t is None:  # every example is within its length",
        f"        {d[step.cell.output]} = {d[step.cell.output]} + d_y",
        "    else:",
        f"        {d[step.cell.output]} = {d[step.cell.output]} + {xp.lib}.where(mask_t, d_y, 0.0)",
        "        # s = s_new where mask_t, else s_prev: each gets the gradient where it was chosen",
    ]
    for s in states:
        lines.append(f"        carry_{names(s)} = {xp.lib}.where(mask_t, 0.0, {d[s]})")
        lines.append(f"        {d[s]} = {xp.lib}.where(mask_t, {d[s]}, 0.0)")
    writer = _StepWriter(step, names, xp)
    kept = set(saved)
    for op in step.ops:  # the reverse reads saved values and leaves by name
        leaf = writer.leaf(op)
        writer.exprs[op.out] = (names(op.out), 4) if op.out in kept or leaf is None else (leaf, 4)
    for s in states:
        writer.exprs[grad_name(s)] = (d[s], 4)
    uses = uses_of(adjoint.ops)
    results = set(adjoint.grads.values()) | {g for _, g, _ in adjoint.block_grads}
    written = {op.out for op in adjoint.ops}
    named = {v for v in ({v for v, n in uses.items() if n > 1} | results) if v in written}
    lines += writer.lines(adjoint.ops, named, "    ")

    def grad(key: str) -> str | None:
        var = adjoint.grads.get(key)
        return writer.exprs[var][0] if var is not None else None

    lines += _parameter_grads(step, adjoint, writer, xp)
    zeros = f"{xp.lib}.zeros_like({d[states[0]]})"
    new_d = []
    new_terms = []
    joined: dict[str, str] = {}  # concatenation -> the name it already has
    for s in states:
        terms = [f"carry_{names(s)}"]
        if grad(f"prev:{s}") is not None:
            terms.append(str(grad(f"prev:{s}")))
        if s in step.r_blocks:
            pieces = [grad(f"rproj:{s}:{i}") or zeros for i in range(len(step.r_blocks[s]))]
            text = f"{xp.cat}([{', '.join(pieces)}], axis=-1)"
            lines.append(f"    d_rp_{names(s)} = {text}")
            joined.setdefault(text, f"d_rp_{names(s)}")
            terms.append(xp.matmul(f"d_rp_{names(s)}", f"R_{names(s)}"))
        new_d.append(" + ".join(terms))
        new_terms.append(terms)
    if step.x_blocks:
        pieces = [grad(f"xproj:{k}") or zeros for k in range(len(step.x_blocks))]
        text = f"{xp.cat}([{', '.join(pieces)}], axis=-1)"
        lines.append(f"    d_xp_t = {joined.get(text, text)}")
    else:
        lines.append("    d_xp_t = None")
    lines.append(f"    d_x_t = {grad('x') if step.uses_x and grad('x') is not None else 'None'}")
    d_rps = pack([f"d_rp_{names(s)}" for s in step.r_blocks])
    uncarried = [
        " + ".join(terms[1:]) or xp.zeros_like(d[s])
        for s, terms in zip(states, new_terms, strict=True)
    ]
    lines += [
        "    if mask_t is None:",
        f"        return d_xp_t, d_x_t, {pack(uncarried)}, {d_rps}",
        f"    return d_xp_t, d_x_t, {pack(new_d)}, {d_rps}",
    ]
    return "\n".join(lines)


def _parameter_grads(
    step: CellStep, adjoint: Adjoint, writer: _StepWriter, xp: Dialect
) -> list[str]:
    """A step's reverse adding its parameters' gradients to D: vectors' (summed over
    the batch) and each block's product inside the step."""
    lines = []
    for p in (p.name for p in step.cell.params if p.kind == "vector"):
        var = adjoint.grads.get(f"param:{p}")
        if var is not None:
            lines.append(f"    D[{p!r}] += {writer.exprs[var][0]}")
    for block, g, operand in adjoint.block_grads:
        grad_text, operand_text = writer.exprs[g][0], writer.exprs[operand][0]
        product = (
            f"{xp.lib}.outer({grad_text}, {operand_text})"  # a parameter vector as operand
            if step.kinds[operand] == "vector"
            else xp.matmul(f"{grad_text}.T", operand_text)
        )
        lines.append(f"    D[{block.param!r}][:, {block.start}:{block.stop}] += {product}")
    return lines


def _prev_index(step: CellStep, saved: list[str], state: str) -> int:
    """Where a step keeps the previous value of ``state`` in what it returns for the
    reverse (the saved values, then the previous states)."""
    return len(saved) + list(step.cell.state).index(state)


def _emit_recurrent_grads(step: CellStep, fn: str, saved: list[str], xp: Dialect) -> str:
    """Gradients of the stacked recurrent matrices R_s from one step (the scan adds
    them for all steps at once instead; step loops call this)."""
    lines = [
        f"def {fn}_recurrent_grads(D, d_rps, saved):",
        '    """D[R_s] += d_rp_s^T s_prev for one step."""',
    ]
    for i, s in enumerate(step.r_blocks):
        product = xp.matmul(f"d_rps[{i}].T", f"saved[{_prev_index(step, saved, s)}]")
        lines.append(f"    D['R_{s}'] += {product}")
    if not step.r_blocks:
        lines.append("    return None")
    return "\n".join(lines)


def _emit_scan(step: CellStep, fn: str, saved: list[str], xp: Dialect) -> str:
    H = step.hidden
    hoisted = bool(step.x_blocks)
    bias = "P['b_x']" if any(step.x_bias) else None
    W_x_T = "P['W_x'].T"
    projected = (
        f"{xp.matmul_bias('xs.reshape(T * B, -1)', W_x_T, bias)}.reshape(T, B, -1)"
        if hoisted
        else "[None] * T"
    )
    forward = [
        f"def {fn}(xs, mask, reverse, P, state):",
        f'    """{step.cell.name} over time: xs (T, B, {step.input_size}) -> ys (T, B, {H}), final\n'
        "    states and the tape. Steps past an example's length leave its states as they are."
        '"""',
        "    T, B = xs.shape[0], xs.shape[1]",
        f"    xp = {xp.steps(projected) if hoisted else projected}",
        f"    x_steps = {xp.steps('xs')}",
        f"    ys = {xp.buffer(f'(T, B, {H})', 'xs')}  # every step is written",
        "    tape = [None] * T",
        f"    masks = [None] * T if mask.all() else {xp.steps('mask')}  # None: no example has ended",
        "    for t in (range(T - 1, -1, -1) if reverse else range(T)):",
        f"        state, ys[t], tape[t] = {fn}_step(xp[t], x_steps[t], masks[t], state, P)",
        *xp.buffer_done("ys"),
        "    return ys, state, tape",
    ]
    backward = [
        f"def {fn}_backward(d_ys, d_state, tape, xs, mask, reverse, P, D):",
        f'    """Reverse of {fn}: gradients of xs and of the initial states; parameter\n'
        '    gradients are added to D."""',
        "    T, B = xs.shape[0], xs.shape[1]",
        f"    d_xs = {xp.lib}.zeros_like(xs)",
    ]
    shared = _shared_projection(step)  # the state whose d_rp is d_xp, if any
    if hoisted and shared is None:
        backward.append(f"    d_xp = {xp.buffer(f'(T, B, {len(step.x_blocks) * H})', 'xs')}")
    for s in step.r_blocks:
        width = len(step.r_blocks[s]) * H
        backward.append(f"    d_rp_{s} = {xp.buffer(f'(T, B, {width})', 'xs')}")
    backward += [
        f"    masks = [None] * T if mask.all() else {xp.steps('mask')}",
        f"    x_steps, d_y_steps = {xp.steps('xs')}, {xp.steps('d_ys')}",
        "    for t in (range(T) if reverse else range(T - 1, -1, -1)):",
        f"        d_xp_t, d_x_t, d_state, d_rps = {fn}_step_backward(d_state, d_y_steps[t], tape[t], x_steps[t], masks[t], P, D)",
    ]
    for i, s in enumerate(step.r_blocks):
        backward.append(f"        d_rp_{s}[t] = d_rps[{i}]")
    if hoisted and shared is None:
        backward.append("        d_xp[t] = d_xp_t")
    if step.uses_x:
        backward.append("        d_xs[t] += d_x_t")
    for s in step.r_blocks:
        backward += xp.buffer_done(f"d_rp_{s}")
    if hoisted and shared is None:
        backward += xp.buffer_done("d_xp")
    for s in step.r_blocks:
        backward.append(
            f"    prev_{s} = {xp.lib}.stack([kept[{_prev_index(step, saved, s)}] for kept in tape])"
        )
    backward += gradient_products(step, xp)
    backward.append("    return d_xs, d_state")
    return "\n".join(forward) + "\n\n\n" + "\n".join(backward)


def gradient_products(step: CellStep, xp: Dialect) -> list[str]:
    """The end of a scan's reverse: from the projection gradients of all steps
    (``d_xp``, ``d_rp_<s>``, (T, B, width)) and the previous states (``prev_<s>``), the
    gradients of xs, W_x, b_x and every R_s, each as one product over all steps."""
    hoisted = bool(step.x_blocks)
    shared = _shared_projection(step)
    W_x_T = "P['W_x'].T"
    xs_flat = "xs.reshape(T * B, -1)"
    backward = []
    if hoisted:
        backward.append(f"    d_flat = {f'd_rp_{shared}' if shared else 'd_xp'}.reshape(T * B, -1)")
        backward.append(f"    d_xs += ({xp.matmul('d_flat', W_x_T[:-2])}).reshape(xs.shape)")
        if shared:  # W_x and R_s get their gradients from one product
            both = f"{xp.cat}([{xs_flat}, prev_{shared}.reshape(T * B, -1)], axis=1)"
            backward += [
                f"    D_both = {xp.matmul('d_flat.T', both)}",
                f"    D['W_x'] += D_both[:, :{step.input_size}]",
                f"    D['R_{shared}'] += D_both[:, {step.input_size}:]",
            ]
        else:
            backward.append(f"    D['W_x'] += {xp.matmul('d_flat.T', xs_flat)}")
        if any(step.x_bias):
            backward.append("    D['b_x'] += d_flat.sum(axis=0)")
    for s in step.r_blocks:  # one product for all steps, not one per step
        if s != shared:
            product = xp.matmul(f"d_rp_{s}.reshape(T * B, -1).T", f"prev_{s}.reshape(T * B, -1)")
            backward.append(f"    D['R_{s}'] += {product}")
    return backward


def _shared_projection(step: CellStep) -> str | None:
    """The state s whose recurrent gate gradients are exactly the input ones (every
    gate reads x and s through one fused sum, as in an LSTM): then the backward keeps
    one buffer for both and gets the gradients of W_x and R_s from one product."""
    if step.fused is None:
        return None
    state, n = step.fused
    if not n == len(step.x_blocks) == len(step.r_blocks[state]):
        return None
    adjoint = reverse(step)
    for k in range(n):
        x, r = adjoint.grads.get(f"xproj:{k}"), adjoint.grads.get(f"rproj:{state}:{k}")
        if x is None or x != r:
            return None
    return state


def _emit_grads(step: CellStep, fn: str) -> str:
    H = step.hidden
    lines = [
        f"def {fn}_grads(D, prefix, grads):",
        '    """Add the gradients in D to grads, with W_x and R_s split back into their blocks."""',
    ]
    for k, b in enumerate(step.x_blocks):
        lines.append(
            f"    D[{b.param!r}][:, {b.start}:{b.stop}] += D['W_x'][{k * H}:{(k + 1) * H}]"
        )
    for k, bias in enumerate(step.x_bias):
        if bias is not None:
            lines.append(f"    D[{bias!r}] += D['b_x'][{k * H}:{(k + 1) * H}]")
    for state, blocks in step.r_blocks.items():
        for k, b in enumerate(blocks):
            lines.append(
                f"    D[{b.param!r}][:, {b.start}:{b.stop}] += D['R_{state}'][{k * H}:{(k + 1) * H}]"
            )
    params = tuple(p.name for p in step.cell.params)
    lines.append(f"    for name in {params!r}:")
    lines.append("        accumulate(grads, prefix + name, D[name])")
    return "\n".join(lines)


class CellFunctions:
    """A program's generated cell functions: one family per (cell, input size, hidden
    size), shared by every layer and depth that lowers the same cell at those sizes."""

    def __init__(self, analysis: Analysis, xp: Dialect, grads: bool = True):
        self.analysis, self.xp, self.grads = analysis, xp, grads
        self.sources: dict[str, str] = {}  # function name -> source
        self.steps: dict[str, CellStep] = {}  # function name -> the lowered step
        self.of: dict[tuple[str, int], str] = {}  # (layer, depth) -> function name
        self._by_signature: dict[tuple[str, int, int], str] = {}

    def __call__(self, name: str, k: int, layer: RecurrentLayer, width: int) -> str:
        """The function family for depth k of a layer whose depth 0 reads ``width``."""
        X = width if k == 0 else layer.output_width
        signature = (layer.cell, X, layer.hidden)
        if signature not in self._by_signature:
            function = f"cell_{name}_l{k}"
            step = lower_cell(self.analysis.cells[layer.cell], X, layer.hidden)
            self.sources[function] = emit_cell(step, function, self.xp, grads=self.grads)
            self.steps[function] = step
            self._by_signature[signature] = function
        self.of[name, k] = self._by_signature[signature]
        return self.of[name, k]

    def step(self, name: str, k: int) -> CellStep:
        """The lowered step of depth k of a layer (after it was asked for)."""
        return self.steps[self.of[name, k]]
