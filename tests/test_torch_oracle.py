"""Both backends against torch.nn.RNN/LSTM/GRU with the same weights (an oracle no one
here wrote), including ragged batches through pack_padded_sequence. The torch backend
runs these layers through the same fused kernels, but with weights restacked from
rnnc's names, its own packing and its own merge of directions: all checked here."""

from __future__ import annotations

import numpy as np
import pytest

import rnnc
from rnnc.runtime.interop import from_torch, to_torch
from tests.helpers import spec_text, torch_grads

torch = pytest.importorskip("torch")  # the torch extra is installed by make test

SPEC = """
rnnc: 1
name: oracle
inputs:
  x: {size: 5}
layers:
  r: {cell: CELL, hidden: 6, input: x, depth: DEPTH, direction: DIRECTION}
outputs:
  y: {from: r}
  h: {from: r, state: h}
"""
TORCH = {"rnn": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}


def torch_module(cell: str, depth: int, bidirectional: bool):
    torch.manual_seed(0)
    options = {"nonlinearity": "relu"} if cell == "rnn_relu" else {}
    return getattr(torch.nn, TORCH[cell])(
        5, 6, num_layers=depth, bidirectional=bidirectional, batch_first=True, **options
    ).double()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("cell", list(TORCH))
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_backends_match_torch_nn(backend: str, cell: str, depth: int, bidirectional: bool) -> None:
    direction = "bidirectional" if bidirectional else "forward"
    spec = rnnc.parse_spec(
        spec_text(
            SPEC.replace("CELL", cell).replace("DEPTH", str(depth)).replace("DIRECTION", direction)
        )
    )
    model = rnnc.compile(spec, backend=backend, dtype="float64")
    module = torch_module(cell, depth, bidirectional)
    model.load_params(from_torch(module.state_dict(), "r", cell, depth, bidirectional))

    rng = np.random.default_rng(depth)
    B, T = 4, 7
    x = rng.standard_normal((B, T, 5))
    lengths = np.array([7, 3, 5, 1])
    cot_y = rng.standard_normal((B, T, 6 * (2 if bidirectional else 1)))
    cot_h = rng.standard_normal((B, 6 * (2 if bidirectional else 1)))

    # torch: packed ragged batch; outputs past each length are zero after unpacking.
    xt = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        xt, torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    out, state = module(packed)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    h_n = state[0] if isinstance(state, tuple) else state
    dirs = 2 if bidirectional else 1
    top = h_n.view(depth, dirs, B, 6)[-1]
    h = torch.cat([top[i] for i in range(dirs)], dim=-1)
    loss = (y * torch.tensor(cot_y)).sum() + (h * torch.tensor(cot_h)).sum()
    loss.backward()

    ours = model.run({"x": x}, lengths=lengths)
    np.testing.assert_allclose(ours["y"], y.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours["h"], h.detach().numpy(), rtol=1e-10, atol=1e-12)

    grads = model.vjp({"x": x}, {"y": cot_y, "h": cot_h}, lengths=lengths)
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    expected = torch_grads(module, "r", cell, depth, bidirectional)
    for name, value in expected.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cell", list(TORCH))
def test_round_trips_are_exact(cell: str) -> None:
    module = torch_module(cell, 2, True)
    params = from_torch(module.state_dict(), "enc", cell, 2, True)
    back = to_torch(params, "enc", cell, 2, True)
    assert from_torch(back, "enc", cell, 2, True).keys() == params.keys()
    for name, value in from_torch(back, "enc", cell, 2, True).items():
        np.testing.assert_array_equal(value, params[name])
    assert set(back) == set(module.state_dict())
