"""Weights from and to PyTorch's ``torch.nn.RNN/LSTM/GRU`` and ONNX's RNN/LSTM/GRU.

Both keep, per layer and direction, the gates stacked by rows in two matrices, one
times the input (PyTorch ``weight_ih``, ONNX ``W``) and one times h (``weight_hh``,
``R``), and two biases (``bias_ih`` / ``bias_hh``, ONNX ``B`` = [Wb, Rb]). rnnc keeps
one matrix per gate over ``[x, h]`` and one bias. Only the gate order differs:
PyTorch LSTM i, f, g, o and GRU r, z, n; ONNX LSTM i, o, f, c and GRU z, r, h. For
rnnc's ``gru`` (linear_before_reset=1) the candidate stays split, as in both:
``W_in`` / ``b_in`` on the input side, ``W_hn`` / ``b_hn`` on the recurrent side.

Import adds the two biases where rnnc has one; export puts rnnc's bias on the input
side and zeros on the recurrent side, so rnnc -> PyTorch/ONNX -> rnnc is exact. No
torch import is needed: values may be tensors or arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from rnnc.errors import RnncError

# rnnc's gate matrices in each format's row order; None is gru's split candidate.
Order = list[str | None]
TORCH_ORDER: dict[str, Order] = {
    "rnn": ["W"],
    "rnn_relu": ["W"],
    "lstm": ["W_i", "W_f", "W_g", "W_o"],
    "gru": ["W_r", "W_z", None],
}
ONNX_ORDER: dict[str, Order] = {
    "rnn": ["W"],
    "rnn_relu": ["W"],
    "lstm": ["W_i", "W_o", "W_f", "W_g"],
    "lstm_peephole": ["W_i", "W_o", "W_f", "W_g"],
    "gru": ["W_z", "W_r", None],
    "gru_reset_before": ["W_z", "W_r", "W_n"],
}
ONNX_DIRECTIONS = {"forward": ("fwd",), "reverse": ("bwd",), "bidirectional": ("fwd", "bwd")}

Stacked = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # w_ih, w_hh, b_ih, b_hh


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _order(table: dict[str, Order], cell: str, what: str) -> Order:
    if cell not in table:
        raise RnncError(f"{what} has no layer for cell {cell!r}; it has {', '.join(table)}")
    return table[cell]


def _runs(layer: str, depth: int, directions: tuple[str, ...]) -> Iterator[tuple[int, str, str]]:
    """(depth, direction, canonical prefix) of every run of a layer, in canonical order."""
    for k in range(depth):
        for d in directions:
            yield k, d, f"{layer}.{d}.l{k}."


def _unstack(stacked: Stacked, order: Order, prefix: str) -> dict[str, np.ndarray]:
    """rnnc's gate parameters from row-stacked input and recurrent matrices and biases."""
    w_ih, w_hh, b_ih, b_hh = stacked
    H = w_hh.shape[1]
    out = {}
    for g, name in enumerate(order):
        rows = slice(g * H, (g + 1) * H)
        if name is None:  # gru's candidate: the two sides stay apart
            out[prefix + "W_in"], out[prefix + "b_in"] = w_ih[rows], b_ih[rows]
            out[prefix + "W_hn"], out[prefix + "b_hn"] = w_hh[rows], b_hh[rows]
        else:
            out[prefix + name] = np.concatenate([w_ih[rows], w_hh[rows]], axis=1)
            out[prefix + "b" + name[1:]] = b_ih[rows] + b_hh[rows]
    return out


def _stack(params: Mapping[str, Any], order: Order, prefix: str) -> Stacked:
    """The reverse of _unstack; rnnc's single bias goes to the input side."""
    p = {name[len(prefix) :]: _array(v) for name, v in params.items() if name.startswith(prefix)}
    w_ih, w_hh, b_ih, b_hh = [], [], [], []
    for name in order:
        if name is None:
            w_ih.append(p["W_in"])
            w_hh.append(p["W_hn"])
            b_ih.append(p["b_in"])
            b_hh.append(p["b_hn"])
            continue
        bias = p["b" + name[1:]]
        split = p[name].shape[1] - bias.shape[0]
        w_ih.append(p[name][:, :split])
        w_hh.append(p[name][:, split:])
        b_ih.append(bias)
        b_hh.append(np.zeros_like(bias))
    return np.concatenate(w_ih), np.concatenate(w_hh), np.concatenate(b_ih), np.concatenate(b_hh)


def _canonical(
    params: dict[str, np.ndarray], cell: str, prefixes: list[str]
) -> dict[str, np.ndarray]:
    """In the cell's canonical parameter order (that of rnnc.builtin_cells())."""
    from rnnc.front.cells import builtin_cells

    names = [p.name for p in builtin_cells()[cell].params]
    return {prefix + name: params[prefix + name] for prefix in prefixes for name in names}


# --- PyTorch ---------------------------------------------------------------------------


def _suffix(k: int, direction: str) -> str:
    return f"l{k}" + ("_reverse" if direction == "bwd" else "")


def _directions(bidirectional: bool) -> tuple[str, ...]:
    return ("fwd", "bwd") if bidirectional else ("fwd",)


def from_torch(
    state_dict: Mapping[str, Any],
    layer: str,
    cell: str,
    depth: int = 1,
    bidirectional: bool = False,
) -> dict[str, np.ndarray]:
    """Canonical rnnc parameters of one layer from a torch.nn.RNN/LSTM/GRU state dict."""
    order = _order(TORCH_ORDER, cell, "PyTorch")
    out: dict[str, np.ndarray] = {}
    prefixes = []
    for k, d, prefix in _runs(layer, depth, _directions(bidirectional)):
        s = _suffix(k, d)
        try:
            w_ih, w_hh = _array(state_dict[f"weight_ih_{s}"]), _array(state_dict[f"weight_hh_{s}"])
        except KeyError as exc:
            raise RnncError(f"the state dict has no {exc.args[0]!r}") from None
        b_ih = _array(state_dict.get(f"bias_ih_{s}", np.zeros(w_ih.shape[0])))
        b_hh = _array(state_dict.get(f"bias_hh_{s}", np.zeros(w_hh.shape[0])))
        out.update(_unstack((w_ih, w_hh, b_ih, b_hh), order, prefix))
        prefixes.append(prefix)
    return _canonical(out, cell, prefixes)


def to_torch(
    params: Mapping[str, Any],
    layer: str,
    cell: str,
    depth: int = 1,
    bidirectional: bool = False,
) -> dict[str, np.ndarray]:
    """A torch.nn.RNN/LSTM/GRU state dict (as arrays) from canonical rnnc parameters."""
    order = _order(TORCH_ORDER, cell, "PyTorch")
    out: dict[str, np.ndarray] = {}
    for k, d, prefix in _runs(layer, depth, _directions(bidirectional)):
        s = _suffix(k, d)
        stacked = _stack(params, order, prefix)
        for key, value in zip(
            ("weight_ih", "weight_hh", "bias_ih", "bias_hh"), stacked, strict=True
        ):
            out[f"{key}_{s}"] = value
    return out


# --- ONNX ------------------------------------------------------------------------------


def from_onnx(
    W: Any,
    R: Any,
    B: Any | None,
    cell: str,
    layer: str,
    direction: str = "forward",
    P: Any | None = None,
    k: int = 0,
) -> dict[str, np.ndarray]:
    """Canonical rnnc parameters (depth k) from an ONNX RNN/LSTM/GRU's W, R, B (and P).

    ``gru`` is ONNX's GRU with linear_before_reset=1, ``gru_reset_before`` with 0;
    ``lstm_peephole`` takes P = [p_i, p_o, p_f]. ``direction`` is ONNX's: forward,
    reverse or bidirectional (reverse is rnnc's backward).
    """
    order = _order(ONNX_ORDER, cell, "ONNX")
    W, R = _array(W), _array(R)
    H = R.shape[-1]
    gates = W.shape[1] // H
    B_ = _array(B) if B is not None else np.zeros((W.shape[0], 2 * gates * H))
    out: dict[str, np.ndarray] = {}
    prefixes = []
    for index, d in enumerate(ONNX_DIRECTIONS[direction]):
        prefix = f"{layer}.{d}.l{k}."
        bias = B_[index]
        out.update(
            _unstack((W[index], R[index], bias[: gates * H], bias[gates * H :]), order, prefix)
        )
        if cell == "lstm_peephole":
            p = _array(P)[index] if P is not None else np.zeros(3 * H)
            out[prefix + "p_i"], out[prefix + "p_o"], out[prefix + "p_f"] = np.split(p, 3)
        prefixes.append(prefix)
    return _canonical(out, cell, prefixes)


def to_onnx(
    params: Mapping[str, Any], cell: str, layer: str, direction: str = "forward", k: int = 0
) -> dict[str, np.ndarray]:
    """ONNX initialisers W, R, B (and P for ``lstm_peephole``) of one layer and depth;
    ``from_onnx(**to_onnx(p))`` gives back ``p`` exactly."""
    order = _order(ONNX_ORDER, cell, "ONNX")
    Ws, Rs, Bs, Ps = [], [], [], []
    for d in ONNX_DIRECTIONS[direction]:
        prefix = f"{layer}.{d}.l{k}."
        w_ih, w_hh, b_ih, b_hh = _stack(params, order, prefix)
        Ws.append(w_ih)
        Rs.append(w_hh)
        Bs.append(np.concatenate([b_ih, b_hh]))
        if cell == "lstm_peephole":
            Ps.append(np.concatenate([_array(params[prefix + n]) for n in ("p_i", "p_o", "p_f")]))
    out = {"W": np.stack(Ws), "R": np.stack(Rs), "B": np.stack(Bs)}
    if Ps:
        out["P"] = np.stack(Ps)
    return out
