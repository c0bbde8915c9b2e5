"""The command line's promises at its edges, one test per bug fuzzing found.

Exit 0 success, 1 a bad spec or file (a message, never a traceback), 2 a bad command
line, 3 only for a bug; nothing written unless the command succeeds, and an input
never written over.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import rnnc
from rnnc.runtime.params import format_bytes
from rnnc.tools.gradflow import describe, slope
from rnnc.tools.verify import verify
from tests.conftest import ROOT

SPECS = ROOT / "specs"
ELMAN = SPECS / "elman_rnn.yaml"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 1: numeric options are checked where they are parsed ---------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("verify", ELMAN, "--seed", "-1"),
        ("gradflow", ELMAN, "-o", "g.csv", "--seed", "-5"),
        ("train", ELMAN, "--task", "sum", "--seed", "-1"),
        ("verify", ELMAN, "--seed", str(2**64)),
        ("verify", ELMAN, "--seed", "1.5"),
        ("train", ELMAN, "--task", "sum", "--lr", "nan"),
        ("train", ELMAN, "--task", "sum", "--lr", "inf"),
        ("train", ELMAN, "--task", "sum", "--lr", "0"),
        ("train", ELMAN, "--task", "sum", "--clip", "nan"),
        ("train", ELMAN, "--task", "sum", "--clip", "-1"),
        ("train", ELMAN, "--task", "sum", "--clip", "-inf"),
    ],
)
def test_bad_numbers_are_usage_errors(cli, args) -> None:
    result = cli(*args)
    assert result.code == 2, result.text
    assert "expected" in result.err and "Traceback" not in result.text


def test_the_largest_seed_works(cli) -> None:
    result = cli("verify", ELMAN, "--seed", str(2**63 - 1), "--quiet", "--mode", "train")
    assert result.code == 0, result.text


# --- 2: gradflow on sequences too short for a fitted line ----------------------------


@pytest.mark.parametrize("spec", ["elman_rnn", "seq2seq"])
def test_gradflow_of_one_step(cli, tmp_path, spec: str) -> None:
    target = tmp_path / "g.png"
    result = cli("gradflow", SPECS / f"{spec}.yaml", "-o", target, "--steps", "1")
    assert result.code == 0, result.text
    assert target.read_bytes().startswith(b"\x89PNG")
    assert "decades/step" in result.out and "nan" not in result.out


def test_slope_needs_two_finite_points() -> None:
    assert np.isnan(slope(np.array([3.0])))
    assert np.isnan(slope(np.array([np.nan, 2.0])))
    # ten times smaller per step back: -1 decade per step, with or without a nan
    assert slope(np.array([1e-3, 1e-2, 1e-1, 1.0])) == pytest.approx(-1.0)
    assert slope(np.array([np.nan, 1e-2, 1e-1, 1.0])) == pytest.approx(-1.0)
    table = describe({"r": np.array([2.0])}, {"r": "rnn"})
    assert "nan" not in table and table.splitlines()[1].split()[-1] == "-"


def test_gradflow_writes_nothing_in_home(cli, tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    result = cli("gradflow", ELMAN, "-o", tmp_path / "no" / "such" / "g.png", "--steps", "3")
    assert result.code == 1
    if "matplotlib" not in sys.modules:  # imported by an earlier test: moot
        assert list(home.iterdir()) == []


# --- 3 and 4: -o never writes over an input; it writes through links and devices -----


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (("compile",), "a.yaml"),
        (("compile", "--backend", "torch"), "a.py"),
        (("render", "--format", "dot"), "a.yaml"),
        (("render",), "a.svg"),
        (("gradflow",), "a.csv"),
        (("train", "--task", "sum"), "a.npz"),
    ],
)
def test_output_over_the_input_is_refused(cli, tmp_path, monkeypatch, command, name) -> None:
    spec = tmp_path / name  # a spec may have any name, so the suffix fits the output too
    spec.write_text(ELMAN.read_text())
    link = tmp_path / f"link{spec.suffix}"
    link.symlink_to(spec)
    before = digest(spec)
    monkeypatch.chdir(tmp_path)
    for target in (spec, link, tmp_path / "." / name, name, f"../{tmp_path.name}/{name}"):
        result = cli(command[0], spec, *command[1:], "-o", target)
        assert result.code == 2, result.text
        assert "would write over the input" in result.err
    assert digest(spec) == before
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [link.name, name]
    )


def test_gradflow_csv_beside_the_png_may_not_be_the_input(cli, tmp_path) -> None:
    spec = tmp_path / "g.csv"
    spec.write_text(ELMAN.read_text())
    before = digest(spec)
    result = cli("gradflow", spec, "-o", tmp_path / "g.png", "--steps", "3")
    assert result.code == 2 and "would write over the input" in result.err
    assert digest(spec) == before and not (tmp_path / "g.png").exists()


def test_output_through_a_symlink_replaces_its_target(cli, tmp_path) -> None:
    target = tmp_path / "real.py"
    target.write_text("old")
    link = tmp_path / "model.py"
    link.symlink_to(target)
    assert cli("compile", ELMAN, "-o", link).code == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert "def forward" in target.read_text()


def test_output_to_a_fifo_writes_into_it(cli, tmp_path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = cli("render", ELMAN, "-o", fifo, "--format", "dot")
    reader.join(timeout=30)
    assert result.code == 0, result.text
    assert received and received[0].startswith(b"digraph")
    assert fifo.is_fifo()


def test_output_to_dev_null_keeps_the_device(cli) -> None:
    null = Path(os.devnull)
    if not null.is_char_device():  # pragma: no cover - every Linux has one
        pytest.skip("no /dev/null device here")
    assert cli("compile", ELMAN, "-o", null).code == 0
    assert null.is_char_device()


@pytest.mark.parametrize(
    "args",
    [
        ("render", ELMAN, "-o", "g.gif"),
        ("gradflow", ELMAN, "-o", "g.gif"),
        ("train", ELMAN, "--task", "sum", "-o", "w.pt"),
    ],
)
def test_a_wrong_output_suffix_is_a_usage_error_in_every_command(cli, tmp_path, args) -> None:
    result = cli(*args)
    assert result.code == 2, result.text
    assert list(tmp_path.iterdir()) == []


# --- 5: compiling allocates no parameters; running a model too big is refused --------

HUGE = ELMAN.read_text().replace("hidden: 32", "hidden: 65536")


def test_compiling_a_huge_model_allocates_nothing(cli, tmp_path, monkeypatch) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text(HUGE)
    assert "hidden: 65536" in HUGE

    def refuse(*args, **kwargs):
        raise AssertionError("compile drew parameters")

    monkeypatch.setattr("rnnc.runtime.weights.init_params", refuse)
    monkeypatch.setattr("rnnc.init_params", refuse)
    for backend in ("numpy", "torch"):
        result = cli("compile", spec, "--backend", backend, "-o", tmp_path / f"{backend}.py")
        assert result.code == 0, result.text


def test_check_reports_the_size_and_warns_when_it_will_not_fit(cli, tmp_path, monkeypatch) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text(HUGE)
    count = 65536 * (10 + 65536) + 65536 + 10 * 65536 + 10
    result = cli("check", spec)
    assert result.code == 0
    assert f"total parameters: {count:,} ({format_bytes(4 * count)} in float32" in result.out
    monkeypatch.setattr("rnnc.runtime.params.available_memory", lambda: 8 << 30)
    result = cli("check", spec)
    assert result.code == 0
    assert "warning: the parameters take 16.0 GiB in float32" in result.err
    assert "8.0 GiB of memory available" in result.err


@pytest.mark.parametrize("command", [("verify", "--quiet"), ("gradflow", "-o", "g.csv")])
def test_running_a_model_too_big_is_refused_cleanly(cli, tmp_path, monkeypatch, command) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text(HUGE)
    monkeypatch.setattr("rnnc.runtime.params.available_memory", lambda: 1 << 30)
    monkeypatch.chdir(tmp_path)
    result = cli(command[0], spec, *command[1:])
    assert result.code == 1, result.text
    assert "more than the 1.0 GiB of memory available" in result.err
    assert "Traceback" not in result.text and sorted(tmp_path.iterdir()) == [spec]


def test_compiled_models_draw_their_parameters_on_first_use() -> None:
    spec = rnnc.load_spec(ELMAN)
    for backend in ("numpy", "torch"):
        model = rnnc.compile(spec, backend=backend, dtype="float64")
        drawn = rnnc.init_params(spec, seed=0)
        got = model.params()
        assert sorted(got) == sorted(drawn)
        for name in drawn:
            np.testing.assert_array_equal(got[name], drawn[name])


# --- 10: verify says which arrays are not finite, and on which backend --------------

OVERFLOW = """\
rnnc: 1
name: overflow
inputs:
  x: {size: 3}
cells:
  big:
    state: [h]
    equations:
      h: W @ [x, h] * 1e308 + b
layers:
  r: {cell: big, hidden: 4, input: x}
outputs:
  y: {from: r}
"""


def test_verify_names_the_arrays_that_are_not_finite(cli, tmp_path) -> None:
    spec = tmp_path / "overflow.yaml"
    spec.write_text(OVERFLOW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli("verify", spec, "--mode", "train")
    assert [w.message for w in caught] == []  # no RuntimeWarning reaches the terminal
    assert result.code == 1
    first = result.out.splitlines()[0]
    assert "NOT FINITE" in first and "worst relative difference 0" not in first
    assert "train output y" in result.err and "not finite" in result.err
    rows = verify(rnnc.analyze(rnnc.parse_spec(OVERFLOW)), ("numpy", "torch"), modes=["train"])
    assert rows and not any(r.ok for r in rows)
    output = next(r for r in rows if r.name == "y")
    assert output.not_finite[0] > 0 and output.not_finite[1] > 0
    assert f"NOT FINITE on numpy {output.not_finite[0]} of {output.size}" in result.out


# --- found by the property tests with more examples ----------------------------------


def test_check_of_a_blank_description(cli, tmp_path) -> None:
    text = re.sub(r"(?m)^description: .*$", "description: ' '", ELMAN.read_text())
    assert "description: ' '" in text
    spec = tmp_path / "blank.yaml"
    spec.write_text(text)
    result = cli("check", spec)
    assert result.code == 0, result.text
    assert "elman_rnn: ok" in result.out
