"""The lecture architectures as practitioners wire them, each held against an oracle
written here in plain PyTorch: a head on a final state (a bidirectional GRU classifier
through pack_padded_sequence), (h, c) handed over layer by layer (two torch.nn.LSTM),
and Luong attention with input feeding and its alignment as an output (the decoder
written step by step from the paper's equations). Both backends, float64, ragged
lengths, outputs and gradients."""

from __future__ import annotations

import numpy as np
import pytest

import rnnc
from rnnc.runtime.interop import from_torch
from tests.conftest import ROOT
from tests.helpers import directional_errors, random_inputs, spec_text, torch_grads

torch = pytest.importorskip("torch")  # the torch extra is installed by make test

BACKENDS = ["numpy", "torch"]
TIGHT = {"rtol": 1e-9, "atol": 1e-12}


def compiled(text: str, backend: str):
    return rnnc.compile(rnnc.parse_spec(spec_text(text)), backend=backend, dtype="float64")


def packed(x, lengths):
    return torch.nn.utils.rnn.pack_padded_sequence(
        x, torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )


# --- 1. a head on a final state ----------------------------------------------------------

CLASSIFIER = """
rnnc: 1
name: classifier
inputs:
  words: {vocab: 30, embed: 5}
layers:
  reader: {cell: gru, hidden: 6, input: words, direction: bidirectional, depth: 2}
  head: {dense: 3, input: {from: reader, state: h}}
outputs:
  label: {from: head}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_on_the_final_state_is_torch_gru_then_linear(backend: str) -> None:
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(30, 5).double()
    gru = torch.nn.GRU(5, 6, num_layers=2, bidirectional=True, batch_first=True).double()
    linear = torch.nn.Linear(12, 3).double()
    model = compiled(CLASSIFIER, backend)
    params = from_torch(gru.state_dict(), "reader", "gru", 2, True)
    params["words.embedding"] = embedding.weight.detach().numpy()
    params["head.W"] = linear.weight.detach().numpy()
    params["head.b"] = linear.bias.detach().numpy()
    model.load_params(params)

    rng = np.random.default_rng(1)
    ids = rng.integers(0, 30, (5, 8))
    lengths = np.array([8, 3, 5, 1, 6])
    cot = rng.standard_normal((5, 3))
    _, h_n = gru(packed(embedding(torch.tensor(ids)), lengths))
    label = linear(torch.cat([h_n[-2], h_n[-1]], dim=-1))  # top layer, both directions
    (label * torch.tensor(cot)).sum().backward()

    ours = model.run({"words": ids}, lengths=lengths)
    assert ours["label"].shape == (5, 3)  # no time axis
    np.testing.assert_allclose(ours["label"], label.detach().numpy(), **TIGHT)
    grads = model.vjp({"words": ids}, {"label": cot}, lengths=lengths)
    expected = torch_grads(gru, "reader", "gru", 2, True)
    expected["words.embedding"] = embedding.weight.grad.numpy()
    expected["head.W"] = linear.weight.grad.numpy()
    expected["head.b"] = linear.bias.grad.numpy()
    assert set(expected) == set(grads)
    for name, value in expected.items():
        np.testing.assert_allclose(grads[name], value, **TIGHT, err_msg=name)


POOLS = """
rnnc: 1
name: pools
inputs:
  x: {size: 3}
layers:
  rnn: {cell: rnn, hidden: 4, input: x, direction: bidirectional}
  head: {dense: 2, input: [{from: rnn, pool: mean}, {from: rnn, pool: max}, {from: x, steps: last}]}
  again: {cell: gru, hidden: 3, input: [x, {from: rnn, state: h}]}
outputs:
  steps: {from: rnn}
  mean: {from: rnn, pool: mean}
  max: {from: rnn, pool: max}
  head: {from: head}
  again: {from: again}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_pools_are_over_each_examples_valid_steps(backend: str) -> None:
    model = compiled(POOLS, backend)
    model.load_params(rnnc.init_params(model.analysis.spec, seed=2))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 3))
    lengths = np.array([6, 2, 4, 1])
    out = model.run({"x": x}, lengths=lengths)
    assert out["mean"].shape == out["max"].shape == (4, 8) and out["head"].shape == (4, 2)
    for b, n in enumerate(lengths):
        valid = out["steps"][b, :n]
        np.testing.assert_allclose(out["mean"][b], valid.mean(axis=0), **TIGHT)
        np.testing.assert_allclose(out["max"][b], valid.max(axis=0), **TIGHT)


def test_pools_and_state_inputs_match_finite_differences() -> None:
    model = compiled(POOLS, "numpy")
    model.load_params(rnnc.init_params(model.analysis.spec, seed=4))
    rng = np.random.default_rng(5)
    inputs, lengths = random_inputs(model.analysis.spec, rng, batch=3, steps=5)
    errors = directional_errors(model, inputs, lengths, rng)
    assert max(errors.values()) < 1e-6, errors


def test_last_step_of_a_bidirectional_layer_warns_and_offers_the_state() -> None:
    text = spec_text(CLASSIFIER).replace("{from: reader, state: h}", "{from: reader, steps: last}")
    (warning,) = rnnc.check(rnnc.parse_spec(text))
    assert warning.severity == "warning"
    assert warning.dotted_path == "layers.head.input.steps"
    assert "backward direction has read only that one token" in warning.message
    assert "'state: h'" in warning.message


@pytest.mark.parametrize(
    ("entry", "path", "words"),
    [
        ("{from: words, state: h}", "layers.head.input.state", "'state' needs a recurrent layer"),
        ("{from: reader, state: c}", "layers.head.input.state", "cell 'gru' has no state 'c'"),
        ("{from: head2, pool: mean}", "layers.head.input.from", "unknown name 'head2'"),
    ],
)
def test_selections_that_do_not_exist_are_refused(entry: str, path: str, words: str) -> None:
    text = spec_text(CLASSIFIER).replace("{from: reader, state: h}", entry)
    errors = [d for d in rnnc.check(rnnc.parse_spec(text)) if d.severity == "error"]
    assert any(d.dotted_path == path and words in d.message for d in errors), errors


# --- 2. (h, c) handed over layer by layer -------------------------------------------------

HANDOFF = """
rnnc: 1
name: handoff
inputs:
  src: {size: 4}
  tgt: {size: 3}
layers:
  encoder: {cell: lstm, hidden: 6, input: src, depth: 2}
  decoder: {cell: lstm, hidden: 6, input: tgt, depth: 2, init: {from: encoder, states: [h, c]}}
outputs:
  y: {from: decoder}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_handoff_is_two_torch_lstms_passing_h_n_and_c_n(backend: str) -> None:
    torch.manual_seed(0)
    encoder = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True).double()
    decoder = torch.nn.LSTM(3, 6, num_layers=2, batch_first=True).double()
    model = compiled(HANDOFF, backend)
    params = from_torch(encoder.state_dict(), "encoder", "lstm", 2)
    params.update(from_torch(decoder.state_dict(), "decoder", "lstm", 2))
    model.load_params(params)

    rng = np.random.default_rng(6)
    src, tgt = rng.standard_normal((4, 7, 4)), rng.standard_normal((4, 5, 3))
    lengths = {"src": np.array([7, 2, 5, 3]), "tgt": np.array([5, 5, 1, 3])}
    cot = rng.standard_normal((4, 5, 6))
    src_t, tgt_t = torch.tensor(src, requires_grad=True), torch.tensor(tgt, requires_grad=True)
    _, (h_n, c_n) = encoder(packed(src_t, lengths["src"]))
    out, _ = decoder(packed(tgt_t, lengths["tgt"]), (h_n, c_n))
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=5)
    (y * torch.tensor(cot)).sum().backward()

    inputs = {"src": src, "tgt": tgt}
    np.testing.assert_allclose(model.run(inputs, lengths=lengths)["y"], y.detach().numpy(), **TIGHT)
    grads = model.vjp(inputs, {"y": cot}, lengths=lengths)
    expected = torch_grads(encoder, "encoder", "lstm", 2, False)
    expected.update(torch_grads(decoder, "decoder", "lstm", 2, False))
    expected.update(src=src_t.grad.numpy(), tgt=tgt_t.grad.numpy())
    for name, value in expected.items():
        np.testing.assert_allclose(grads[name], value, **TIGHT, err_msg=name)


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (("depth: 2, init", "depth: 1, init"), "layers.decoder.init.states",
         "their depths differ (2 and 1)"),
        (("states: [h, c]", "states: [h, n]"), "layers.decoder.init.states[1]",
         "has no state 'n'"),
        (("input: src, depth: 2", "input: src, depth: 2, direction: bidirectional"),
         "layers.decoder.init", "width 12 (2 x 6: both directions, merge: concat)"),
        (("encoder: {cell: lstm", "encoder: {cell: gru"), "layers.decoder.init.states[1]",
         "'encoder' runs cell 'gru', which has no state 'c'"),
    ],
)  # fmt: skip
def test_handoffs_that_do_not_fit_are_refused(change, path: str, words: str) -> None:
    text = spec_text(HANDOFF).replace(*change)
    errors = [d for d in rnnc.check(rnnc.parse_spec(text)) if d.severity == "error"]
    assert any(d.dotted_path == path and words in d.message for d in errors), errors


def test_a_bidirectional_handoff_fits_through_a_bridge_per_depth_and_state() -> None:
    text = (
        spec_text(HANDOFF)
        .replace("input: src, depth: 2", "input: src, depth: 2, direction: bidirectional")
        .replace("states: [h, c]", "states: [h, c], bridge: dense")
    )
    spec = rnnc.parse_spec(text)
    shapes = rnnc.compile(spec, backend="numpy").param_shapes()
    bridges = {k: v for k, v in shapes.items() if ".bridge." in k}
    assert bridges == {
        f"decoder.bridge.l{k}.{p}_{s}": (6, 12) if p == "W" else (6,)
        for k in range(2)
        for s in "hc"
        for p in "Wb"
    }
    model = rnnc.compile(spec, backend="numpy", dtype="float64")
    model.load_params(rnnc.init_params(spec, seed=1))
    rng = np.random.default_rng(2)
    inputs, lengths = random_inputs(spec, rng, batch=3, steps=4)
    assert max(directional_errors(model, inputs, lengths, rng).values()) < 1e-6


# --- 3 and 4. Luong attention with input feeding; the alignment as an output ---------------

LUONG = """
rnnc: 1
name: luong
inputs:
  src: {size: 4}
  tgt: {size: 3}
layers:
  encoder: {cell: lstm, hidden: 5, input: src}
  decoder:
    cell: lstm
    hidden: 5
    input: tgt
    init: {from: encoder, states: [h, c]}
    attention: {memory: encoder, score: general, input_feeding: true}
  out: {dense: 2, input: decoder}
outputs:
  y: {from: out}
  align: {from: decoder, attention: weights}
"""


def lstm_step(p, prefix, x, h, c):
    """One LSTM step from rnnc's parameters: each gate's matrix is over [x, h]."""
    xh = torch.cat([x, h], dim=-1)
    gate = {g: xh @ p[f"{prefix}W_{g}"].T + p[f"{prefix}b_{g}"] for g in "ifgo"}
    c = torch.sigmoid(gate["f"]) * c + torch.sigmoid(gate["i"]) * torch.tanh(gate["g"])
    return torch.sigmoid(gate["o"]) * torch.tanh(c), c


def luong_reference(p, src, tgt, src_len, tgt_len):
    """Luong et al. 2015 as written: encoder, then at each target step the decoder
    reads [y_t, attentional_{t-1}], scores its new h against W_a m_s over the valid
    source steps, and outputs tanh(W_c [context; h])."""
    B, S, _ = src.shape
    h = c = torch.zeros(B, 5, dtype=torch.float64)
    memory = []
    for s in range(S):  # past each example's length the state stays
        h2, c2 = lstm_step(p, "encoder.fwd.l0.", src[:, s], h, c)
        on = torch.tensor(s < src_len)[:, None]
        h, c = torch.where(on, h2, h), torch.where(on, c2, c)
        memory.append(torch.where(on, h2, torch.zeros_like(h2)))
    memory = torch.stack(memory, dim=1)  # (B, S, 5)
    valid = torch.arange(S)[None, :] < torch.tensor(src_len)[:, None]
    keys = memory @ p["decoder.attention.W_a"].T
    attentional = torch.zeros(B, 5, dtype=torch.float64)
    ys, aligns = [], []
    for t in range(tgt.shape[1]):
        x = torch.cat([tgt[:, t], attentional], dim=-1)
        h, c = lstm_step(p, "decoder.fwd.l0.", x, h, c)
        scores = torch.einsum("bh,bsh->bs", h, keys).masked_fill(~valid, -torch.inf)
        weights = torch.softmax(scores, dim=-1)
        context = torch.einsum("bs,bsm->bm", weights, memory)
        both = torch.cat([context, h], dim=-1)
        attentional = torch.tanh(both @ p["decoder.attention.W_c"].T + p["decoder.attention.b_c"])
        on = torch.tensor(t < tgt_len)[:, None]
        ys.append(torch.where(on, attentional @ p["out.W"].T + p["out.b"], 0.0))
        aligns.append(torch.where(on, weights, 0.0))
    return torch.stack(ys, dim=1), torch.stack(aligns, dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_feeding_and_alignment_are_luong_as_written(backend: str) -> None:
    model = compiled(LUONG, backend)
    params = rnnc.init_params(model.analysis.spec, seed=3)
    model.load_params(params)
    rng = np.random.default_rng(8)
    src, tgt = rng.standard_normal((3, 6, 4)), rng.standard_normal((3, 4, 3))
    lengths = {"src": np.array([6, 2, 4]), "tgt": np.array([4, 1, 3])}
    cot = {"y": rng.standard_normal((3, 4, 2)), "align": rng.standard_normal((3, 4, 6))}

    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    src_t, tgt_t = torch.tensor(src, requires_grad=True), torch.tensor(tgt, requires_grad=True)
    y, align = luong_reference(p, src_t, tgt_t, lengths["src"], lengths["tgt"])
    ((y * torch.tensor(cot["y"])).sum() + (align * torch.tensor(cot["align"])).sum()).backward()

    inputs = {"src": src, "tgt": tgt}
    ours = model.run(inputs, lengths=lengths)
    np.testing.assert_allclose(ours["y"], y.detach().numpy(), **TIGHT)
    np.testing.assert_allclose(ours["align"], align.detach().numpy(), **TIGHT)
    grads = model.vjp(inputs, cot, lengths=lengths)
    assert set(grads) == {*params, "src", "tgt"}
    for name, value in p.items():
        np.testing.assert_allclose(grads[name], value.grad.numpy(), **TIGHT, err_msg=name)
    np.testing.assert_allclose(grads["src"], src_t.grad.numpy(), **TIGHT)
    np.testing.assert_allclose(grads["tgt"], tgt_t.grad.numpy(), **TIGHT)


def with_alignment(name: str) -> rnnc.Spec:
    """A gallery decoder with its attention weights as an output too."""
    text = (ROOT / "specs" / f"{name}.yaml").read_text()
    if "attention: weights" not in text:
        text = text.replace(
            "outputs:\n", "outputs:\n  alignment: {from: decoder, attention: weights}\n"
        )
    return rnnc.parse_spec(text)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["seq2seq_attention", "seq2seq_luong", "seq2seq_luong_feeding"])
@pytest.mark.parametrize("mode", ["train", "generate"])
def test_alignment_rows_weigh_the_valid_source_steps(backend: str, name: str, mode: str) -> None:
    spec = with_alignment(name)
    model = rnnc.compile(spec, backend=backend, dtype="float64")
    model.load_params(rnnc.init_params(spec, seed=0))
    rng = np.random.default_rng(9)
    inputs, lengths = random_inputs(spec, rng, batch=4, steps=5)
    lengths = {"src": np.array([5, 2, 4, 1]), "tgt": np.array([5, 3, 1, 4])}
    options = {"mode": "generate", "steps": 6} if mode == "generate" else {}
    align = model.run(inputs, lengths=lengths, **options)["alignment"]
    T = 6 if mode == "generate" else 5
    assert align.shape == (4, T, 5)
    for b in range(4):
        rows = T if mode == "generate" else lengths["tgt"][b]
        valid = align[b, :rows, : lengths["src"][b]]
        np.testing.assert_allclose(valid.sum(axis=-1), 1.0, rtol=1e-12)
        assert (valid > 0).all()
        assert not align[b, :rows, lengths["src"][b] :].any()  # invalid source steps
        assert not align[b, rows:].any()  # past the target's length


def test_alignment_of_a_decoder_without_attention_is_refused() -> None:
    text = (ROOT / "specs" / "seq2seq.yaml").read_text()
    text = text.replace(
        "outputs:\n", "outputs:\n  alignment: {from: decoder, attention: weights}\n"
    )
    errors = [d for d in rnnc.check(rnnc.parse_spec(text)) if d.severity == "error"]
    assert [d.dotted_path for d in errors] == ["outputs.alignment.attention"]
    assert "needs a layer with attention" in errors[0].message


def test_input_feeding_is_luongs() -> None:
    text = (
        (ROOT / "specs" / "seq2seq_attention.yaml")
        .read_text()
        .replace("score: additive}", "score: additive, input_feeding: true}")
    )
    errors = [d for d in rnnc.check(rnnc.parse_spec(text)) if d.severity == "error"]
    assert [d.dotted_path for d in errors] == ["layers.decoder.attention.input_feeding"]
    assert "Luong's (score: dot or general)" in errors[0].message
