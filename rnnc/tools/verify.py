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

from rnnc.errors import RnncError
from rnnc.front.checks import Analysis
from rnnc.front.spec import Spec, TokenInput
from rnnc.ir.program import time_axes
from rnnc.runtime.compiler import compile
from rnnc.runtime.weights import init_params

TOLERANCE = {"float64": 1e-9, "float32": 1e-4}


@dataclass(frozen=True)
class Row:
    """One compared array: an output or a gradient, in one mode, for one backend."""

    mode: str
    what: str  # "output" | "grad"
    name: str
    backend: str  # compared with the reference backend
    abs_diff: float  # over the entries finite on both backends
    rel_diff: float
    ok: bool  # finite on both, and within the tolerance
    not_finite: tuple[int, int] = (0, 0)  # nan/inf entries: on the reference, on this one
    size: int = 0

    @property
    def finite(self) -> bool:
        return self.not_finite == (0, 0)

    def not_finite_on(self, reference: str) -> str:
        """Where entries are not finite: ``numpy 3 of 12, torch 3 of 12``."""
        counts = zip((reference, self.backend), self.not_finite, strict=True)
        return ", ".join(f"{name} {bad} of {self.size}" for name, bad in counts if bad)

    def verdict(self, reference: str) -> str:
        """``ok``, ``DIFFERS``, or where and how many entries are not finite."""
        if not self.finite:
            return f"NOT FINITE on {self.not_finite_on(reference)}"
        return "ok" if self.ok else "DIFFERS"


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


def _compare(
    mode: str, what: str, name: str, backend: str, tolerance: float, reference: Any, other: Any
) -> Row:
    """The row comparing one array: differences over the entries finite on both, and
    the count of entries that are not finite on each (such a row never passes)."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape:
        return Row(mode, what, name, backend, float("inf"), float("inf"), False)
    good_reference, good_other = np.isfinite(reference), np.isfinite(other)
    not_finite = (int(np.count_nonzero(~good_reference)), int(np.count_nonzero(~good_other)))
    both = good_reference & good_other
    if not np.any(both):
        diff = rel = 0.0
    else:
        diff = float(np.max(np.abs(reference[both] - other[both])))
        rel = diff / max(float(np.max(np.abs(reference[both]))), SCALE_FLOOR)
    ok = not_finite == (0, 0) and rel <= tolerance
    return Row(mode, what, name, backend, diff, rel, ok, not_finite, reference.size)


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
        with np.errstate(all="ignore"):  # overflow is reported per array, below
            results = [model.run(inputs, **options) for model in models]
            cotangents = {k: rng.standard_normal(np.shape(v)) for k, v in results[0].items()}
            grads = [model.vjp(inputs, cotangents, **options) for model in models]
        for backend, result, grad in zip(backends[1:], results[1:], grads[1:], strict=True):
            for what, ref, other in (("output", results[0], result), ("grad", grads[0], grad)):
                for key in sorted(set(ref) | set(other)):
                    if key in ref and key in other:
                        row = _compare(mode, what, key, backend, tolerance, ref[key], other[key])
                    else:
                        row = Row(mode, what, key, backend, float("inf"), float("inf"), False)
                    rows.append(row)
    return rows


def summary(rows: Sequence[Row], dtype: str) -> str:
    """One line for a spec's rows: ``agree``, or how many differ and how many are not
    finite; the worst relative difference among the arrays finite everywhere; the
    tolerance."""
    differ = sum(not r.ok and r.finite for r in rows)
    not_finite = sum(not r.finite for r in rows)
    counts = ((differ, "DIFFER"), (not_finite, "NOT FINITE"))
    verdict = " and ".join(f"{n} of {len(rows)} {word}" for n, word in counts if n) or "agree"
    finite = [r.rel_diff for r in rows if r.finite]
    worst = "no array finite on every backend"
    if finite:
        among = " among the finite arrays" if not_finite else ""
        worst = f"worst relative difference{among} {max(finite):.1e}"
    return f"{verdict} ({len(rows)} arrays, {dtype}, {worst}, tolerance {TOLERANCE[dtype]:.0e})"


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
            r.verdict(reference),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    ]
    return "\n".join(lines)
