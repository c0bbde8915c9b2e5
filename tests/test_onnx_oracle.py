"""Both backends against ONNX's reference RNN, LSTM (with peepholes) and GRU
(linear_before_reset 0 and 1) operators, in every direction ONNX has.

onnx.reference ignores the sequence_lens input (it runs every example to the full
length), so these cases use full lengths; ragged batches are held against torch.nn in
tests/test_torch_oracle.py instead.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import rnnc
from rnnc.runtime.interop import from_onnx, to_onnx
from rnnc.runtime.registry import available_backends
from tests.helpers import spec_text

CASES = {  # rnnc cell -> (ONNX op, attributes, gates)
    "rnn": ("RNN", {}, 1),
    "lstm": ("LSTM", {}, 4),
    "lstm_peephole": ("LSTM", {}, 4),
    "gru": ("GRU", {"linear_before_reset": 1}, 3),
    "gru_reset_before": ("GRU", {"linear_before_reset": 0}, 3),
}
DIRECTIONS = {"forward": "forward", "reverse": "backward", "bidirectional": "bidirectional"}


BACKENDS = ["numpy", *(["torch"] if "torch" in available_backends() else [])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", list(CASES))
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_backends_match_onnx_reference(backend: str, cell: str, direction: str) -> None:
    op, attributes, gates = CASES[cell]
    T, B, size, H = 5, 3, 4, 6
    dirs = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(len(cell) + dirs)
    X = rng.standard_normal((T, B, size))
    W = rng.uniform(-0.5, 0.5, (dirs, gates * H, size))
    R = rng.uniform(-0.5, 0.5, (dirs, gates * H, H))
    Bias = rng.uniform(-0.5, 0.5, (dirs, 2 * gates * H))
    feeds = {"X": X, "W": W, "R": R, "B": Bias}
    names = ["X", "W", "R", "B"]
    P = None
    if cell == "lstm_peephole":
        P = rng.uniform(-0.5, 0.5, (dirs, 3 * H))
        names += ["", "", "", "P"]  # sequence_lens, initial_h, initial_c are omitted
        feeds["P"] = P
    node = helper.make_node(
        op, names, ["Y", "Y_h"], hidden_size=H, direction=direction, **attributes
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None) for n in feeds],
        [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None) for n in ("Y", "Y_h")],
    )
    Y, Y_h = ReferenceEvaluator(helper.make_model(graph)).run(None, feeds)

    spec = rnnc.parse_spec(
        spec_text(
            f"""
            rnnc: 1
            name: onnx_{cell}
            inputs:
              x: {{size: {size}}}
            layers:
              r: {{cell: {cell}, hidden: {H}, input: x, direction: {DIRECTIONS[direction]}}}
            outputs:
              y: {{from: r}}
            """
        )
    )
    model = rnnc.compile(spec, backend=backend, dtype="float64")
    model.load_params(from_onnx(W, R, Bias, cell, "r", direction, P=P))
    y = model.run({"x": X.transpose(1, 0, 2)})["y"]  # (B, T, dirs * H)
    expected = Y.transpose(2, 0, 1, 3).reshape(B, T, dirs * H)  # (T, dirs, B, H) -> (B, T, dirs H)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    # ONNX's Y_h is each direction's final state: forward at T-1, reverse at 0.
    final = [y[:, -1, :H]] + ([y[:, 0, H:]] if dirs == 2 else [])
    if direction == "reverse":
        final = [y[:, 0, :H]]
    np.testing.assert_allclose(np.stack(final), Y_h, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", list(CASES))
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_onnx_round_trip_is_exact(cell: str, direction: str) -> None:
    spec = rnnc.parse_spec(
        spec_text(
            f"""
            rnnc: 1
            name: trip
            inputs:
              x: {{size: 3}}
            layers:
              r: {{cell: {cell}, hidden: 4, input: x, direction: {DIRECTIONS[direction]}}}
            outputs:
              y: {{from: r}}
            """
        )
    )
    params = rnnc.init_params(spec, seed=1)
    exported = to_onnx(params, cell, "r", direction)
    gates = CASES[cell][2]
    dirs = 2 if direction == "bidirectional" else 1
    assert exported["W"].shape == (dirs, gates * 4, 3) and exported["B"].shape == (
        dirs,
        2 * gates * 4,
    )
    back = from_onnx(
        exported["W"], exported["R"], exported["B"], cell, "r", direction, P=exported.get("P")
    )
    assert back.keys() == params.keys()
    for name, value in params.items():
        np.testing.assert_array_equal(back[name], value)
