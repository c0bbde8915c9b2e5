"""rnnc.front.checks: graph-level checks, including the cases that must pass."""

from __future__ import annotations

import pytest

import rnnc
from tests.helpers import spec_text

ENC_DEC = """
rnnc: 1
name: ed
inputs:
  src: {vocab: 20, embed: 8}
  tgt: {vocab: 20, embed: 8}
layers:
  enc: {cell: lstm, hidden: 16, input: src, direction: bidirectional MERGE}
  dec: {cell: lstm, hidden: 16, input: tgt, init: {from: enc BRIDGE}, feedback: out}
  out: {dense: 20, input: dec}
outputs:
  logits: {from: out}
"""


def enc_dec(merge: str, bridge: str) -> str:
    return ENC_DEC.replace("MERGE", merge).replace("BRIDGE", bridge)


def diagnostics(text: str) -> list[rnnc.Diagnostic]:
    return rnnc.check(rnnc.parse_spec(spec_text(text), "s.yaml"))


def errors(text: str) -> list[rnnc.Diagnostic]:
    return [d for d in diagnostics(text) if d.severity == "error"]


@pytest.mark.parametrize(
    ("merge", "bridge", "ok"),
    [
        ("", "", False),  # 2H into H
        (", merge: sum", "", True),
        (", merge: mean", "", True),
        ("", ", bridge: dense", True),
        (", merge: sum", ", bridge: dense", True),
    ],
)
def test_bidirectional_encoder_into_decoder(merge: str, bridge: str, ok: bool) -> None:
    found = errors(enc_dec(merge, bridge))
    assert (not found) == ok, [d.format() for d in found]
    if not ok:
        (d,) = found
        assert d.path == ("layers", "dec", "init")
        assert "width 32" in d.message and "width 16" in d.message and "bridge: dense" in d.message
        assert d.location is not None and d.location.line == 8


def test_errors_carry_the_graph_nodes_they_concern() -> None:
    (d,) = errors(enc_dec("", ""))
    assert set(d.nodes) == {"enc", "dec"}


def test_all_graph_errors_are_reported_together() -> None:
    found = errors(
        """
        rnnc: 1
        name: many
        inputs:
          x: {size: 4}
        layers:
          a: {cell: lstmm, hidden: 8, input: xx}
          b: {cell: gru, hidden: 8, input: x, teacher_forcing: 0.5}
          c: {dense: 3, input: [a, b]}
        outputs:
          y: {from: c, state: h}
        """
    )
    paths = {d.dotted_path for d in found}
    assert paths == {
        "layers.a.cell",
        "layers.a.input",
        "layers.b.teacher_forcing",
        "outputs.y.state",
    }


def test_feedback_picks_the_input_it_replaces_by_vocabulary() -> None:
    base = """
    rnnc: 1
    name: fb
    inputs:
      x: {size: 5}
      y_prev: {vocab: 7, embed: 3}
    layers:
      h: {cell: rnn, hidden: 6, input: [x, y_prev], feedback: o}
      o: {dense: WIDTH, input: h}
    outputs:
      y: {from: o}
    """
    assert errors(base.replace("WIDTH", "7")) == []
    (d,) = errors(base.replace("WIDTH", "6"))
    assert d.path == ("layers", "h", "feedback") and "none of 'x' or 'y_prev'" in d.message
    # With one sequence input the vocabulary must match.
    single = base.replace("[x, y_prev]", "y_prev").replace("WIDTH", "5")
    (d,) = [e for e in errors(single)]
    assert "a distribution over the 7 tokens of 'y_prev'" in d.message


def test_feedback_through_an_embedding_layer_is_understood() -> None:
    assert (
        errors(
            """
            rnnc: 1
            name: fb_embedding
            inputs:
              tgt: {vocab: 9}
            layers:
              emb: {embedding: 4, input: tgt}
              dec: {cell: gru, hidden: 5, input: emb, feedback: out, teacher_forcing: 0.5}
              out: {dense: 9, input: dec}
            outputs:
              y: {from: out}
            """
        )
        == []
    )


def test_real_valued_feedback_must_match_the_input_size() -> None:
    text = """
    rnnc: 1
    name: real_fb
    inputs:
      x: {size: 3}
    layers:
      r: {cell: lstm, hidden: 8, input: x, feedback: o}
      o: {dense: SIZE, input: r}
    outputs:
      y: {from: o}
    """
    assert errors(text.replace("SIZE", "3")) == []
    (d,) = errors(text.replace("SIZE", "4"))
    assert "a vector of the size of 'x' (3)" in d.message


def test_unidirectional_decoder_with_feedback_is_causal_but_bidirectional_is_not() -> None:
    text = enc_dec(", merge: sum", "")
    assert errors(text) == []
    (d,) = errors(text.replace("input: tgt,", "input: tgt, direction: bidirectional, merge: sum,"))
    assert d.path == ("layers", "dec", "feedback")
    assert "not causal" in d.message and "unrolled graph has a cycle" in d.message
    assert any("dec.bwd.l0" in line for line in d.detail)


def test_a_deep_bidirectional_layer_with_feedback_reports_its_shortest_cycle() -> None:
    # Found by tests/test_fuzz_specs.py: every bidirectional layer of a stack doubles the
    # paths through it, and enumerating cycles up to length 15 took minutes at depth 64.
    # The shortest cycle here climbs the whole stack on the backward side at t=0.
    (d,) = errors(
        """
        rnnc: 1
        name: deep
        inputs:
          tgt: {vocab: 40, embed: 32}
        layers:
          dec: {cell: lstm, hidden: 8, depth: 64, input: tgt, feedback: out, direction: bidirectional}
          out: {dense: 40, input: dec}
        outputs:
          logits: {from: out}
        """
    )
    assert "not causal" in d.message
    stack = [f"dec.bwd.l{k}[t=0]" for k in range(64)]
    assert d.detail == (" -> ".join([*stack, "out[t=0]", "dec.bwd.l0[t=1]", stack[0]]),)


def test_zero_delay_cycle_prints_its_path() -> None:
    (d,) = errors(
        """
        rnnc: 1
        name: loop
        inputs:
          x: {size: 2}
        layers:
          a: {dense: 2, input: [x, b]}
          b: {dense: 2, input: a}
        outputs:
          y: {from: b}
        """
    )
    assert "a cycle with no delay" in d.message
    assert "a -> b -> a" in d.message or "b -> a -> b" in d.message


def test_delayed_recurrent_edge_breaks_a_cycle() -> None:
    text = """
    rnnc: 1
    name: out_to_hidden
    inputs:
      x: {size: 2}
    layers:
      h: {cell: rnn, hidden: 4, input: x, recurrent: [{from: o, delay: DELAY}]}
      o: {dense: 3, input: h}
    outputs:
      y: {from: o}
    """
    assert errors(text.replace("DELAY", "1")) == []
    (d,) = errors(text.replace("DELAY", "0"))
    assert "a cycle with no delay" in d.message


def test_unused_parts_are_warnings_not_errors() -> None:
    found = diagnostics(
        """
        rnnc: 1
        name: unused
        inputs:
          x: {size: 2}
          spare: {size: 3}
        layers:
          h: {cell: rnn, hidden: 4, input: x}
          side: {dense: 2, input: h}
        outputs:
          y: {from: h}
        """
    )
    assert [(d.severity, d.dotted_path) for d in found] == [
        ("warning", "inputs.spare"),
        ("warning", "layers.side"),
    ]


def test_user_cell_that_fits_only_equal_sizes() -> None:
    text = """
    rnnc: 1
    name: residual_cell
    cells:
      res:
        state: [h]
        equations:
          h: tanh(W @ h + b) + x
    inputs:
      x: {size: SIZE}
    layers:
      r: {cell: res, hidden: 4, input: x, depth: 2}
    outputs:
      y: {from: r}
    """
    assert errors(text.replace("SIZE", "4")) == []
    (d,) = errors(text.replace("SIZE", "3"))
    assert d.path == ("layers", "r", "cell")
    assert "at depth 0 (input width 3, hidden 4)" in d.message
    assert d.detail and d.detail[0].startswith("h: tanh(W @ h + b) + x")


def test_equation_errors_point_into_the_spec_file() -> None:
    found = errors(
        """
        rnnc: 1
        name: bad_cell
        cells:
          mine:
            state: [h]
            equations:
              h: tanh(W @ [x, h] ** 2)
        inputs:
          x: {size: 3}
        layers:
          r: {cell: mine, hidden: 4, input: x}
        outputs:
          y: {from: r}
        """
    )
    (d,) = found
    assert d.dotted_path == "cells.mine.equations.h"
    # Line 7: the value starts at column 10 and '**' is 16 characters into it.
    assert (d.location.line, d.location.col) == (7, 26)
    assert d.detail[1].index("^") == len("h: tanh(W @ [x, h] ")


def test_param_init_names_a_parameter_of_the_cell() -> None:
    text = enc_dec(", merge: sum", "").replace(
        "feedback: out}", "feedback: out, param_init: {b_ff: 1.0}}"
    )
    (d,) = errors(text)
    assert d.dotted_path == "layers.dec.param_init.b_ff" and "did you mean 'b_f'" in d.message


def test_analysis_exposes_cells_graph_and_diagnostics() -> None:
    spec = rnnc.parse_spec(spec_text(enc_dec(", merge: sum", "")))
    analysis = rnnc.analyze(spec)
    assert analysis.ok and analysis.errors == () and "lstm" in analysis.cells
    assert analysis.graph.nodes["dec"]["cell"] is analysis.cells["lstm"]


def test_merge_on_a_one_direction_layer_is_a_warning() -> None:
    found = diagnostics(
        enc_dec(", merge: sum", "").replace("input: tgt,", "input: tgt, merge: mean,")
    )
    assert [(d.severity, d.dotted_path) for d in found] == [("warning", "layers.dec.merge")]


def test_joining_an_encoder_and_a_decoder_step_by_step_is_a_warning() -> None:
    text = enc_dec(", merge: sum", "").replace(
        "out: {dense: 20, input: dec}", "out: {dense: 20, input: [enc, dec]}"
    )
    found = diagnostics(text)
    assert [(d.severity, d.dotted_path) for d in found] == [("warning", "layers.out.input")]
    assert "'src' and 'tgt'" in found[0].message and "init" in found[0].message


def test_feedback_that_fits_several_inputs_is_ambiguous() -> None:
    (d,) = errors(
        """
        rnnc: 1
        name: two_vocabs
        inputs:
          a: {vocab: 7, embed: 3}
          b: {vocab: 7, embed: 2}
        layers:
          h: {cell: rnn, hidden: 6, input: [a, b], feedback: o}
          o: {dense: 7, input: h}
        outputs:
          y: {from: o}
        """
    )
    assert "'a' and 'b' both have vocabulary or size 7" in d.message


def test_reports_do_not_depend_on_hash_seeds() -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    spec = ROOT / "tests" / "invalid" / "graph_bidirectional_feedback.yaml"
    outputs = set()
    for seed in ("0", "1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "rnnc", "check", str(spec)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=False,
        )
        outputs.add(done.stderr)
    assert len(outputs) == 1 and "unrolled graph has a cycle" in outputs.pop()
