"""Property: every spec the language accepts compiles on the NumPy backend, runs, and
its gradients agree with finite differences (random specs from tests/test_properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rnnc
from rnnc.summary import output_shapes
from tests.helpers import random_inputs
from tests.test_properties import BASE_EXAMPLES, Generated, _settings, dump, valid_specs

pytestmark = pytest.mark.slow


def _joint_error(model, inputs, lengths, rng, options) -> float:
    """Relative error of <vjp, u> against fourth-order differences along one random
    direction u over all parameters and real inputs at once."""
    outputs = model.run(inputs, lengths=lengths, **options)
    cotangents = {k: rng.standard_normal(v.shape) for k, v in outputs.items()}
    grads = model.vjp(inputs, cotangents, lengths=lengths, **options)
    params = model.params()
    u = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    w = {k: rng.standard_normal(v.shape) for k, v in inputs.items() if v.dtype.kind == "f"}

    def loss(step: float) -> float:
        model.load_params({k: v + step * u[k] for k, v in params.items()})
        moved = {k: v + step * w[k] if k in w else v for k, v in inputs.items()}
        out = model.run(moved, lengths=lengths, **options)
        return sum(float((out[k] * cotangents[k]).sum()) for k in out)

    # Two steps, the smaller error kept: a step may cross a kink of relu (see
    # tests.helpers.directional_errors); a wrong gradient is wrong at both.
    numerics = [
        (-loss(2 * eps) + 8 * loss(eps) - 8 * loss(-eps) + loss(-2 * eps)) / (12 * eps)
        for eps in (1e-4, 1e-6)
    ]
    model.load_params(params)
    analytic = sum(float((grads[k] * u[k]).sum()) for k in u) + sum(
        float((grads[k] * w[k]).sum()) for k in w
    )
    return min(abs(n - analytic) / max(abs(n), abs(analytic), 1e-9) for n in numerics)


@_settings(max(1, BASE_EXAMPLES // 2))
@given(
    st.one_of(
        valid_specs(),
        valid_specs(user_cell=True),
        valid_specs(decoder=True, attention=True),
        valid_specs(feedback=True, static=True),
    ),
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
    feedback = any(getattr(layer, "feedback", None) for layer in spec.layers.values())
    options = {"tf_mask": rng.random((2, steps)) < 0.5} if feedback else {}
    if feedback and len([a for a in lengths if a]) > 1:
        # The mask belongs to the decoder's axis; other axes have none.
        axis = next(
            analysis.graph.nodes[n]["axis"]
            for n, layer in spec.layers.items()
            if getattr(layer, "feedback", None)
        )
        options = {"tf_mask": {axis: options["tf_mask"]}}
    # At a random point: param_init constants (W: 0.0) could sit exactly on relu's kink,
    # where finite differences see a one-sided slope.
    model.load_params({k: rng.normal(0.0, 0.5, v.shape) for k, v in model.params().items()})
    error = _joint_error(model, inputs, lengths, rng, options)
    assert error < 1e-6, (error, dump(gen.spec))
