"""rnnc.tools.cli: commands, output and exit codes (0 ok, 1 invalid, 2 usage, 3 internal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rnnc
from tests.conftest import GALLERY, ROOT

BROKEN = """
rnnc: 1
name: broken
inputs:
  x: {size: 4}
layers:
  r: {cell: lstm, hidden: 8, input: y}
outputs:
  out: {from: r}
"""


def test_check_prints_a_summary_and_exits_0(cli) -> None:
    result = cli("check", ROOT / "specs" / "seq2seq_attention.yaml", "--batch", "4", "--steps", "7")
    assert result.code == 0, result.err
    assert "seq2seq_attention: ok" in result.out
    assert "encoder  recurrent  gru" in result.out
    assert "bidirectional" in result.out
    assert "total parameters:" in result.out
    assert "logits  (4, 7, 40)" in result.out
    assert result.err == ""


def test_check_counts_parameters_per_layer(cli) -> None:
    # An Elman RNN: W is (H, X + H) and b is (H,); the head is (10, H) + (10,).
    X, H = 10, 32
    result = cli("check", ROOT / "specs" / "elman_rnn.yaml")
    rnn_params = H * (X + H) + H
    head_params = 10 * H + 10
    assert f"{rnn_params:,}" in result.out
    assert f"total parameters: {rnn_params + head_params:,}" in result.out


def test_check_reports_every_error_with_location_and_exits_1(cli, write_spec) -> None:
    path = write_spec(BROKEN)
    result = cli("check", path)
    assert result.code == 1
    assert f"{path}:6:37: layers.r.input: unknown name 'y'" in result.err
    # 'x' looks unused only because of the unknown name: no warning follows from it.
    assert "warning" not in result.err
    assert result.err.endswith(f"{path}: 1 error\n")
    assert "Traceback" not in result.text


def test_check_several_files_fails_if_any_fails(cli, write_spec) -> None:
    bad = write_spec(BROKEN, "bad.yaml")
    result = cli("check", GALLERY[0], bad)
    assert result.code == 1
    assert ": ok" in result.out and "unknown name 'y'" in result.err


def test_check_of_yaml_errors(cli, write_spec) -> None:
    result = cli("check", write_spec("a: [1,\n"))
    assert result.code == 1 and "invalid YAML" in result.err


def test_missing_file_is_a_data_error_not_a_traceback(cli, tmp_path) -> None:
    result = cli("check", tmp_path / "nope.yaml")
    assert result.code == 1 and "no such file" in result.err


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("frobnicate",),
        ("check",),
        ("check", "x.yaml", "--batch", "0"),
        ("check", "x.yaml", "--steps", "many"),
    ],
)
def test_usage_errors_exit_2(cli, args) -> None:
    result = cli(*args)
    assert result.code == 2
    assert "usage:" in result.err


def test_internal_errors_exit_3_and_show_a_traceback_only_with_debug(cli, monkeypatch) -> None:
    def explode(spec):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("rnnc.tools.cli.analyze", explode)
    result = cli("check", GALLERY[0])
    assert result.code == 3
    assert "internal error: ZeroDivisionError: boom" in result.err and "Traceback" not in result.err
    with pytest.raises(ZeroDivisionError):
        rnnc.tools.cli.main(["--debug", "check", str(GALLERY[0])])


def test_schema_prints_json_schema(cli) -> None:
    result = cli("schema")
    schema = json.loads(result.out)
    assert result.code == 0
    assert schema["$schema"].endswith("2020-12/schema")
    assert "layers" in schema["properties"]


def test_schema_to_file_is_atomic(cli, tmp_path) -> None:
    target = tmp_path / "s.json"
    assert cli("schema", "-o", target).code == 0
    assert json.loads(target.read_text())["title"] == "rnnc spec"
    result = cli("schema", "-o", tmp_path / "no" / "such" / "dir.json")
    assert result.code == 1 and "No such file or directory" in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_init_lists_templates(cli) -> None:
    result = cli("init")
    names = [line.split()[0] for line in result.out.splitlines()]
    assert names == [p.stem for p in GALLERY]


def test_init_writes_a_spec_with_a_schema_modeline_that_checks(cli, tmp_path) -> None:
    target = tmp_path / "mine.yaml"
    result = cli("init", "seq2seq_attention", "-o", target)
    assert result.code == 0, result.err
    text = target.read_text()
    assert text.startswith("# yaml-language-server: $schema=rnnc.schema.json\n")
    assert json.loads((tmp_path / "rnnc.schema.json").read_text())["title"] == "rnnc spec"
    assert rnnc.load_spec(target).name == "seq2seq_attention"
    assert cli("check", target).code == 0
    again = cli("init", "seq2seq_attention", "-o", target)
    assert again.code == 1 and "--force" in again.err
    assert cli("init", "elman_rnn", "-o", target, "--force").code == 0
    assert rnnc.load_spec(target).name == "elman_rnn"


def test_init_to_stdout_and_unknown_template(cli) -> None:
    assert "name: elman_rnn" in cli("init", "elman_rnn").out
    result = cli("init", "seq2seq_atention")
    assert result.code == 2 and "did you mean 'seq2seq_attention'" in result.err


def test_cells_lists_and_shows_a_cell(cli) -> None:
    listing = cli("cells").out
    assert [line.split()[0] for line in listing.splitlines()] == list(rnnc.builtin_cells())
    shown = cli("cells", "lstm", "--input", "10", "--hidden", "20")
    assert shown.code == 0
    assert "c = f * c + i * g" in shown.out
    assert "W_i  (20, 30)" in shown.out
    assert f"total {4 * (20 * 30 + 20):,}" in shown.out


def test_cells_of_a_spec(cli) -> None:
    result = cli("cells", "slide_lstm", "--spec", ROOT / "specs" / "lstm_slide_notation.yaml")
    assert result.code == 0 and "gamma_u = sigmoid(W_u @ [x, a] + b_u)" in result.out
    assert cli("cells", "lstn").code == 2


def test_cell_that_does_not_fit_the_given_sizes(cli, write_spec) -> None:
    path = write_spec(
        """
        rnnc: 1
        name: r
        cells:
          res: {state: [h], equations: {h: tanh(W @ h) + x}}
        inputs:
          x: {size: 4}
        layers:
          r: {cell: res, hidden: 4, input: x}
        outputs:
          y: {from: r}
        """
    )
    assert cli("cells", "res", "--spec", path, "--input", "4", "--hidden", "4").code == 0
    result = cli("cells", "res", "--spec", path, "--input", "3", "--hidden", "4")
    assert result.code == 1 and "does not fit" in result.err


def test_console_script_and_module_entry_points() -> None:
    script = Path(sys.executable).parent / "rnnc"
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    for command in ([str(script)], [sys.executable, "-m", "rnnc"]):
        done = subprocess.run(
            [*command, "check", str(GALLERY[0])],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert ": ok" in done.stdout
