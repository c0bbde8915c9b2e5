"""Decoding (rnnc.runtime.decoding over the step contract): stop at eos, beam search,
sampling, n-best, held to what can be computed without it. The oracle for every score
is the model's own teacher-forced log-likelihood of the tokens returned (run in train
mode with them as ground truth); the oracle for beam search is brute force over the
whole hypothesis space of a tiny vocabulary. Both backends, float64."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import rnnc
from rnnc.ir.program import time_axes
from tests.conftest import ROOT
from tests.helpers import random_inputs, spec_text

BACKENDS = ["numpy", "torch"]
BOS, EOS = 1, 2

TINY = """
rnnc: 1
name: tiny
inputs:
  src: {vocab: 6, embed: 3}
  tgt: {vocab: 4, embed: 3}
layers:
  encoder: {cell: gru, hidden: 5, input: src}
  decoder:
    cell: lstm
    hidden: 5
    input: tgt
    init: {from: encoder, bridge: dense}
    attention: {memory: encoder, score: general, input_feeding: true}
    feedback: out
  out: {dense: 4, input: decoder}
outputs:
  logits: {from: out}
"""


def model_of(text_or_name: str, backend: str, seed: int = 0):
    if "\n" in text_or_name:
        spec = rnnc.parse_spec(spec_text(text_or_name))
    else:
        spec = rnnc.load_spec(ROOT / "specs" / f"{text_or_name}.yaml")
    if backend == "torch":
        pytest.importorskip("torch")
    model = rnnc.compile(spec, backend=backend, dtype="float64")
    params = rnnc.init_params(spec, seed=seed)
    model.load_params({k: v * 3 for k, v in params.items()})  # sharper distributions
    return model


def encoder_inputs(model, batch: int, rng, lengths=None):
    """Random inputs with the decoder's token input at <bos>."""
    spec = model.analysis.spec
    inputs, given = random_inputs(spec, rng, batch=batch, steps=5)
    fed = model.namespace["STEP"]["input"]
    inputs[fed] = np.full((batch, 1), BOS)
    if isinstance(given, dict):
        given = {k: v for k, v in given.items() if k != fed}
    return inputs, lengths if lengths is not None else given


def teacher_forced(model, inputs, lengths, tokens: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The log-likelihood of each hypothesis (B, N, T) under the model run in train
    mode with the hypothesis as ground truth: sum over its tokens of log softmax."""
    B, N, T = tokens.shape
    fed = model.namespace["STEP"]["input"]
    rows = {k: np.repeat(np.asarray(v), N, axis=0) for k, v in inputs.items() if k != fed}
    rows[fed] = np.concatenate([np.full((B * N, 1), BOS), tokens.reshape(B * N, T)[:, :-1]], 1)
    axes = time_axes(model.analysis)[1]
    by_axis = {k: np.repeat(np.asarray(v), N) for k, v in (lengths or {}).items()}
    by_axis.update({axis: np.full(B * N, T) for axis in axes})
    masks = {axis: np.ones((B * N, T), dtype=bool) for axis in axes}
    (name,) = [
        o
        for o in model.analysis.spec.outputs
        if model.analysis.spec.outputs[o].from_ == model.namespace["STEP"]["prediction"]
    ]
    logits = model.run(rows, lengths=by_axis, tf_mask=masks)[name]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, tokens.reshape(B * N, T)[..., None], axis=-1)[..., 0]
    within = np.arange(T)[None, :] < counts.reshape(-1)[:, None]
    return np.where(within, picked, 0.0).sum(axis=1).reshape(B, N)  # type: ignore[no-any-return]


def every_hypothesis(vocab: int, max_steps: int) -> list[list[int]]:
    """Every token sequence a decoder can return: ended by its first eos, or max_steps long."""
    found = []
    for n in range(1, max_steps + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if EOS in seq[:-1]:
                continue
            if n < max_steps and seq[-1] != EOS:
                continue
            found.append(list(seq))
    return found


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_a_beam_as_wide_as_the_hypothesis_space_is_brute_force(
    backend: str, penalty: float
) -> None:
    model = model_of(TINY, backend)
    rng = np.random.default_rng(1)
    inputs, lengths = encoder_inputs(model, 3, rng, {"src": np.array([5, 2, 4])})
    space = every_hypothesis(4, 3)
    assert len(space) == 1 + 3 + 3 * 3 * 4
    T, N = 3, 5
    tokens = np.full((3, len(space), T), 0)
    counts = np.array([len(s) for s in space])
    for i, s in enumerate(space):
        tokens[:, i, : len(s)] = s
    sums = teacher_forced(model, inputs, lengths, tokens, np.tile(counts, (3, 1)))
    scores = sums / counts[None, :] ** penalty
    got = model.generate(
        inputs, lengths, strategy="beam", beam=len(space), n_best=N, max_steps=T,
        eos=EOS, pad=0, length_penalty=penalty,
    )  # fmt: skip
    for b in range(3):
        best = np.argsort(-scores[b], kind="stable")[:N]
        assert got.tokens[b].tolist() == tokens[b, best].tolist()
        assert got.lengths[b].tolist() == counts[best].tolist()
        np.testing.assert_allclose(got.log_probs[b], sums[b, best], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.scores[b], scores[b, best], rtol=1e-9, atol=1e-12)
        assert (np.diff(got.scores[b]) <= 0).all()


GALLERY_DECODERS = [
    "seq2seq", "seq2seq_attention", "seq2seq_luong", "image_captioning", "seq2seq_sutskever",
    "seq2seq_luong_feeding",
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", GALLERY_DECODERS)
@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_scores_are_the_teacher_forced_log_likelihood(
    backend: str, name: str, strategy: str
) -> None:
    model = model_of(name, backend, seed=2)
    rng = np.random.default_rng(3)
    inputs, lengths = encoder_inputs(model, 3, rng)
    n_best = 1 if strategy == "greedy" else 3
    got = model.generate(
        inputs, lengths, strategy=strategy, beam=4, n_best=n_best, max_steps=7, seed=5,
        length_penalty=0.5,
    )  # fmt: skip
    assert got.tokens.shape == (3, n_best, 7) and got.tokens.dtype.kind == "i"
    expected = teacher_forced(model, inputs, lengths, got.tokens, got.lengths)
    np.testing.assert_allclose(got.log_probs, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.scores, expected / got.lengths**0.5, rtol=1e-9, atol=1e-12)
    for b, n in itertools.product(range(3), range(n_best)):
        length = got.lengths[b, n]
        seq = got.tokens[b, n]
        assert EOS not in seq[: length - 1].tolist()  # ends at its first eos ...
        assert seq[length - 1] == EOS or length == 7  # ... or after max_steps tokens
        assert (seq[length:] == 0).all()  # pad after the end
    assert (np.diff(got.scores, axis=1) <= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_beam_one_is_greedy_and_greedy_is_generate_mode_up_to_eos(backend: str) -> None:
    model = model_of("seq2seq_attention", backend, seed=4)
    rng = np.random.default_rng(5)
    inputs, lengths = encoder_inputs(model, 6, rng)
    greedy = model.generate(inputs, lengths, strategy="greedy", max_steps=9)
    beam = model.generate(inputs, lengths, strategy="beam", beam=1, max_steps=9)
    for field in ("tokens", "lengths", "log_probs", "scores"):
        np.testing.assert_array_equal(getattr(beam, field), getattr(greedy, field), err_msg=field)
    cold = model.generate(inputs, lengths, strategy="sample", temperature=0.0, max_steps=9, seed=1)
    np.testing.assert_array_equal(cold.tokens, greedy.tokens)
    top1 = model.generate(inputs, lengths, strategy="sample", top_k=1, max_steps=9, seed=1)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    free = model.run(inputs, lengths=lengths, mode="generate", steps=9)["logits"].argmax(-1)
    for b in range(6):
        n = greedy.lengths[b, 0]
        assert greedy.tokens[b, 0, :n].tolist() == free[b, :n].tolist()
        assert EOS not in free[b, : n - 1].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_each_example_of_a_ragged_batch_decodes_as_alone(backend: str, strategy: str) -> None:
    model = model_of("seq2seq_luong", backend, seed=6)
    rng = np.random.default_rng(7)
    inputs, _ = encoder_inputs(model, 4, rng)
    lengths = {"src": np.array([5, 1, 3, 4])}
    options = {"strategy": strategy, "beam": 3, "n_best": 2 if strategy != "greedy" else 1}
    together = model.generate(inputs, lengths, max_steps=6, **options)
    for b in range(4):
        alone = model.generate(
            {k: v[b : b + 1] for k, v in inputs.items()},
            {"src": lengths["src"][b : b + 1]},
            max_steps=6,
            **options,
        )
        if strategy == "sample":  # a draw depends on the batch's uniforms; its score does not
            continue
        assert alone.tokens[0].tolist() == together.tokens[b].tolist()
        np.testing.assert_allclose(alone.scores[0], together.scores[b], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_has_ended_leaves_the_batch(backend: str) -> None:
    """Greedy runs step t on the examples that have not ended before it; beam search
    on one row per example at step 0, then on beam rows per example not done."""
    model = model_of("seq2seq_luong", backend, seed=6)
    inputs, _ = encoder_inputs(model, 6, np.random.default_rng(7))
    lengths = {"src": np.array([5, 1, 3, 4, 2, 5])}
    rows: list[int] = []
    step = model.namespace["step"]
    model.namespace["step"] = lambda p, c, x: rows.append(len(x)) or step(p, c, x)
    found = model.generate(inputs, lengths, strategy="greedy", max_steps=9)
    ended = found.lengths[:, 0]
    assert len(set(ended.tolist())) > 1  # the examples end at different steps
    assert rows == [int((ended > t).sum()) for t in range(ended.max())]
    rows.clear()
    found = model.generate(inputs, lengths, strategy="beam", beam=3, n_best=2, max_steps=30)
    assert rows[0] == 6 and all(r % 3 == 0 for r in rows[1:])
    assert rows[1:] == sorted(rows[1:], reverse=True) and rows[-1] < rows[1]
    for b in range(6):  # what stays in the batch decodes as it would alone
        alone = model.generate(
            {k: v[b : b + 1] for k, v in inputs.items()}, {"src": lengths["src"][b : b + 1]},
            strategy="beam", beam=3, n_best=2, max_steps=30,
        )  # fmt: skip
        assert alone.tokens[0].tolist() == found.tokens[b].tolist()
        np.testing.assert_allclose(alone.scores[0], found.scores[b], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hypotheses_of_one_parent_share_the_attention_weights(backend: str) -> None:
    """Bahdanau's weights read only the state before the step: beam search computes
    them once per distinct parent (the module's prepare) and decodes exactly as when
    every row computes its own."""
    model = model_of("seq2seq_attention", backend, seed=11)
    inputs, lengths = encoder_inputs(model, 4, np.random.default_rng(12))
    ns = model.namespace
    assert ns["STEP"]["ready"] == ["decoder:weights@t"]
    prepared: list[int] = []
    stepped: list[int] = []
    prepare, step = ns["prepare"], ns["step"]
    ns["prepare"] = lambda p, c: prepared.append(len(c["carries"]["decoder.l0.h"])) or prepare(p, c)
    ns["step"] = lambda p, c, x: stepped.append(len(x)) or step(p, c, x)
    options = {"strategy": "beam", "beam": 4, "n_best": 2, "max_steps": 8}
    shared = model.generate(inputs, lengths, **options)
    assert len(prepared) == len(stepped) and sum(prepared) < sum(stepped)
    ns["STEP"] = {**ns["STEP"], "ready": []}  # every row its own
    alone = model.generate(inputs, lengths, **options)
    np.testing.assert_array_equal(shared.tokens, alone.tokens)
    np.testing.assert_allclose(shared.scores, alone.scores, rtol=1e-12)


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_numpy_and_torch_decode_alike(strategy: str) -> None:
    pytest.importorskip("torch")
    got = {}
    for backend in BACKENDS:
        model = model_of("seq2seq_luong_feeding", backend, seed=8)
        inputs, lengths = encoder_inputs(model, 5, np.random.default_rng(9))
        got[backend] = model.generate(
            inputs, lengths, strategy=strategy, beam=5, n_best=3 if strategy != "greedy" else 1,
            max_steps=8, seed=3, top_p=0.9,
        )  # fmt: skip
    np.testing.assert_array_equal(got["numpy"].tokens, got["torch"].tokens)
    np.testing.assert_array_equal(got["numpy"].lengths, got["torch"].lengths)
    np.testing.assert_allclose(got["numpy"].scores, got["torch"].scores, rtol=1e-9)


def chi_square_critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile at 1 - 0.001 (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_draws_follow_the_softmax() -> None:
    model = model_of(TINY, "numpy", seed=10)
    model.load_params({k: v / 3 for k, v in model.params().items()})  # a flatter distribution
    inputs, lengths = encoder_inputs(model, 1, np.random.default_rng(11), {"src": np.array([4])})
    draws = model.generate(inputs, lengths, strategy="sample", n_best=4000, max_steps=1, seed=12)
    first = model.run(inputs, lengths=lengths, mode="generate", steps=1)["logits"][0, 0]
    probs = np.exp(first - first.max())
    probs /= probs.sum()
    counts = np.bincount(draws.tokens[0, :, 0], minlength=4)
    expected = probs * counts.sum()
    statistic = float(((counts - expected) ** 2 / expected).sum())
    assert statistic < chi_square_critical(3), (counts, expected)
    # and a wrong distribution is told apart: the same counts against a uniform one
    uniform = np.full(4, counts.sum() / 4)
    assert float(((counts - uniform) ** 2 / uniform).sum()) > chi_square_critical(3)


def test_nucleus_and_top_k_keep_the_likeliest_tokens() -> None:
    model = model_of(TINY, "numpy", seed=13)
    inputs, lengths = encoder_inputs(model, 1, np.random.default_rng(14), {"src": np.array([5])})
    first = model.run(inputs, lengths=lengths, mode="generate", steps=1)["logits"][0, 0]
    order = np.argsort(-first)
    probs = np.exp(first - first.max()) / np.exp(first - first.max()).sum()
    for options, allowed in [
        ({"top_k": 2}, set(order[:2])),
        ({"top_p": float(probs[order[0]]) / 2}, {order[0]}),
        ({"top_p": float(probs[order[0]] + probs[order[1]]) - 1e-9}, set(order[:2])),
        ({"suppress": [int(order[0])]}, set(order[1:])),
    ]:
        draws = model.generate(
            inputs, lengths, strategy="sample", n_best=300, max_steps=1, seed=1, **options
        )
        assert set(draws.tokens[0, :, 0].tolist()) == allowed, options


@pytest.mark.parametrize("beam", [1, 3, 7, 30])
def test_any_beam_width_works(beam: int) -> None:
    model = model_of(TINY, "numpy", seed=15)
    inputs, lengths = encoder_inputs(model, 2, np.random.default_rng(16), {"src": np.array([3, 5])})
    got = model.generate(inputs, lengths, strategy="beam", beam=beam, n_best=1, max_steps=5)
    expected = teacher_forced(model, inputs, lengths, got.tokens, got.lengths)
    np.testing.assert_allclose(got.log_probs, expected, rtol=1e-9)
    if beam > 1:  # wider beams find hypotheses at least as likely as a narrower one
        narrow = model.generate(inputs, lengths, strategy="beam", beam=1, max_steps=5)
        assert (got.scores >= narrow.scores - 1e-12).all()


def test_the_best_candidates_are_ranked_as_a_full_sort_ranks_them() -> None:
    """The beam's selection (a partition, then a sort of what is at or above the n-th)
    against Python's sort of every row by (value descending, index): ties, -inf and
    rows narrower than n included."""
    from rnnc.runtime.decoding import _largest

    rng = np.random.default_rng(17)
    for _ in range(500):
        B, C, n = (int(k) for k in rng.integers(1, [5, 12, 15]))
        values = rng.integers(-3, 3, (B, C)).astype(float)  # many ties
        values[rng.random((B, C)) < 0.2] = -np.inf
        ranked, index = _largest(values, n)
        for row, got, at in zip(values, ranked, index, strict=True):
            order = sorted(range(C), key=lambda j: (-row[j], j))[:n]
            expected = [row[j] for j in order] + [-np.inf] * (n - len(order))
            assert got.tolist() == expected and at.tolist() == order + [0] * (n - len(order))


VECTORS = """
rnnc: 1
name: vectors
inputs:
  y: {size: 3}
layers:
  rnn: {cell: gru, hidden: 4, input: y, feedback: next}
  next: {dense: 3, input: rnn}
outputs:
  y_next: {from: next}
"""


def test_what_cannot_be_generated_is_refused() -> None:
    classifier = rnnc.compile(
        rnnc.load_spec(ROOT / "specs" / "sentiment_bigru.yaml"), backend="numpy"
    )
    with pytest.raises(rnnc.RnncError, match="needs a layer with feedback"):
        classifier.generate({"words": np.ones((1, 3), dtype=int)})
    vectors = model_of(VECTORS, "numpy")
    inputs = {"y": np.random.default_rng(0).standard_normal((2, 1, 3))}
    with pytest.raises(rnnc.RnncError, match="decodes greedily only"):
        vectors.generate(inputs, strategy="beam", max_steps=4)
    free = vectors.generate(inputs, max_steps=4)  # greedily: its outputs, no tokens
    expected = vectors.run(inputs, mode="generate", steps=4)
    np.testing.assert_allclose(free.outputs["y_next"], expected["y_next"], rtol=1e-12)
    assert free.tokens.shape == (2, 1, 0)
    model = model_of(TINY, "numpy")
    inputs, lengths = encoder_inputs(model, 1, np.random.default_rng(0), {"src": np.array([2])})
    with pytest.raises(rnnc.RnncError, match=r"n_best \(4\) must not exceed the beam \(3\)"):
        model.generate(inputs, lengths, strategy="beam", beam=3, n_best=4)
    with pytest.raises(
        rnnc.RnncError, match="eos \\(9\\) is not a token of the 4-token vocabulary"
    ):
        model.generate(inputs, lengths, eos=9)
    with pytest.raises(rnnc.RnncError, match="strategy"):
        model.generate(inputs, lengths, strategy="viterbi")


@pytest.mark.parametrize(
    ("block", "path", "words"),
    [
        ("{eos: 40}", "generation.eos", "eos 40 is not a token of 'tgt' (its vocabulary: 0..39)"),
        ("{suppress: [1, 99]}", "generation.suppress[1]", "99 is not a token of 'tgt'"),
        ("{strategy: beam, beam: 2, n_best: 3}", "generation.n_best", "must not exceed the beam"),
    ],
)
def test_a_generation_block_is_held_to_its_decoder(block: str, path: str, words: str) -> None:
    text = (ROOT / "specs" / "seq2seq_attention.yaml").read_text()
    text = text[: text.index("generation:")] + f"generation: {block}\n"
    (error,) = rnnc.check(rnnc.parse_spec(text))
    assert error.dotted_path == path and words in error.message


def test_a_generation_block_needs_a_decoder() -> None:
    text = (ROOT / "specs" / "sentiment_bigru.yaml").read_text() + "generation: {max_steps: 9}\n"
    (error,) = rnnc.check(rnnc.parse_spec(text))
    assert error.dotted_path == "generation" and "no layer has 'feedback'" in error.message


def test_the_spec_block_gives_the_defaults_and_a_call_overrides_them() -> None:
    model = model_of("seq2seq_attention", "numpy", seed=17)
    assert model.analysis.spec.generation.strategy == "greedy"
    inputs, lengths = encoder_inputs(model, 2, np.random.default_rng(18))
    default = model.generate(inputs, lengths, max_steps=6)
    greedy = model.generate(inputs, lengths, strategy="greedy", max_steps=6)
    np.testing.assert_array_equal(default.tokens, greedy.tokens)
    beam = model.generate(inputs, lengths, strategy="beam", max_steps=6)  # beam: 5 from the spec
    five = model.generate(inputs, lengths, strategy="beam", beam=5, max_steps=6)
    np.testing.assert_array_equal(beam.tokens, five.tokens)
    assert (beam.scores >= greedy.scores - 1e-12).all()


# --- rnnc generate ------------------------------------------------------------------------


def test_generate_command_decodes_what_train_scored(cli, tmp_path) -> None:
    """After rnnc train -o w, rnnc generate --task decodes the same held-out examples
    and reports the accuracy train reported."""
    spec = ROOT / "specs" / "seq2seq_attention.yaml"
    weights = tmp_path / "w.safetensors"
    trained = cli("train", spec, "--task", "reverse", "--backend", "numpy", "--steps", "40",
                  "--lengths", "2-4", "--vocab", "4", "--quiet", "-o", weights)  # fmt: skip
    assert trained.code == 0, trained.err
    reported = trained.out.split("held-out accuracy ")[1].split("%")[0]
    decoded = cli("generate", spec, "--weights", weights, "--task", "reverse", "--lengths",
                  "2-4", "--vocab", "4", "--strategy", "greedy")  # fmt: skip
    assert decoded.code == 0, decoded.err
    assert f"held-out accuracy {reported}%" in decoded.out
    assert "example 0:" in decoded.out and "</s>" in decoded.out


def test_generate_command_prints_each_hypothesis(cli, tmp_path) -> None:
    spec = ROOT / "specs" / "seq2seq_attention.yaml"
    model = rnnc.compile(rnnc.load_spec(spec), backend="numpy")
    weights = tmp_path / "w.npz"
    rnnc.save_weights(weights, rnnc.init_params(model.analysis, seed=1))
    one = cli("generate", spec, "--weights", weights, "--input", "src=5 6 7", "--strategy",
              "beam", "--n-best", "3", "--max-steps", "4")  # fmt: skip
    assert one.code == 0, one.err
    lines = one.out.splitlines()
    assert lines[0] == "example 0:" and [line.split(".")[0].strip() for line in lines[1:]] == [
        "1",
        "2",
        "3",
    ]
    examples = tmp_path / "in.jsonl"
    examples.write_text('{"src": [5, 6, 7]}\n{"src": [8, 9]}\n')
    many = cli("generate", spec, "--weights", weights, "--inputs", examples, "--max-steps", "4")
    assert many.code == 0 and many.out.count("example ") == 2
    # the first example alone and in the file decode alike (ragged lengths padded)
    assert many.out.splitlines()[1] == cli("generate", spec, "--weights", weights, "--input",
                                           "src=5 6 7", "--max-steps", "4").out.splitlines()[1]  # fmt: skip


def test_generate_command_refuses_what_it_cannot_do(cli, tmp_path) -> None:
    spec = ROOT / "specs" / "seq2seq_attention.yaml"
    weights = tmp_path / "w.npz"
    rnnc.save_weights(weights, {"out.W": np.zeros((40, 64))})  # names missing
    bad = cli("generate", spec, "--weights", weights, "--input", "src=5 6 7")
    assert bad.code == 1 and "rnnc:" in bad.err and "Traceback" not in bad.err
    classifier = ROOT / "specs" / "sentiment_bigru.yaml"
    none = cli("generate", classifier, "--weights", weights, "--input", "words=5 6")
    assert none.code == 1 and "nothing to generate" in none.err
    model = rnnc.compile(rnnc.load_spec(spec), backend="numpy")
    rnnc.save_weights(weights, rnnc.init_params(model.analysis, seed=1))
    wrong = cli("generate", spec, "--weights", weights, "--input", "nope=1 2")
    assert wrong.code == 1 and "NAME one of src, tgt" in wrong.err
    wide = cli("generate", spec, "--weights", weights, "--input", "src=5", "--strategy", "beam",
               "--beam", "2", "--n-best", "3")  # fmt: skip
    assert wide.code == 1 and "must not exceed the beam" in wide.err


def test_the_torch_module_generates_tensors_as_the_model_does() -> None:
    torch = pytest.importorskip("torch")
    model = model_of("seq2seq_attention", "torch", seed=19)
    inputs, lengths = encoder_inputs(model, 3, np.random.default_rng(20))
    expected = model.generate(inputs, lengths, strategy="beam", beam=3, n_best=2, max_steps=6)
    tensors = {k: torch.as_tensor(v) for k, v in inputs.items()}
    found = model.module.generate(
        tensors, {k: torch.as_tensor(v) for k, v in lengths.items()},
        strategy="beam", beam=3, n_best=2, max_steps=6,
    )  # fmt: skip
    assert torch.is_tensor(found.tokens) and found.tokens.dtype == torch.int64
    np.testing.assert_array_equal(found.tokens.numpy(), expected.tokens)
    np.testing.assert_allclose(found.scores.numpy(), expected.scores, rtol=1e-12)
    assert not hasattr(model_of(TINY.replace("feedback: out", ""), "torch").module, "generate")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dot_attention_decoder_decodes_too(backend: str) -> None:
    text = (
        (ROOT / "specs" / "seq2seq_luong.yaml").read_text().replace("score: general", "score: dot")
    )
    model = model_of(text, backend, seed=21)
    inputs, lengths = encoder_inputs(model, 3, np.random.default_rng(22))
    got = model.generate(inputs, lengths, strategy="beam", beam=3, n_best=2, max_steps=6)
    expected = teacher_forced(model, inputs, lengths, got.tokens, got.lengths)
    np.testing.assert_allclose(got.log_probs, expected, rtol=1e-9, atol=1e-12)
