"""The alignment heatmap of ``rnnc train`` (Bahdanau et al. 2015, Fig. 3): a decoder
trained on ``reverse`` attends along the anti-diagonal, and the heatmap is written
beside the weights."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import rnnc
from rnnc.tools.train import BOS, EOS, Result, Task, attention_output, train, write_heatmap
from tests.helpers import spec_text

# Small enough to train in seconds on the NumPy backend: 13 tokens (3 special + 10).
SMALL = """
rnnc: 1
name: small_attention
inputs:
  src: {vocab: 13, embed: 16}
  tgt: {vocab: 13, embed: 16}
layers:
  encoder: {cell: gru, hidden: 32, input: src, direction: bidirectional}
  decoder:
    cell: gru
    hidden: 32
    input: tgt
    init: {from: encoder, bridge: dense}
    attention: {memory: encoder, score: additive}
    feedback: out
  out: {dense: 13, input: decoder}
outputs:
  logits: {from: out}
"""
WITH_ALIGNMENT = SMALL + "  align: {from: decoder, attention: weights}\n"
TASK = Task("reverse", vocab=10, min_len=3, max_len=8)


def analysis(text: str) -> rnnc.Analysis:
    return rnnc.analyze(rnnc.parse_spec(spec_text(text)))


@pytest.fixture(scope="module")
def trained() -> Result:
    """300 steps of 32 examples: about 15 s on two cores (numpy backend)."""
    return train(analysis(SMALL), TASK, backend="numpy", steps=300, batch=32, eval_size=200)


def anti_diagonal(params: dict[str, np.ndarray]) -> float:
    """The fraction of target steps whose largest attention weight is on the
    anti-diagonal, over 200 fresh examples decoded free running from BOS.

    The reverse task's layout: source positions 0..L-1 hold s_0..s_{L-1}; decoder step
    t reads BOS (t = 0) or its previous output and should emit s_{L-1-t} for t < L,
    then EOS at step L. So step t's weight belongs on source position L-1-t; the EOS
    step has no source symbol and is left out. The weights come from a spec that
    writes the output by hand, not from the trainer's copy of the spec."""
    a = analysis(WITH_ALIGNMENT)
    model = rnnc.compile(a, backend="numpy", dtype="float32")
    model.load_params(params)
    batch = TASK.batch(TASK.bind(a), np.random.default_rng(99), 200)
    weights = model.run(
        batch.inputs, lengths=batch.lengths, mode="generate", steps=batch.targets.shape[1]
    )["align"]
    hits = steps = 0
    for b, length in enumerate(batch.lengths["src"]):
        t = np.arange(length)
        hits += int(np.sum(weights[b, t].argmax(axis=-1) == length - 1 - t))
        steps += int(length)
    return hits / steps


def test_trained_attention_lies_on_the_anti_diagonal(trained: Result) -> None:
    assert trained.accuracy > 0.8
    assert anti_diagonal(trained.params) >= 0.9  # 0.98 measured (seed 0)


def test_untrained_attention_does_not() -> None:
    """The check above can fail: the initial parameters put the largest weight on the
    anti-diagonal about as often as chance (1/L)."""
    assert anti_diagonal(rnnc.init_params(analysis(SMALL), seed=0)) < 0.4


def test_train_keeps_the_alignment_of_the_longest_held_out_example(trained: Result) -> None:
    """The spec has no attention output: train adds one to a copy of it, and gets what
    the spec with the output written by hand gives."""
    found = trained.alignment
    assert found is not None
    n = len(found.source)
    assert n == TASK.max_len  # 200 held-out examples of lengths 3-8: one is of length 8
    assert found.target == [*found.source[::-1], EOS]
    assert found.generated[-1] == EOS and found.weights.shape == (len(found.generated), n)
    np.testing.assert_allclose(found.weights.sum(axis=1), 1.0, rtol=1e-5)
    model = rnnc.compile(analysis(WITH_ALIGNMENT), backend="numpy", dtype="float32")
    model.load_params(trained.params)
    expected = model.run(
        {"src": np.array([found.source]), "tgt": np.array([[BOS, *found.target[:-1]]])},
        lengths={"src": np.array([n]), "tgt": np.array([n + 1])},
        mode="generate",
        steps=len(found.generated),
    )["align"][0]
    np.testing.assert_allclose(found.weights, expected, atol=1e-6)


def test_the_spec_own_attention_output_is_used_else_one_is_added() -> None:
    spec = analysis(WITH_ALIGNMENT).spec
    assert attention_output(spec, "decoder") == (spec, "align")
    taken = rnnc.parse_spec(spec_text(SMALL + "  alignment: {from: out}\n"))
    copy, name = attention_output(taken, "decoder")
    assert name == "alignment_2" and copy.outputs[name].attention == "weights"
    assert "alignment_2" not in taken.outputs and rnnc.analyze(copy).ok


def test_train_writes_the_heatmap_beside_the_weights(cli, write_spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    spec = write_spec(SMALL)
    common = ("train", spec, "--task", "reverse", "--backend", "numpy", "--steps", "3")
    common += ("--lengths", "3-5", "--quiet")
    result = cli(*common, "-o", tmp_path / "w.safetensors")
    assert result.code == 0, result.err
    heatmap = tmp_path / "w.alignment.png"
    assert heatmap.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"wrote {heatmap}" in result.err
    result = cli(*common)  # no weights saved, so no heatmap: the output says how
    assert result.code == 0 and "-o w.safetensors writes w.alignment.png" in result.err


def test_without_matplotlib_the_heatmap_says_how_to_get_it(trained, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    message = write_heatmap(trained.alignment, tmp_path / "a.png", "small")
    assert "not written" in message and "pip install 'rnnc[plot]'" in message
    assert not (tmp_path / "a.png").exists()
