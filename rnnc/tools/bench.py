"""``rnnc bench``: time every installed backend against PyTorch's own RNN layers.

For each backend: forward (``run``) and forward+backward (``vjp``), the median of
repeats, in milliseconds; GFLOP/s from the matrix products the spec implies (forward
2 B T rows cols per matrix and direction; forward+backward three times that); peak
memory of the NumPy arrays allocated (tracemalloc sees NumPy's allocations, not
PyTorch's). Where the spec is a plain stack of a built-in cell that PyTorch has
(rnn, rnn_relu, lstm, gru) on one vector input, ``torch.nn.RNN/LSTM/GRU`` is timed in
the same run with the same number of threads, and every row gets its ratio to it;
a variant PyTorch lacks (lstm_peephole, lstm_cifg, gru_reset_before) is held to its
nearest PyTorch layer (LSTM, GRU) of the same sizes.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnc.front.checks import Analysis
from rnnc.front.spec import RecurrentLayer, VectorInput
from rnnc.runtime.compiler import compile as compile_spec
from rnnc.runtime.params import param_shapes
from rnnc.runtime.registry import load_backend, usable_backends

TORCH_LAYERS = {"rnn": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}
# Cells PyTorch has no layer for are timed against their nearest relative: the
# yardstick a user of torch.nn would hold a variant to.
NEAREST = {"lstm_peephole": "LSTM", "lstm_cifg": "LSTM", "gru_reset_before": "GRU"}


@dataclass(frozen=True)
class Row:
    name: str
    task: str  # "forward" | "forward+backward"
    ms: float
    gflops: float
    peak_mib: float | None
    ratio: float | None = None
    against: str = ""  # what the ratio is to: torch.nn's layer, or greedy decoding


def flops(analysis: Analysis, batch: int, steps: int) -> float:
    """Floating-point operations of the forward pass's matrix products."""
    total = 0
    for name, shape in param_shapes(analysis).items():
        if len(shape) == 2 and not name.endswith(".embedding"):
            total += 2 * batch * steps * shape[0] * shape[1]
    return float(total)


def torch_reference(analysis: Analysis) -> tuple[str, RecurrentLayer, int] | None:
    """(torch class, layer, input size) when the spec is a plain built-in stack."""
    spec = analysis.spec
    layers = spec.recurrent_layers()
    if len(spec.layers) != 1 or len(layers) != 1 or len(spec.inputs) != 1:
        return None
    (layer,) = layers.values()
    (inp,) = spec.inputs.values()
    plain = not (
        layer.init or layer.attention or layer.feedback or layer.recurrent or layer.residual
    )
    kind = TORCH_LAYERS.get(layer.cell) or NEAREST.get(layer.cell)
    if not plain or kind is None or not isinstance(inp, VectorInput):
        return None
    if layer.direction == "backward" or layer.merge != "concat":
        return None
    return kind, layer, inp.size


def _median_ms(function: Callable[[], Any], repeats: int, progress: Callable[[], None]) -> float:
    return _medians_ms([function], repeats, progress)[0]


def _medians_ms(
    functions: list[Callable[[], Any]], repeats: int, progress: Callable[[], None]
) -> list[float]:
    """Each function's median time, the functions called in turns (so a slow spell of
    the machine falls on all of them alike)."""
    for function in functions:
        function()  # warm up
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, mine in zip(functions, times, strict=True):
            start = time.perf_counter()
            function()
            mine.append((time.perf_counter() - start) * 1000)
            progress()
    return [statistics.median(mine) for mine in times]


def _peak_mib(function: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def run_bench(
    analysis: Analysis,
    batch: int = 32,
    steps: int = 100,
    dtype: str = "float32",
    repeats: int = 5,
    threads: int = 1,
    show_progress: bool = False,
) -> list[Row]:
    """Time every installed backend (and PyTorch's layer where there is one)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    inputs: dict[str, np.ndarray] = {}
    for name, inp in analysis.spec.inputs.items():
        shape = (batch, steps) if inp.sequence else (batch,)
        if isinstance(inp, VectorInput):
            inputs[name] = rng.standard_normal((*shape, inp.size)).astype(dtype)
        else:
            inputs[name] = rng.integers(0, inp.vocab, shape)
    forward_flops = flops(analysis, batch, steps)
    reference = torch_reference(analysis)
    decoder = any(layer.feedback for layer in analysis.spec.recurrent_layers().values())
    jobs = len(usable_backends()) * (4 if decoder else 2) + (2 if reference else 0)
    done = [0]

    def progress() -> None:
        done[0] += 1
        if show_progress:
            filled = int(30 * done[0] / (jobs * repeats))
            sys.stderr.write(
                f"\r  [{'#' * filled}{'.' * (30 - filled)}] {done[0]}/{jobs * repeats}"
            )
            sys.stderr.flush()

    rows = []
    with threadpool_limits(limits=threads), _torch_threads(threads):
        for backend in usable_backends():
            model = compile_spec(analysis, backend=backend, dtype=dtype)
            outputs = model.run(inputs)
            cotangents = {k: np.ones_like(v) for k, v in outputs.items()}
            forward = functools.partial(model.run, inputs)
            both = functools.partial(model.vjp, inputs, cotangents)
            for task, function, factor in (("forward", forward, 1), ("forward+backward", both, 3)):
                ms = _median_ms(function, repeats, progress)
                peak = _peak_mib(function) if backend == "numpy" else None
                rows.append(Row(backend, task, ms, factor * forward_flops / ms / 1e6, peak))
            rows += _decoding_rows(model, backend, inputs, steps, repeats, progress, forward_flops)
        if reference is not None:
            rows += _torch_rows(reference, inputs, dtype, repeats, progress, forward_flops)
    if show_progress:
        sys.stderr.write("\r" + " " * 60 + "\r")
    baseline = {r.task: r for r in rows if r.name.startswith("torch.nn.")}
    return [_to_torch(r, baseline) for r in rows]


def _to_torch(row: Row, baseline: dict[str, Row]) -> Row:
    """A row with its ratio to PyTorch's layer on the same task (if it has none yet)."""
    if row.ratio is not None or row.task not in baseline:
        return row
    torch = baseline[row.task]
    return Row(row.name, row.task, row.ms, row.gflops, row.peak_mib, row.ms / torch.ms, torch.name)


BEAM = 5


def _decoding_rows(
    model: Any,
    backend: str,
    inputs: dict[str, np.ndarray],
    steps: int,
    repeats: int,
    progress: Callable[[], None],
    forward_flops: float,
) -> list[Row]:
    """For a decoder fed back tokens: greedy decoding and beam search (beam 5) of
    ``steps`` tokens, the eos suppressed so that every hypothesis runs them all; the
    beam's time as a ratio to greedy's, the two timed in turns."""
    contract = model.namespace.get("STEP")
    if contract is None or not contract["tokens"]:
        return []
    options = {"max_steps": steps, "suppress": [model.analysis.spec.generation.eos]}
    greedy = functools.partial(model.generate, inputs, strategy="greedy", **options)
    beam = functools.partial(model.generate, inputs, strategy="beam", beam=BEAM, **options)
    fast, slow = _medians_ms([greedy, beam], repeats, progress)  # in turns
    return [
        Row(backend, "generate greedy", fast, forward_flops / fast / 1e6, None),
        Row(backend, f"generate beam {BEAM}", slow, BEAM * forward_flops / slow / 1e6, None,
            slow / fast, "greedy"),
    ]  # fmt: skip


def _torch_backend() -> Any:
    """The installed torch backend, which times PyTorch for us (rnnc never imports it)."""
    return load_backend("torch") if "torch" in usable_backends() else None


def _torch_threads(threads: int) -> contextlib.AbstractContextManager[Any]:
    """PyTorch's intra-op threads (which threadpoolctl does not reach) set to ``threads``
    for everything timed: the torch backend and torch.nn's layers alike."""
    backend = _torch_backend()
    return backend.threads(threads) if backend is not None else contextlib.nullcontext()


def _torch_rows(
    reference: tuple[str, RecurrentLayer, int],
    inputs: dict[str, np.ndarray],
    dtype: str,
    repeats: int,
    progress: Callable[[], None],
    forward_flops: float,
) -> list[Row]:
    backend = _torch_backend()
    if backend is None:
        return []
    kind, layer, size = reference
    (x,) = inputs.values()
    forward, both = backend.reference_layer(kind, layer, size, x, dtype)
    name = f"torch.nn.{kind}"
    return [
        Row(
            name,
            "forward",
            (ms := _median_ms(forward, repeats, progress)),
            forward_flops / ms / 1e6,
            None,
        ),
        Row(
            name,
            "forward+backward",
            (ms2 := _median_ms(both, repeats, progress)),
            3 * forward_flops / ms2 / 1e6,
            None,
        ),
    ]


def blas_description() -> str:
    """Which BLAS NumPy runs on, and which kernel it picked (e.g. 'openblas SkylakeX')."""
    from threadpoolctl import threadpool_info

    found = [
        f"{info['internal_api']} {info.get('architecture', '')}".strip()
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return ", ".join(found) or "unknown BLAS"


def format_rows(rows: list[Row]) -> str:
    table = [["backend", "task", "ms", "ratio", "to", "GFLOP/s", "peak MiB"]]
    for r in rows:
        table.append(
            [
                r.name,
                r.task,
                f"{r.ms:.1f}",
                "-" if r.ratio is None else f"{r.ratio:.2f}",
                r.against or "-",
                f"{r.gflops:.1f}",
                "-" if r.peak_mib is None else f"{r.peak_mib:.1f}",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i in (0, 1, 4) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    )
