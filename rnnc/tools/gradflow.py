"""``rnnc gradflow``: how far back a gradient reaches through each recurrent layer.

For a loss at the last step, ``L = sum(h_T)`` of a layer's output state, the norm of
``dL/dh_t`` for every earlier step t, averaged over a batch of random inputs, with
the spec's own initialisation (``rnnc.init_params``). It is computed by the NumPy
backend's generated BPTT: the layer's step reverse applied from the last step back
to the first, exactly what training does. A simple ``rnn`` shows the vanishing
gradient courses teach; an ``lstm`` with a forget-gate bias of 1 (``param_init:
{b_f: 1.0}``; Jozefowicz et al. 2015) keeps it far longer.

Each layer is followed from its first depth in its first direction, on the steps
before it in that direction. Layers inside a step loop (feedback, additive attention)
are left out: their states also flow through what they feed back.
"""

from __future__ import annotations

import atexit
import csv
import io
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from rnnc.errors import RnncError
from rnnc.front.checks import Analysis
from rnnc.ir.program import Program
from rnnc.runtime.compiled import RunOptions
from rnnc.runtime.compiler import compile as compile_spec
from rnnc.runtime.weights import init_params
from rnnc.tools.verify import random_inputs


def gradient_flow(
    analysis: Analysis, steps: int = 100, batch: int = 16, seed: int = 0
) -> dict[str, np.ndarray]:
    """For every recurrent layer outside step loops: ``norms[t]``, the mean over the
    batch of ``||d sum(h_T) / d h_t||``, for t = 0 .. steps - 1 (T the last step)."""
    if not analysis.ok:
        raise RnncError("gradflow needs a spec without errors (rnnc check shows them)")
    # NOTE: gradflow walks the NumPy backend's own generated functions (its step
    # reverses), which the CompiledModel interface does not promise: the NumPy model's.
    model: Any = compile_spec(analysis, backend="numpy", dtype="float64")
    model.load_params(init_params(analysis, seed=seed))
    inputs, lengths = random_inputs(analysis, np.random.default_rng(seed), batch, steps, False)
    _, v, _, _ = model._run(inputs, RunOptions(lengths=lengths, seed=seed))
    looped = {n for group in Program(analysis).loops() for n in group}
    flows = {}
    for name, layer in analysis.spec.recurrent_layers().items():
        if name in looped:
            continue
        cell = analysis.cells[layer.cell]
        d = layer.directions[0]
        run = f"{name}.{d}.l0"
        function = model.functions[name, 0]
        step_backward = model.namespace[f"{function}_step_backward"]
        scan = next(op for op in model.network.ops if op.out == f"{run}:scan")
        tape, P, xs = v[run + ":tape"], v[run + ":P"], v[scan.args[0]]
        D = model.namespace["zeros_like_all"](P)
        T, B = xs.shape[0], xs.shape[1]
        out = cell.state.index(cell.output)
        H = layer.hidden
        d_state = tuple(np.full((B, H), 1.0 if i == out else 0.0) for i in range(len(cell.state)))
        norms = np.zeros(T)
        order = range(T - 1, -1, -1) if d == "fwd" else range(T)  # from the last step back
        for t in order:
            norms[t] = float(np.mean(np.linalg.norm(d_state[out], axis=1)))
            _, _, d_state, _ = step_backward(d_state, np.zeros((B, H)), tape[t], xs[t], None, P, D)
        flows[name] = norms if d == "fwd" else norms[::-1].copy()
    if not flows:
        raise RnncError("gradflow found no recurrent layer outside a step loop to follow")
    return flows


def slope(norms: np.ndarray) -> float:
    """Decades per step of the norm, fitted by least squares over the steps back from
    the last (negative: the gradient shrinks going back); nan when fewer than two
    steps have a finite norm (a line needs two points)."""
    back = np.arange(len(norms))[::-1].astype(np.float64)  # steps back from the last
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(np.maximum(norms, 1e-300))
    finite = np.isfinite(logs)
    if np.count_nonzero(finite) < 2:
        return float("nan")
    x, y = back[finite], logs[finite]
    x_centred = x - x.mean()
    return float(np.dot(x_centred, y - y.mean()) / np.dot(x_centred, x_centred))


def csv_text(flows: Mapping[str, np.ndarray]) -> str:
    """layer, step, steps_back, grad_norm: one row per layer and step."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["layer", "step", "steps_back", "grad_norm"])
    for name, norms in flows.items():
        T = len(norms)
        for t, value in enumerate(norms):
            writer.writerow([name, t, T - 1 - t, f"{value:.6e}"])
    return out.getvalue()


def plot_png(flows: Mapping[str, np.ndarray], title: str, cells: Mapping[str, str]) -> bytes:
    """The gradient norms against steps back from the loss, log scale, one line per
    layer (labelled with its cell and fitted decades per step)."""
    plt = pyplot("the gradflow picture", "or write the numbers alone with -o FILE.csv")
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, norms in flows.items():
        back = np.arange(len(norms))[::-1]
        fitted = slope(norms)
        label = f"{name} ({cells[name]})"
        if math.isfinite(fitted):
            label += f": {fitted:+.3f} decades/step"
        axes.semilogy(back, np.maximum(norms, 1e-300), label=label, linewidth=1.8)
    axes.set_xlabel("steps back from the loss at the last step")
    axes.set_ylabel("||dL / dh_t||")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return png_bytes(figure)


def pyplot(picture: str, otherwise: str = "") -> Any:
    """``matplotlib.pyplot`` drawing off screen (Agg), for ``picture``; an RnncError
    saying how to install it (and ``otherwise``, what works without it) when it is
    missing. matplotlib is the optional extra ``plot``."""
    _private_matplotlib_config()
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the environment
        raise RnncError(
            f"{picture} needs matplotlib: pip install 'rnnc[plot]'"
            + (f" ({otherwise})" if otherwise else "")
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure: Any) -> bytes:
    """A figure from :func:`pyplot` as PNG bytes (without the matplotlib version in
    its metadata, so the same picture gives the same bytes), laid out tight unless it
    has a layout of its own; the figure is closed."""
    import matplotlib.pyplot as plt

    if figure.get_layout_engine() is None:
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _private_matplotlib_config() -> None:
    """Point matplotlib's cache and config at a temporary folder removed at exit, so
    drawing writes nothing in the user's home (unless MPLCONFIGDIR says where, or
    matplotlib is already in use in this process)."""
    if "MPLCONFIGDIR" in os.environ or "matplotlib" in sys.modules:
        return
    folder = tempfile.mkdtemp(prefix="rnnc-matplotlib-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = folder


def describe(flows: Mapping[str, np.ndarray], cells: Mapping[str, Any]) -> str:
    """A table: per layer, the norm at the last step, 10, 50 and T-1 steps back, and
    the fitted decades per step ("-" where a sequence is too short for one)."""

    def number(value: float, form: str, width: int) -> str:
        return f"{value:{width}{form}}" if math.isfinite(value) else "-".rjust(width)

    lines = [
        f"{'layer':16} {'cell':14} {'last':>9} {'-10':>9} {'-50':>9} {'first':>9} {'decades/step':>13}"
    ]
    for name, norms in flows.items():
        T = len(norms)
        at = [norms[T - 1 - k] if T - 1 - k >= 0 else float("nan") for k in (0, 10, 50)]
        values = [number(v, ".2e", 9) for v in (*at, norms[0])]
        lines.append(
            f"{name:16} {cells[name]:14} {' '.join(values)} {number(slope(norms), '.4f', 13)}"
        )
    return "\n".join(lines)
