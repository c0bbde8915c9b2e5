"""``rnnc verify``: every backend on the same parameters and inputs, compared.

Each backend gets the parameters of ``rnnc.init_params(spec, seed)``, the same random
inputs (ragged lengths and a random teacher-forcing mask unless told otherwise) and
the same random cotangents. The first backend is the reference; for every output and
every gradient (parameters and real inputs) the report gives the largest absolute
difference and the relative one, ``max|a - b| / max(max|a|, 1e-4)``: relative to the
reference's largest entry, so an entry near zero does not make noise, and to 1e-4 at
least, so a gradient that has all but vanished is held to the rounding of the terms
it came from rather than to its own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnc.checks import Analysis
from rnnc.compiler import compile
from rnnc.errors import RnncError
from rnnc.program import time_axes
from rnnc.spec import Spec, TokenInput
from rnnc.weights import init_params

TOLERANCE = {"float64": 1e-9, "float32": 1e-4}


@dataclass(frozen=True)
class Row:
    """One compared array: an output or a gradient, in one mode, for one backend."""

    mode: str
    what: str  # "output" | "grad"
    name: str
    backend: str  # compared with the reference backend
    abs_diff: float
    rel_diff: float
    ok: bool


def random_inputs(
    spec: Spec | Analysis,
    rng: np.random.Generator,
    batch: int = 3,
    steps: int = 5,
    ragged: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random inputs (normal reals, uniform token ids) and lengths for every input;
    the first example is always full length, the others random when ``ragged``."""
    inputs: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    spec = spec.spec if isinstance(spec, Analysis) else spec
    for name, inp in spec.inputs.items():
        shape: tuple[int, ...] = (batch, steps) if inp.sequence else (batch,)
        if isinstance(inp, TokenInput):
            inputs[name] = rng.integers(0, inp.vocab, shape)
        else:
            inputs[name] = rng.standard_normal((*shape, inp.size))
        if inp.sequence:
            length = rng.integers(1, steps + 1, batch) if ragged else np.full(batch, steps)
            length[0] = steps
            lengths[name] = length
    return inputs, lengths


# Below this size an array's differences count against this scale instead of its own:
# a gradient that has vanished to 1e-10 (saturated tanh, say) carries rounding errors
# of the size of the terms that cancelled in it, not of its own size.
SCALE_FLOOR = 1e-4


def _compare(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape:
        return float("inf"), float("inf")
    if reference.size == 0:
        return 0.0, 0.0
    diff = float(np.max(np.abs(reference - other)))
    scale = max(float(np.max(np.abs(reference))), SCALE_FLOOR)
    return diff, diff / scale


def verify(
    analysis: Analysis,
    backends: Sequence[str] = ("numpy", "torch"),
    dtype: str = "float64",
    ragged: bool = True,
    modes: Sequence[str] = ("train", "generate"),
    seed: int = 0,
    batch: int = 3,
    steps: int = 5,
) -> list[Row]:
    """Rows comparing every backend after the first with the first (see the module doc)."""
    if len(backends) < 2:
        raise RnncError("verify needs at least two backends to compare")
    _, fed_axes, _ = time_axes(analysis)
    if "generate" in modes and not fed_axes and list(modes) == ["generate"]:
        raise RnncError("mode 'generate' needs a layer with feedback; this spec has none")
    modes = [m for m in modes if m == "train" or fed_axes]
    rng = np.random.default_rng(seed)
    params = init_params(analysis, seed=seed)
    inputs, lengths = random_inputs(analysis, rng, batch, steps, ragged)
    models = []
    for name in backends:
        model = compile(analysis, backend=name, dtype=dtype)
        model.load_params(params)
        models.append(model)
    rows: list[Row] = []
    tolerance = TOLERANCE[dtype]
    for mode in modes:
        options: dict[str, Any] = {"lengths": lengths, "mode": mode}
        if mode == "train":
            options["tf_mask"] = {axis: rng.random((batch, steps)) < 0.5 for axis in fed_axes}
        else:
            options["steps"] = steps
        results = [model.run(inputs, **options) for model in models]
        cotangents = {k: rng.standard_normal(np.shape(v)) for k, v in results[0].items()}
        grads = [model.vjp(inputs, cotangents, **options) for model in models]
        for backend, result, grad in zip(backends[1:], results[1:], grads[1:], strict=True):
            for what, ref, other in (("output", results[0], result), ("grad", grads[0], grad)):
                for key in sorted(set(ref) | set(other)):
                    if key in ref and key in other:
                        a, r = _compare(ref[key], other[key])
                    else:
                        a = r = float("inf")
                    rows.append(Row(mode, what, key, backend, a, r, r <= tolerance))
    return rows


def format_rows(rows: Sequence[Row], reference: str) -> str:
    """A plain-text table of verify's rows."""
    header = ("mode", "what", "name", f"vs {reference}", "max abs", "max rel", "")
    body = [
        (
            r.mode,
            r.what,
            r.name,
            r.backend,
            f"{r.abs_diff:.2e}",
            f"{r.rel_diff:.2e}",
            "ok" if r.ok else "DIFFERS",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    ]
    return "\n".join(lines)
