"""The gallery: every spec checks cleanly and the architectures the course needs are there."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

import rnnc
from rnnc.front.spec import DenseLayer, RecurrentLayer, TokenInput, VectorInput
from tests.conftest import GALLERY


@pytest.fixture(scope="module")
def specs() -> dict[str, rnnc.Spec]:
    return {path.stem: rnnc.load_spec(path) for path in GALLERY}


@pytest.mark.parametrize("path", GALLERY, ids=[p.stem for p in GALLERY])
def test_spec_checks_without_errors_or_warnings(path: Path) -> None:
    spec = rnnc.load_spec(path)
    assert spec.name == path.stem
    assert rnnc.check(spec) == []
    assert path.read_text().startswith("# "), "each gallery spec opens with a comment"
    unrolled = rnnc.unroll(rnnc.analyze(spec).graph, 4)
    assert nx.is_directed_acyclic_graph(unrolled)


def layers(spec: rnnc.Spec) -> list[RecurrentLayer]:
    return list(spec.recurrent_layers().values())


def test_the_course_architectures_are_all_there(specs: dict[str, rnnc.Spec]) -> None:
    def one(name: str) -> RecurrentLayer:
        (layer,) = layers(specs[name])
        return layer

    assert one("elman_rnn").cell == "rnn"
    classifier = specs["sequence_classifier"]
    assert [o.steps for o in classifier.outputs.values()] == ["last"]
    caption = specs["image_captioning"]
    assert isinstance(caption.inputs["image"], VectorInput) and not caption.inputs["image"].sequence
    assert isinstance(caption.inputs["caption"], TokenInput)
    assert one("image_captioning").init is not None and one("image_captioning").feedback
    assert one("bidirectional_lstm").direction == "bidirectional"
    deep = one("deep_residual_rnn")
    assert deep.depth > 1 and deep.residual
    assert (
        one("gru_reset_after").cell == "gru" and one("gru_reset_before").cell == "gru_reset_before"
    )
    assert one("peephole_lstm").cell == "lstm_peephole"
    assert one("coupled_gate_lstm").cell == "lstm_cifg"
    slide = specs["lstm_slide_notation"].cells["slide_lstm"]
    assert slide.state == ["a", "c"] and slide.output == "a"
    assert {"c_tilde", "gamma_u", "gamma_f", "gamma_o"} <= set(slide.equations)
    tf = specs["teacher_forcing_rnn"]
    assert one("teacher_forcing_rnn").feedback in tf.layers
    assert one("teacher_forcing_rnn").teacher_forcing == 1.0
    seq2seq = specs["seq2seq"].layers["decoder"]
    assert isinstance(seq2seq, RecurrentLayer) and seq2seq.init and not seq2seq.attention
    bahdanau = specs["seq2seq_attention"].layers["decoder"]
    assert isinstance(bahdanau, RecurrentLayer) and bahdanau.attention
    assert bahdanau.attention.score == "additive" and bahdanau.teacher_forcing == 1.0
    luong = specs["seq2seq_luong"].layers["decoder"]
    assert isinstance(luong, RecurrentLayer) and luong.attention
    assert luong.attention.score == "general" and 0 < (luong.teacher_forcing or 0) < 1
    sentiment = specs["sentiment_bigru"]
    assert one("sentiment_bigru").direction == "bidirectional" and one("sentiment_bigru").depth > 1
    assert sentiment.layers["sentiment"].input.state == "h"  # type: ignore[union-attr]
    sutskever = specs["seq2seq_sutskever"].layers["decoder"]
    assert isinstance(sutskever, RecurrentLayer) and sutskever.init
    assert sutskever.init.states == ["h", "c"] and sutskever.depth > 1
    feeding = specs["seq2seq_luong_feeding"]
    decoder = feeding.layers["decoder"]
    assert isinstance(decoder, RecurrentLayer) and decoder.attention
    assert decoder.attention.input_feeding and decoder.attention.score in ("dot", "general")
    assert any(o.attention == "weights" for o in feeding.outputs.values())


def test_slide_lstm_has_the_builtin_lstm_parameters_under_other_names(specs) -> None:
    analysis = rnnc.analyze(specs["lstm_slide_notation"])
    slide = analysis.cells["slide_lstm"]
    lstm = rnnc.builtin_cells()["lstm"]
    rename = {
        "W_u": "W_i",
        "b_u": "b_i",
        "W_f": "W_f",
        "b_f": "b_f",
        "W_c": "W_g",
        "b_c": "b_g",
        "W_o": "W_o",
        "b_o": "b_o",
    }
    slide_shapes = slide.param_shapes(10, 20)
    assert {rename[k]: v for k, v in slide_shapes.items()} == lstm.param_shapes(10, 20)


def test_output_to_hidden_network_reads_its_own_output(specs) -> None:
    graph = rnnc.analyze(specs["teacher_forcing_rnn"]).graph
    feedback = [(u, v) for u, v, d in graph.edges(data=True) if d["kind"] == "feedback"]
    assert feedback == [("o", "h")]
    assert isinstance(specs["teacher_forcing_rnn"].layers["o"], DenseLayer)


@pytest.mark.parametrize("path", GALLERY, ids=[p.stem for p in GALLERY])
def test_init_reproduces_the_template(cli, tmp_path: Path, path: Path) -> None:
    out = tmp_path / "copy.yaml"
    assert cli("init", path.stem, "-o", out).code == 0
    assert out.read_text().split("\n", 1)[1] == path.read_text()
