"""Property: every spec the language accepts compiles on the NumPy backend, runs with
the shapes the summary promises, and its gradients agree with finite differences
(random specs from tests/test_properties; each parameter along a random direction)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rnnc
from rnnc.tools.summary import output_shapes
from tests.helpers import directional_errors, random_inputs
from tests.test_numpy_backend import Mode
from tests.test_properties import BASE_EXAMPLES, Generated, _settings, any_valid_specs, dump

pytestmark = pytest.mark.slow


def smooth(spec: dict) -> dict:
    """The spec with relu -> tanh (activations), rnn_relu -> rnn, and in user cells
    relu -> softsign, hard_sigmoid -> sigmoid: the same structure, no kinks."""
    out = copy.deepcopy(spec)
    for layer in out.get("layers", {}).values():
        if layer.get("cell") == "rnn_relu":
            layer["cell"] = "rnn"
        if layer.get("activation") == "relu":
            layer["activation"] = "tanh"
    for cell in out.get("cells", {}).values():
        cell["equations"] = {
            k: v.replace("hard_sigmoid(", "sigmoid(").replace("relu(", "softsign(")
            for k, v in cell["equations"].items()
        }
    return out


@_settings(max(1, BASE_EXAMPLES // 2))
@given(
    any_valid_specs(),
    st.integers(0, 2**16),
)
def test_generated_specs_compile_run_and_differentiate(gen: Generated, seed: int) -> None:
    spec = rnnc.parse_spec(dump(gen.spec))
    analysis = rnnc.analyze(spec)
    model = rnnc.compile(analysis, backend="numpy", dtype="float64")
    rng = np.random.default_rng(seed)
    steps = 4
    inputs, lengths = random_inputs(spec, rng, batch=2, steps=steps)
    outputs = model.run(inputs, lengths=lengths)
    expected = output_shapes(analysis, 2, {axis: steps for axis in lengths})
    assert {k: v.shape for k, v in outputs.items()} == expected
    assert all(np.all(np.isfinite(v)) for v in outputs.values())
    # Gradients are checked on the same spec with smooth functions in place of the
    # kinked ones (relu, hard_sigmoid): a finite difference across a kink measures a
    # one-sided slope, and a deep relu network has many kinks near any point.
    spec = rnnc.parse_spec(dump(smooth(gen.spec)))
    analysis = rnnc.analyze(spec)
    model = rnnc.compile(analysis, backend="numpy", dtype="float64")
    # Teacher forcing throughout: with predictions fed back, a near tie in an argmax
    # makes the loss jump under a small step, and no finite difference holds there.
    # (Feedback's gradients are checked on the gallery, in every mode, with fixed seeds.)
    fed_axes = {
        analysis.graph.nodes[name]["axis"]
        for name, layer in spec.layers.items()
        if getattr(layer, "feedback", None)
    }
    options = {"tf_mask": {axis: np.ones((2, steps), dtype=bool) for axis in fed_axes}}
    # At a random point, away from the special values param_init may set, and small
    # enough that cells without a squashing function (c: W @ [c, m]) do not blow up.
    model.load_params({k: rng.normal(0.0, 0.1, v.shape) for k, v in model.params().items()})
    errors = directional_errors(Mode(model, **options), inputs, lengths, rng)
    bad = {k: v for k, v in errors.items() if v > 1e-6}
    assert not bad, (bad, dump(gen.spec))
