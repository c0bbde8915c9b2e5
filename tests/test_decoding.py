"""rnnc.runtime.decoding: teacher forcing and greedy feedback written once over the generated
modules' step contract (init, step, finish) give, on both backends, exactly what the
modules' own step loops give in train mode (every coin heads) and in generate mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnc
from rnnc.ir.program import time_axes
from rnnc.runtime import decoding
from rnnc.runtime.compiled import RunOptions
from tests.helpers import random_inputs

GALLERY = Path(__file__).resolve().parents[1] / "specs"
DECODERS = ["seq2seq", "seq2seq_attention", "seq2seq_luong", "image_captioning"]
DECODERS += ["teacher_forcing_rnn", "seq2seq_sutskever", "seq2seq_luong_feeding"]
STEPS = 5


def _prepared(model: Any, inputs: dict[str, Any], options: RunOptions) -> tuple[Any, Any, Any]:
    """What the generated functions take: parameters, inputs and lengths by axis, as
    arrays (NumPy) or tensors (torch)."""
    inputs_, lengths_, _ = options.prepare(model.analysis, inputs)
    if model.backend == "numpy":
        return model._params, inputs_, lengths_
    torch = pytest.importorskip("torch")
    params = {model.module.canonical[k]: p for k, p in model.module.named_parameters()}
    tensors = {k: torch.as_tensor(v) for k, v in inputs_.items()}
    return params, tensors, {k: torch.as_tensor(v) for k, v in lengths_.items()}


def _numpy(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() if hasattr(v, "detach") else v for k, v in outputs.items()}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", DECODERS)
def test_strategies_over_the_step_contract_equal_the_modules_own_loop(
    name: str, backend: str
) -> None:
    if backend == "torch":
        pytest.importorskip("torch")
    spec = rnnc.load_spec(GALLERY / f"{name}.yaml")
    model = rnnc.compile(rnnc.analyze(spec), backend=backend, dtype="float64")
    model.load_params({k: v for k, v in rnnc.init_params(model.analysis, seed=3).items()})
    inputs, lengths = random_inputs(spec, np.random.default_rng(0), batch=3, steps=STEPS)
    module = model.namespace
    # teacher forcing: the ground truth at every step
    masks = {axis: np.ones((3, STEPS), dtype=bool) for axis in time_axes(model.analysis)[1]}
    options = RunOptions(lengths=lengths, tf_mask=masks)
    expected = model.run(inputs, lengths=lengths, tf_mask=masks)
    forced = _numpy(decoding.teacher_forced(module, *_prepared(model, inputs, options)))
    assert forced.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(forced[key], value, rtol=1e-12, atol=1e-12, err_msg=key)
    # greedy: the argmax of each step fed to the next
    options = RunOptions(lengths=lengths, mode="generate", steps=STEPS)
    expected = model.run(inputs, lengths=lengths, mode="generate", steps=STEPS)
    free = _numpy(decoding.greedy(module, *_prepared(model, inputs, options), steps=STEPS))
    for key, value in expected.items():
        np.testing.assert_allclose(free[key], value, rtol=1e-12, atol=1e-12, err_msg=key)


def test_a_spec_without_feedback_has_no_step_contract() -> None:
    spec = rnnc.load_spec(GALLERY / "elman_rnn.yaml")
    model = rnnc.compile(rnnc.analyze(spec), backend="numpy", dtype="float64")
    assert "step" not in model.namespace and "STEP" not in model.namespace
