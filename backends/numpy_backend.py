"""The NumPy backend: a checked spec -> a readable Python module importing only NumPy.

The module has a ``forward`` that runs the model and keeps what the backward pass
needs, and a ``backward`` (BPTT) derived from the cell equations by
:func:`rnnc.ir.lower.reverse`: reverse-mode code, generated as source, no autograd.

Layout inside the module: values are time-major ``(T, B, width)``; inputs and outputs
are batch-first as the CompiledModel contract says. Every recurrent layer, depth and
direction runs a ``scan_*`` function generated from its lowered cell step, with the
input projections of all steps done in one matrix product before the loop and the
recurrent products of all gates stacked into one per state per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import rnnc
from rnnc.errors import RnncError
from rnnc.front.checks import Analysis
from rnnc.front.spec import TokenInput
from rnnc.ir.lower import Op, OpKind
from rnnc.ir.network import LoopBack, Scan, lower_network, reverse_network
from rnnc.runtime.compiled import (
    CompiledModelBase,
    Loss,
    RunOptions,
    dropout_generator,
    load_module,
    module_header,
)
from rnnc.runtime.params import param_shapes, require_memory

from .emit import NUMPY, function_definitions, pack, used_helpers
from .writer import ModuleWriter, Statement

# The NumPy sigmoid: the one function written here rather than from rnnc.front.functions.
SIGMOID = '''\
def sigmoid(a):
    """1 / (1 + exp(-a)), as 0.5 (1 + tanh(a / 2)): one transcendental call, no overflow."""
    y = np.tanh(0.5 * a)
    y += 1.0  # in place: no more temporaries
    y *= 0.5
    return y
'''

PRELUDE = (
    "import numpy as np\n\n\n"
    + function_definitions(NUMPY, {"sigmoid": SIGMOID})
    + '''


def softmax(a):
    e = flushed_exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(a):
    shifted = a - a.max(axis=-1, keepdims=True)
    return shifted - np.log(flushed_exp(shifted).sum(axis=-1, keepdims=True))


def flushed_exp(a):
    """exp(a) for a <= 0, flushed to exactly 0 below -cut so no later product underflows
    (cut: 200 in float64, where exp is 1e-87; 25 in float32, where it is 1e-11)."""
    cut = 25.0 if np.result_type(a) == np.float32 else 200.0
    return np.where(a > -cut, np.exp(np.maximum(a, -cut)), 0.0)


def shift(values, delay):
    """values[t - delay] at step t, zeros before (a recurrent edge across time)."""
    out = np.zeros_like(values)
    out[delay:] = values[: values.shape[0] - delay]
    return out


def unshift(grad, delay):
    """The reverse of shift."""
    out = np.zeros_like(grad)
    out[: grad.shape[0] - delay] = grad[delay:]
    return out


def accumulate(grads, name, value):
    """grads[name] += value, starting from the first contribution."""
    grads[name] = value if name not in grads else grads[name] + value


def step_mask(lengths, steps):
    """(T, B, 1) booleans: true where step t is within the example's length."""
    return (np.arange(steps)[:, None] < lengths[None, :])[:, :, None]
'''
)


BLOCK_HELPER = '''

def zeros_like_all(arrays):
    """A dict of zero arrays shaped like the given ones (gradients to add into); the
    R_s_T are transposed copies for the forward, whose gradients go to R_s."""
    return {name: np.zeros_like(value) for name, value in arrays.items() if name[-2:] != "_T"}
'''


# --- the module, written from rnnc.ir.network's ops and their reverse --------------------


class _Writer(ModuleWriter):
    """Writes the module's ``forward`` and the ``backward`` derived from it
    (rnnc.ir.network.reverse_network): the statements below are NumPy's own."""

    def __init__(self, analysis: Analysis):
        net = lower_network(analysis)
        super().__init__(analysis, net, NUMPY, grads=True)
        self.back = reverse_network(net)
        for op in self.back.ops:
            if op.kind == OpKind.LOOP_BACK:
                self.saved[self._loop_of(op)] = op.attr.saved

    # --- statements ---------------------------------------------------------------

    def scan(self, op: Op, a: list[str]) -> list[str]:
        xs, mask, P, *starts = a
        scan: Scan = op.attr
        reverse = scan.direction == "bwd"
        return [
            f"{self.name(op.out)} = {self.function(scan)}({xs}, {mask}, {reverse}, {P}, {pack(starts)})"
        ]

    def scan_back(self, op: Op, a: list[str]) -> list[str]:
        scan: Scan = op.attr
        d_ys, *rest = a
        *d_finals, tape, xs, mask, P = rest
        fn = self.function(scan)
        return [
            f"D = zeros_like_all({P})",
            f"{self.name(op.out)} = {fn}_backward({d_ys}, {pack(d_finals)}, {tape}, {xs}, {mask}, "
            f"{scan.direction == 'bwd'}, {P}, D)",
            f"{fn}_grads(D, {scan.prefix!r}, grads)",
        ]

    def cell_step_back(self, op: Op, a: list[str]) -> list[str]:
        *d_states, d_y, tape, x, mask_t, P = a
        fn = self.cells.of[op.attr.layer, op.attr.depth]
        step = self.cells.steps[fn]
        D = f"D_{P}"
        lines = [
            f"d_xp, d_x, d_prev, d_rps = {fn}_step_backward({pack(d_states)}, {d_y}, {tape}, {x}, {mask_t}, {P}, {D})",
            f"{fn}_recurrent_grads({D}, d_rps, {tape})",
            f"d_in = np.zeros_like({x})",
            "if d_xp is not None:",
            f"    d_in = d_in + d_xp @ {P}['W_x']",
            f"    {D}['W_x'] += d_xp.T @ {x}",
        ]
        if any(step.x_bias):
            lines.append(f"    {D}['b_x'] += d_xp.sum(axis=0)")
        lines += ["if d_x is not None:", "    d_in = d_in + d_x"]
        lines.append(f"{self.name(op.out)} = (d_in, d_prev)")
        return lines

    def loop_back(self, op: Op, a: list[str]) -> list[str]:
        back: LoopBack = op.attr
        loop = back.loop
        m, n = len(loop.writes), len(loop.carries)
        d_writes, d_finals, tape = a[:m], a[m : m + n], a[m + n]
        lines = [
            f"# Reverse of the step loop over {loop.axis!r}",
            f"T, B = {self.name(loop.mask)}.shape[:2]",
        ]
        for (member, _), d in zip(loop.writes, d_writes, strict=True):
            lines.append(f"{self.local(f'dbuf:{member}')} = np.array({d})")
            self.inline[f"dbuf:{member}"] = f"{self.local(f'dbuf:{member}')}[t]"
        for c, d in zip(loop.carries, d_finals, strict=True):
            lines.append(f"{self.local(f'dcarry:{c.name}')} = {d}")
            self.inline[f"dcarry:{c.name}"] = self.local(f"dcarry:{c.name}")
        sums: dict[str, list[str]] = {var: [] for var in back.results}
        for array in dict.fromkeys(arr for _, arr, _ in back.at):
            acc = self.local(f"acc_at:{array}")
            lines.append(f"{acc} = np.zeros_like({self.name(array)})")
            sums[array].append(acc)
        for _, var in back.whole:
            acc = self.local(f"acc:{var}")
            lines.append(f"{acc} = 0.0")
            sums[var].append(acc)
        packs = [o for o in loop.ops if o.kind == OpKind.CELL_STEP]
        for o in packs:
            P = self.name(o.args[2])
            lines.append(f"D_{P} = zeros_like_all({P})")
        lines.append("for t in reversed(range(T)):")
        if back.saved:
            lines.append(f"    {', '.join(self.name(s) for s in back.saved)}, = {tape}[t]")
        lines += self.lines(back.recomputed, "    ")
        lines += self.lines(back.ops, "    ")
        for grad, array, delay in back.at:
            target = f"{self.local(f'acc_at:{array}')}[t - {delay}]"
            lines += self._accumulate_at(target, self.name(grad), delay)
        for grad, member, delay in back.past:
            target = f"{self.local(f'dbuf:{member}')}[t - {delay}]"
            lines += self._accumulate_at(target, self.name(grad), delay)
        for grad, var in back.whole:
            acc = self.local(f"acc:{var}")
            lines.append(f"    {acc} = {acc} + {self.name(grad)}")
        for carry, d_before in back.carries:
            d = self.local(f"dcarry:{carry}")
            lines.append(f"    {d} = {self.name(d_before) if d_before else f'np.zeros_like({d})'}")
        for o in packs:
            P = self.name(o.args[2])
            scan = next(p.attr for p in self.net.ops if p.out == o.args[2])
            lines.append(f"{self.function(scan)}_grads(D_{P}, {scan.prefix!r}, grads)")
        for c in loop.carries:
            if c.init in sums:
                sums[c.init].append(self.local(f"dcarry:{c.name}"))
        results = [" + ".join(sums[var]) for var in back.results]
        lines.append(f"{self.name(op.out)} = {pack(results)}")
        return lines

    @staticmethod
    def _accumulate_at(target: str, grad: str, delay: int) -> list[str]:
        if not delay:
            return [f"    {target} += {grad}"]
        return [f"    if t >= {delay}:", f"        {target} += {grad}"]

    # --- the module ---------------------------------------------------------------

    def module(self, header: str) -> str:
        forward_lines = self.lines(self.net.ops, "    ")
        forward_vars = {op.out for op in self.net.ops}
        kept = [
            a for a in dict.fromkeys(a for o in self.back.ops for a in o.args) if a in forward_vars
        ]
        kept += [o.out for o in self.net.ops if o.kind in (OpKind.PACK,) or o.out.endswith(":tape")]
        kept += [o.args[0] for o in self.net.ops if o.kind == OpKind.SCAN]
        kept = [k for k in dict.fromkeys(kept) if k not in self.inline]
        forward = [
            "def forward(params, inputs, lengths, dtype=np.float64, tf_masks=None, dropout=None):",
            '    """Run the model. inputs are batch-first; lengths maps each sequence input\n'
            "    to (B,) lengths; tf_masks maps a time axis to (B, T) booleans: where true a\n"
            "    layer with feedback reads the ground truth, else its own previous prediction\n"
            "    (default: the ground truth); dropout is None (off) or a numpy Generator for\n"
            '    the masks. Returns (outputs, v): v keeps what backward needs."""',
            "    tf_masks = tf_masks or {}",
            "    outputs = {}",
            *forward_lines,
            "    v = {" + ", ".join(f"{k!r}: {self.name(k)}" for k in kept) + "}",
            "    return outputs, v",
        ]
        backward = [
            "def backward(params, inputs, lengths, v, cotangents, dtype=np.float64):",
            '    """Gradients of sum(output * cotangent) for every parameter and real input."""',
            "    grads = {}",
            *(f"    {self.name(k)} = v[{k!r}]" for k in kept),
            *self.lines(self.back.ops, "    "),
        ]
        for name, grad in self.back.params.items():
            backward.append(f"    accumulate(grads, {name!r}, {self.name(grad)})")
        real = [
            n for n, inp in self.analysis.spec.inputs.items() if not isinstance(inp, TokenInput)
        ]
        backward += [
            "    for name, value in params.items():",
            "        if name not in grads:",
            "            grads[name] = np.zeros_like(value)",
            "    input_grads = {"
            + ", ".join(f"{n!r}: {self.name(g)}" for n, g in self.back.inputs.items())
            + "}",
            f"    for name in {tuple(real)!r}:  # real inputs no output depends on",
            "        if name not in input_grads:",
            "            input_grads[name] = np.zeros(np.shape(inputs[name]), dtype=dtype)",
            "    return {**grads, **input_grads}",
        ]
        body = [*self.cells.sources.values(), "\n".join(forward), "\n".join(backward)]
        contract = self.step_contract()
        if contract:
            body.append(contract)
        helpers = used_helpers(LIBRARY, "\n".join(body), keep=RUNTIME_HELPERS)
        return "\n\n\n".join([header, helpers, *body]) + "\n"

    def _loop_of(self, op: Op) -> str:
        """The forward loop op a LOOP_BACK reverses."""
        back: LoopBack = op.attr
        for o in self.net.ops:
            if o.kind == OpKind.LOOP and o.attr is back.loop:
                return o.out
        raise AssertionError("a loop's reverse without its loop")


STATEMENTS: dict[OpKind, Statement] = {
    OpKind.SCAN: _Writer.scan,  # type: ignore[dict-item]
    OpKind.SCAN_BACK: _Writer.scan_back,  # type: ignore[dict-item]
    OpKind.CELL_STEP: ModuleWriter.cell_step,
    OpKind.CELL_STEP_BACK: _Writer.cell_step_back,  # type: ignore[dict-item]
    OpKind.OUTPUT: ModuleWriter.output,
    OpKind.LOOP: ModuleWriter.loop,
    OpKind.LOOP_BACK: _Writer.loop_back,  # type: ignore[dict-item]
}
_Writer.statements = STATEMENTS


# Helpers the runtime looks up by name (rnnc gradflow), kept whether the module uses them.
RUNTIME_HELPERS = ("zeros_like_all",)

GRAD_HELPERS = """
def rows(a):
    \"\"\"Every row of an array of any rank: (..., width) -> (N, width).\"\"\"
    return a.reshape(-1, a.shape[-1])


def scatter_rows(table, ids, d):
    \"\"\"The gradient of table[ids]: each row of d added into the row it was read from.\"\"\"
    out = np.zeros_like(table)
    np.add.at(out, ids, d)
    return out


def at_last(d, like, lengths):
    \"\"\"The gradient of each example's last valid step: zeros like ``like`` elsewhere.\"\"\"
    out = np.zeros_like(like)
    out[lengths - 1, np.arange(like.shape[1])] = d
    return out


def at_max(d, values, top):
    \"\"\"The gradient of a maximum over time: d shared evenly by the steps that reach it.\"\"\"
    hit = values == top[None]
    return hit * (d / hit.sum(axis=0, dtype=d.dtype))[None]


def dropout_mask(dropout, shape, p, dtype):
    \"\"\"Inverted dropout: 0 or 1 / (1 - p) per entry, drawn from the generator; ones
    when dropout is off (None).\"\"\"
    if dropout is None:
        return np.ones(shape, dtype=dtype)
    return (dropout.random(shape) >= p).astype(dtype) / (1 - p)


def cotangent(cotangents, name, like):
    \"\"\"The gradient given for an output, zeros when none is.\"\"\"
    if name not in cotangents:
        return np.zeros_like(like)
    return np.asarray(cotangents[name], dtype=like.dtype)
"""


# Every helper a NumPy module may need; each module carries the ones it uses.
LIBRARY = "\n\n\n".join([PRELUDE.rstrip(), BLOCK_HELPER.strip(), GRAD_HELPERS.strip()])


def generate(analysis: Analysis) -> str:
    """The source of a standalone NumPy module for a checked spec."""
    return _generate(analysis)[0]


def _generate(analysis: Analysis) -> tuple[str, _Writer]:
    """The source, and the writer that wrote it (the ops, the cell functions)."""
    writer = _Writer(analysis)
    return writer.module(module_header(analysis, "NumPy", "numpy")), writer


class NumpyModel(CompiledModelBase):
    """A compiled model on the NumPy backend (the CompiledModel interface)."""

    backend = "numpy"

    def __init__(self, analysis: Analysis, dtype: str = "float64"):
        self.analysis = analysis
        self.dtype = np.dtype(dtype)
        self.source, writer = _generate(analysis)
        self.functions = writer.cells.of  # (layer, depth) -> its cell functions' name
        self.network = writer.net  # the ops the module was written from
        self._shapes = param_shapes(analysis)
        # The generated functions, kept for tools like rnnc gradflow.
        self.namespace = load_module(self.source, analysis, "numpy")
        self._forward = self.namespace["forward"]
        self._backward = self.namespace["backward"]
        self._loaded: dict[str, np.ndarray] | None = None  # see _params

    @property
    def _params(self) -> dict[str, np.ndarray]:
        """The parameters; rnnc.init_params(seed=0) drawn on first use, so compiling
        allocates none (``rnnc compile`` of a model too big to run still works)."""
        if self._loaded is None:
            require_memory(self._shapes, 8 + self.dtype.itemsize)  # drawn, then cast
            initial = rnnc.init_params(self.analysis, seed=0)
            self._loaded = {k: v.astype(self.dtype) for k, v in initial.items()}
        return self._loaded

    def load_params(self, params: Mapping[str, np.ndarray]) -> None:
        checked = rnnc.check_params(params, self._shapes, dtype=self.dtype)
        self._loaded = {k: np.asarray(v, dtype=self.dtype) for k, v in checked.items()}

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._params.items()}

    def _outputs(self, inputs: Mapping[str, Any], options: RunOptions) -> dict[str, np.ndarray]:
        return self._run(inputs, options)[0]  # type: ignore[no-any-return]

    def _contract_arguments(
        self, inputs: dict[str, Any], lengths: dict[str, np.ndarray]
    ) -> tuple[Any, Any, Any]:
        return self._params, inputs, lengths

    def _value_and_grad(
        self, inputs: Mapping[str, Any], loss: Loss, options: RunOptions
    ) -> tuple[float, dict[str, np.ndarray]]:
        outputs, saved, inputs_, lengths_ = self._run(inputs, options)
        value, cotangents = loss(outputs)
        grads = self._backward(self._params, inputs_, lengths_, saved, cotangents, self.dtype)
        return value, {k: v for k, v in grads.items() if k in self._shapes or k in inputs}

    def _run(self, inputs: Mapping[str, Any], options: RunOptions) -> tuple[Any, ...]:
        """The forward pass: outputs, what backward needs, and the prepared inputs."""
        inputs_, lengths_, masks = options.prepare(self.analysis, inputs)
        dropout = dropout_generator(options.mode, options.dropout_seed)
        outputs, saved = self._forward(self._params, inputs_, lengths_, self.dtype, masks, dropout)
        return outputs, saved, inputs_, lengths_


class NumpyBackend:
    """The entry point ``rnnc.backends: numpy``."""

    name = "numpy"

    def compile(self, analysis: Analysis, dtype: str = "float32", **options: Any) -> NumpyModel:
        if options:
            raise RnncError(f"the numpy backend takes no options {sorted(options)}")
        return NumpyModel(analysis, dtype)


BACKEND = NumpyBackend()
