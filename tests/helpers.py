"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import shlex
import shutil
import textwrap
from typing import Any

from rnnc.tools.verify import random_inputs

__all__ = [
    "c_compiler",
    "directional_errors",
    "python_scans",
    "random_inputs",
    "spec_text",
    "torch_grads",
]


def c_compiler() -> str | None:
    """The C compiler the torch backend's C steps would be built with ($CC, else cc),
    as a path, or None where there is none."""
    return shutil.which(shlex.split(os.environ.get("CC") or "cc")[0])


def python_scans(model: Any) -> None:
    """Make a compiled torch model run its Python scans, not the cells' C steps."""
    model.namespace["_native"]["library"] = None


def torch_grads(module: Any, layer: str, cell: str, depth: int, bidirectional: bool) -> dict:
    """The gradients of a torch.nn.RNN/LSTM/GRU's parameters under rnnc's names: the
    gradient of a matrix over [x, h] is its two blocks side by side; rnnc's single bias
    has the gradient of either of PyTorch's two (they enter the same sum), except in
    GRU's candidate."""
    from rnnc.runtime.interop import from_torch

    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    hidden = module.hidden_size
    for name, value in grads.items():
        if name.startswith("bias_hh"):  # counted once, through bias_ih
            value[: 2 * hidden if cell == "gru" else None] = 0.0
    return from_torch(grads, layer, cell, depth, bidirectional)


def spec_text(text: str) -> str:
    """Dedent a spec written inline in a test."""
    return textwrap.dedent(text).lstrip("\n")


def directional_errors(
    model, inputs, lengths, rng, eps: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-6)
):
    """Relative error of vjp against finite differences, per parameter and real input.

    For each parameter (and real input) u is a random direction, and the vjp's
    <grad, u> is compared with the fourth-order central difference of
    L = sum(outputs * cotangents) along u:
    (-L(2e) + 8 L(e) - 8 L(-e) + L(-2e)) / (12 eps). Its truncation error is
    O(eps^4) and its rounding error O(1e-16 L / eps). No single step suits every case:
    a large step crosses kinks of relu, a small one loses a derivative that is small
    next to L to rounding. So several steps are tried and the smallest error is kept;
    a wrong gradient is wrong at every step.
    """

    outputs = model.run(inputs, lengths=lengths)
    cotangents = {k: rng.standard_normal(v.shape) for k, v in outputs.items()}
    grads = model.vjp(inputs, cotangents, lengths=lengths)
    params = model.params()

    def loss(p, inp):
        model.load_params(p)
        out = model.run(inp, lengths=lengths)
        return sum(float((out[k] * cotangents[k]).sum()) for k in out)

    def differences(along):  # along(step) -> L at that step along the direction
        return [
            (-along(2 * e) + 8 * along(e) - 8 * along(-e) + along(-2 * e)) / (12 * e) for e in eps
        ]

    def error(numeric, analytic):
        # Relative to the derivative, but not below 1e-4 in absolute terms: a derivative
        # far smaller than L (~1) is lost to rounding at every step, while a wrong one
        # still shows (an error of 1e-10 in a derivative of 1e-10 reads 1e-6).
        return min(abs(n - analytic) / max(abs(n), abs(analytic), 1e-4) for n in numeric)

    errors = {}
    for name, value in params.items():
        u = rng.standard_normal(value.shape)
        numeric = differences(
            lambda s, name=name, value=value, u=u: loss({**params, name: value + s * u}, inputs)
        )
        errors[name] = error(numeric, float((grads[name] * u).sum()))
    model.load_params(params)
    for name, value in inputs.items():
        if value.dtype.kind != "f":
            continue
        u = rng.standard_normal(value.shape)
        numeric = differences(
            lambda s, name=name, value=value, u=u: loss(params, {**inputs, name: value + s * u})
        )
        errors[f"input:{name}"] = error(numeric, float((grads[name] * u).sum()))
    return errors
