"""rnnc.tools.bench: the benchmark's plumbing (its timings are reported, never asserted)."""

from __future__ import annotations

import rnnc
from rnnc.tools.bench import flops, format_rows, run_bench, torch_reference
from tests.conftest import ROOT


def analysis_of(path: str) -> rnnc.Analysis:
    return rnnc.analyze(rnnc.load_spec(ROOT / path))


def test_flops_count_the_matrix_products() -> None:
    analysis = analysis_of("bench/lstm_128.yaml")
    B, T, X, H = 2, 3, 128, 128
    assert flops(analysis, B, T) == 4 * 2 * B * T * H * (X + H)


def test_torch_reference_only_for_plain_builtin_stacks() -> None:
    kind, layer, size = torch_reference(analysis_of("bench/lstm_256.yaml"))
    assert (kind, layer.hidden, size) == ("LSTM", 256, 256)
    assert torch_reference(analysis_of("specs/peephole_lstm.yaml")) is None
    assert torch_reference(analysis_of("specs/seq2seq.yaml")) is None


def test_bench_rows_and_ratios(cli) -> None:
    rows = run_bench(analysis_of("bench/lstm_128.yaml"), batch=2, steps=3, repeats=1)
    names = {(r.name, r.task) for r in rows}
    assert ("numpy", "forward") in names and ("torch.nn.LSTM", "forward+backward") in names
    torch_rows = [r for r in rows if r.name == "torch.nn.LSTM"]
    assert all(r.ratio == 1.0 for r in torch_rows)
    numpy_rows = [r for r in rows if r.name == "numpy"]
    assert all(r.peak_mib is not None and r.peak_mib > 0 and r.ms > 0 for r in numpy_rows)
    table = format_rows(rows)
    header = ["backend", "task", "ms", "ratio", "to", "GFLOP/s", "peak", "MiB"]
    assert table.splitlines()[0].split() == header
    assert "torch.nn.LSTM" in table.splitlines()[1]
    result = cli(
        "bench", ROOT / "bench" / "lstm_128.yaml", "--batch", "2", "--steps", "3", "--repeats", "1"
    )
    assert result.code == 0 and "torch.nn.LSTM" in result.out


def test_bench_times_decoding_of_a_decoder() -> None:
    rows = run_bench(analysis_of("specs/seq2seq_attention.yaml"), batch=2, steps=3, repeats=1)
    for backend in {r.name for r in rows}:
        mine = {r.task: r for r in rows if r.name == backend}
        greedy, beam = mine["generate greedy"], mine["generate beam 5"]
        assert beam.against == "greedy" and beam.ratio == beam.ms / greedy.ms
    assert "generate beam 5" in format_rows(rows)
