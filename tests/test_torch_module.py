"""The generated torch module as a PyTorch user meets it: ``net(inputs, lengths=...)``
refuses what ``run`` refuses, in the same words; ``net.eval()`` is deterministic (the
ground truth at every step, no dropout) while ``net.train()`` samples; ``print(net)``
says what each layer is. The oracle for numbers is the NumPy backend's ``run``."""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np
import pytest

import rnnc
from rnnc.runtime.compiled import check_input_values, check_lengths, check_tf_mask
from rnnc.tools.verify import random_inputs
from tests.conftest import ROOT

torch = pytest.importorskip("torch")  # the torch extra is installed by make test

Inputs = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # arrays and lengths
RTOL, ATOL = 1e-10, 1e-12  # float64, two implementations


def compiled(stem: str, backend: str = "torch") -> Any:
    return rnnc.compile(rnnc.load_spec(ROOT / "specs" / f"{stem}.yaml"), backend, "float64")


def tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: torch.as_tensor(value) for name, value in arrays.items()}


def assert_same_outputs(ours: dict[str, Any], expected: dict[str, np.ndarray]) -> None:
    assert set(ours) == set(expected)
    for name, value in expected.items():
        assert ours[name].shape == value.shape, name
        np.testing.assert_allclose(ours[name].detach().numpy(), value, rtol=RTOL, atol=ATOL)


def refusals(model: Any, inputs: dict[str, Any], **options: Any) -> tuple[Exception, str]:
    """What the module raises for these inputs, and the message run gives for them."""
    with pytest.raises((ValueError, TypeError)) as by_module:
        model.module(inputs, **options)
    arrays = {k: v.numpy() if torch.is_tensor(v) else v for k, v in inputs.items()}
    run_options = {
        k: {a: np.asarray(x) for a, x in v.items()} if isinstance(v, dict) else v
        for k, v in options.items()
    }
    with pytest.raises(rnnc.RnncError) as by_run:
        model.run(arrays, **run_options)
    return by_module.value, str(by_run.value)


# --- inputs are checked as run checks them ---------------------------------------------


@pytest.fixture(scope="module")
def luong() -> Any:
    return compiled("seq2seq_luong")


@pytest.fixture(scope="module")
def luong_inputs(luong: Any) -> Inputs:
    return random_inputs(luong.analysis, np.random.default_rng(0), batch=4, steps=6)


def test_a_misspelt_input_is_named_with_the_inputs_the_spec_has(
    luong: Any, luong_inputs: Inputs
) -> None:
    inputs, _ = luong_inputs
    given = {"src": inputs["src"], "tgtt": inputs["tgt"]}
    error, by_run = refusals(luong, tensors(given))
    assert type(error) is ValueError
    assert (
        str(error)
        == by_run
        == (
            "inputs do not fit the spec: tgt: missing; tgtt: not an input of the spec; "
            "the spec's inputs are src, tgt"
        )
    )


def test_a_missing_input_is_named(luong: Any, luong_inputs: Inputs) -> None:
    inputs, _ = luong_inputs
    error, by_run = refusals(luong, tensors({"src": inputs["src"]}))
    assert type(error) is ValueError
    assert str(error) == by_run
    assert "tgt: missing" in by_run and "the spec's inputs are src, tgt" in by_run


@pytest.mark.parametrize("library", ["torch", "numpy"])
def test_float_token_ids_are_a_type_error(luong: Any, luong_inputs: Inputs, library: str) -> None:
    inputs, _ = luong_inputs
    floats = inputs["src"].astype(np.float64)
    given = {**tensors(inputs), "src": torch.as_tensor(floats) if library == "torch" else floats}
    error, by_run = refusals(luong, given)
    assert type(error) is TypeError
    found = "torch.float64" if library == "torch" else "float64"
    assert (
        str(error)
        == f"inputs do not fit the spec: src: expected integer token ids, found dtype {found}"
    )
    assert (
        by_run == "inputs do not fit the spec: src: expected integer token ids, found dtype float64"
    )


def test_a_dtype_among_other_problems_is_a_value_error(luong: Any, luong_inputs: Inputs) -> None:
    inputs, _ = luong_inputs
    given = {"src": torch.as_tensor(inputs["src"]).float()}
    error, by_run = refusals(luong, given)
    assert type(error) is ValueError
    assert str(error) == by_run.replace("float32", "torch.float32")  # each its own dtype
    assert "src: expected integer token ids" in by_run and "tgt: missing" in by_run


def test_token_ids_out_of_the_vocabulary_are_refused(luong: Any, luong_inputs: Inputs) -> None:
    inputs, _ = luong_inputs
    error, by_run = refusals(luong, tensors({**inputs, "tgt": inputs["tgt"] + 40}))
    assert str(error) == by_run == "inputs do not fit the spec: tgt: token ids must be in 0..39"


def test_numpy_token_ids_with_as_many_steps_as_examples_give_run_s_numbers(luong: Any) -> None:
    # B == T: a (B, T) array read the wrong way round would still have a fitting shape.
    inputs, lengths = random_inputs(luong.analysis, np.random.default_rng(1), batch=5, steps=5)
    assert inputs["src"].shape == (5, 5) and inputs["src"].dtype.kind == "i"
    net = luong.module.eval()
    ours = net(inputs, lengths=lengths)  # NumPy ids and NumPy lengths, converted
    oracle = compiled("seq2seq_luong", "numpy")
    expected = oracle.run(inputs, lengths=lengths, tf_mask=np.ones((5, 5), bool))
    assert_same_outputs(ours, expected)
    # The same arrays as tensors: no difference.
    again = net(tensors(inputs), lengths=tensors(lengths))
    for name, value in ours.items():
        assert torch.equal(value, again[name])


def test_numpy_reals_are_converted_and_a_wrong_width_refused() -> None:
    model = compiled("deep_residual_rnn")
    inputs, lengths = random_inputs(model.analysis, np.random.default_rng(2), batch=3, steps=4)
    net = model.module.eval()
    expected = compiled("deep_residual_rnn", "numpy").run(inputs, lengths=lengths)
    assert_same_outputs(net(inputs, lengths=lengths), expected)
    wide = {"x": np.zeros((3, 4, 129))}
    error, by_run = refusals(model, tensors(wide))
    assert type(error) is ValueError
    assert (
        str(error)
        == by_run
        == "inputs do not fit the spec: x: expected shape (B, T, 128), found (3, 4, 129)"
    )
    # Time-first or unbatched: the rank is wrong.
    error, by_run = refusals(model, {"x": torch.zeros(4, 128)})
    assert (
        str(error)
        == by_run
        == "inputs do not fit the spec: x: expected shape (B, T, 128), found (4, 128)"
    )


@pytest.mark.parametrize("length", [0, 7])
def test_lengths_outside_one_to_t_are_refused(
    luong: Any, luong_inputs: Inputs, length: int
) -> None:
    inputs, lengths = luong_inputs  # T = 6
    bad = {**lengths, "src": np.array([6, length, 2, 3])}
    error, by_run = refusals(luong, tensors(inputs), lengths=tensors(bad))
    assert type(error) is ValueError
    assert str(error) == by_run == "lengths['src'] must be (B,) = (4,) integers in 1..6"


def test_lengths_of_the_wrong_batch_and_masks_of_the_wrong_shape_are_refused(
    luong: Any, luong_inputs: Inputs
) -> None:
    inputs, _ = luong_inputs
    error, by_run = refusals(luong, tensors(inputs), lengths={"tgt": torch.tensor([6, 6, 6])})
    assert str(error) == by_run == "lengths['tgt'] must be (B,) = (4,) integers in 1..6"
    error, by_run = refusals(
        luong, tensors(inputs), tf_mask={"tgt": torch.ones(4, 5, dtype=torch.bool)}
    )
    assert str(error) == by_run == "tf_mask for 'tgt' must be (B, T) = (4, 6)"


def test_the_module_carries_run_s_checks_as_text(luong: Any) -> None:
    for check in (check_input_values, check_lengths, check_tf_mask):
        assert inspect.getsource(check).strip() in luong.source
    # importing the module needs only torch and numpy; generate alone uses rnnc's strategies
    assert not re.search(r"^(import|from) rnnc", luong.source, re.MULTILINE)
    inner = re.findall(r"^\s+(?:import|from) rnnc.*$", luong.source, re.MULTILINE)
    assert inner == ["        from rnnc.runtime import decoding"]
    assert luong.source.index(inner[0]) > luong.source.index("    def generate(")


# --- eval mode is deterministic, train mode samples ------------------------------------


def test_eval_feeds_the_ground_truth_at_every_step(luong: Any, luong_inputs: Inputs) -> None:
    inputs, lengths = luong_inputs
    net = luong.module.eval()
    torch.manual_seed(0)
    first = net(tensors(inputs), lengths=tensors(lengths))
    torch.manual_seed(1)  # no draws: another seed changes nothing
    second = net(tensors(inputs), lengths=tensors(lengths))
    for name, value in first.items():
        assert torch.equal(value, second[name])
    oracle = compiled("seq2seq_luong", "numpy")
    truth = np.ones(inputs["tgt"].shape, bool)
    assert_same_outputs(first, oracle.run(inputs, lengths=lengths, tf_mask=truth))


def test_train_draws_the_teacher_forcing_mask(luong: Any, luong_inputs: Inputs) -> None:
    inputs, lengths = luong_inputs
    net = luong.module
    try:
        net.train()
        torch.manual_seed(0)
        sampled = net(tensors(inputs), lengths=tensors(lengths))
        torch.manual_seed(0)
        mask = torch.rand(inputs["tgt"].shape) < 0.75  # the spec's teacher_forcing
        assert not bool(mask.all())
        oracle = compiled("seq2seq_luong", "numpy")
        expected = oracle.run(inputs, lengths=lengths, tf_mask=mask.numpy())
        assert_same_outputs(sampled, expected)
        truth = oracle.run(inputs, lengths=lengths, tf_mask=np.ones(mask.shape, bool))
        assert not np.allclose(sampled["logits"].detach().numpy(), truth["logits"])
    finally:
        net.eval()


def test_an_explicit_mask_wins_in_eval_mode(luong: Any, luong_inputs: Inputs) -> None:
    inputs, lengths = luong_inputs
    net = luong.module.eval()
    mask = np.random.default_rng(3).random(inputs["tgt"].shape) < 0.5
    ours = net(tensors(inputs), lengths=tensors(lengths), tf_mask=torch.as_tensor(mask))
    oracle = compiled("seq2seq_luong", "numpy")
    assert_same_outputs(ours, oracle.run(inputs, lengths=lengths, tf_mask=mask))
    truth = oracle.run(inputs, lengths=lengths, tf_mask=np.ones(mask.shape, bool))
    assert not np.allclose(ours["logits"].detach().numpy(), truth["logits"])


def test_eval_drops_no_units_and_train_does() -> None:
    model = compiled("deep_residual_rnn")  # dropout 0.1 between its stacked layers
    inputs, lengths = random_inputs(model.analysis, np.random.default_rng(4), batch=3, steps=4)
    net = model.module
    oracle = compiled("deep_residual_rnn", "numpy")
    without_dropout = oracle.run(inputs, lengths=lengths)
    try:
        net.eval()
        torch.manual_seed(0)
        first = net(tensors(inputs), lengths=tensors(lengths))
        torch.manual_seed(1)
        assert torch.equal(first["y"], net(tensors(inputs), lengths=tensors(lengths))["y"])
        assert_same_outputs(first, without_dropout)
        net.train()
        torch.manual_seed(0)
        dropped = net(tensors(inputs), lengths=tensors(lengths))
        assert not np.allclose(dropped["y"].detach().numpy(), without_dropout["y"])
    finally:
        net.eval()


# --- print(net) -----------------------------------------------------------------------


def test_print_shows_each_layer_with_its_cell_sizes_direction_and_depth(luong: Any) -> None:
    text = repr(luong.module)
    assert "Module()" not in text and "(fwd)" not in text
    assert text.splitlines() == [
        "Model(",
        "  (src): Layer(embedding(40, 32))",
        "  (tgt): Layer(embedding(40, 32))",
        "  (encoder): Layer(lstm(32, 64, forward, depth=2), input src)",
        "  (decoder): Layer(lstm(32, 64, forward, depth=2), input tgt, starts from encoder, "
        "general attention over encoder, feeds back out (teacher forcing 0.75))",
        "  (out): Layer(dense(64, 40), input decoder)",
        ")",
    ]
    assert luong.module.encoder.extra_repr() == "lstm(32, 64, forward, depth=2), input src"


def test_print_shows_direction_residual_and_dropout() -> None:
    bidirectional = compiled("bidirectional_lstm").module
    assert bidirectional.bilstm.extra_repr() == (
        "lstm(50, 64, bidirectional, depth=1), input tokens"
    )
    assert bidirectional.tags.extra_repr() == "dense(128, 9), input bilstm"
    deep = compiled("deep_residual_rnn").module
    assert deep.stack.extra_repr() == (
        "lstm(128, 128, forward, depth=4, residual, dropout=0.1), input x"
    )


def test_layers_keep_the_state_dict_in_the_order_of_the_names(luong: Any) -> None:
    assert list(luong.module.state_dict()) == list(rnnc.init_params(luong.analysis))
