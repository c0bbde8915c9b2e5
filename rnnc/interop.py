"""Weights from and to PyTorch's ``torch.nn.RNN/LSTM/GRU`` state dicts.

PyTorch keeps, per layer k and direction, ``weight_ih_l{k}[_reverse]`` (gates stacked
by rows, times the input), ``weight_hh_l{k}`` (times h) and two biases. rnnc keeps one
matrix per gate over ``[x, h]`` and one bias. Gate order: LSTM i, f, g, o in both;
GRU r, z, n in PyTorch, where rnnc's ``gru`` splits the candidate into ``W_in`` /
``b_in`` (input side) and ``W_hn`` / ``b_hn`` (recurrent side, inside ``r * (...)``).

Import adds PyTorch's two biases where rnnc has one; export puts rnnc's bias in
``bias_ih`` and zeros in ``bias_hh``, so rnnc -> PyTorch -> rnnc is exact. No torch
import is needed: values may be tensors or arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rnnc.errors import RnncError

# rnnc gate parameters per PyTorch row block, for the matrices over [x, h] and biases.
_GATES: dict[str, list[str | None]] = {
    "rnn": ["W"],
    "rnn_relu": ["W"],
    "lstm": ["W_i", "W_f", "W_g", "W_o"],
    "gru": ["W_r", "W_z", None],  # the candidate is mapped separately
}


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _suffix(k: int, direction: str) -> str:
    return f"l{k}" + ("_reverse" if direction == "bwd" else "")


def from_torch(
    state_dict: Mapping[str, Any],
    layer: str,
    cell: str,
    depth: int = 1,
    bidirectional: bool = False,
) -> dict[str, np.ndarray]:
    """Canonical rnnc parameters of one layer from a torch.nn.RNN/LSTM/GRU state dict."""
    if cell not in _GATES:
        raise RnncError(f"PyTorch has no layer for cell {cell!r}; it has {', '.join(_GATES)}")
    out: dict[str, np.ndarray] = {}
    for k in range(depth):
        for d in ("fwd", "bwd") if bidirectional else ("fwd",):
            s = _suffix(k, d)
            try:
                w_ih, w_hh = (
                    _array(state_dict[f"weight_ih_{s}"]),
                    _array(state_dict[f"weight_hh_{s}"]),
                )
                b_ih = _array(state_dict.get(f"bias_ih_{s}", np.zeros(w_ih.shape[0])))
                b_hh = _array(state_dict.get(f"bias_hh_{s}", np.zeros(w_hh.shape[0])))
            except KeyError as exc:
                raise RnncError(f"the state dict has no {exc.args[0]!r}") from None
            H = w_hh.shape[1]
            prefix = f"{layer}.{d}.l{k}."
            for g, name in enumerate(_GATES[cell]):
                rows = slice(g * H, (g + 1) * H)
                if name is None:
                    continue
                bias = "b" + name[1:]
                out[prefix + name] = np.concatenate([w_ih[rows], w_hh[rows]], axis=1)
                out[prefix + bias] = b_ih[rows] + b_hh[rows]
            if cell == "gru":
                rows = slice(2 * H, 3 * H)
                out[prefix + "W_in"], out[prefix + "b_in"] = w_ih[rows], b_ih[rows]
                out[prefix + "W_hn"], out[prefix + "b_hn"] = w_hh[rows], b_hh[rows]
    return _ordered(out, cell, layer, depth, bidirectional)


def to_torch(
    params: Mapping[str, Any],
    layer: str,
    cell: str,
    depth: int = 1,
    bidirectional: bool = False,
) -> dict[str, np.ndarray]:
    """A torch.nn.RNN/LSTM/GRU state dict (as arrays) from canonical rnnc parameters."""
    if cell not in _GATES:
        raise RnncError(f"PyTorch has no layer for cell {cell!r}; it has {', '.join(_GATES)}")
    out: dict[str, np.ndarray] = {}
    for k in range(depth):
        for d in ("fwd", "bwd") if bidirectional else ("fwd",):
            s = _suffix(k, d)
            prefix = f"{layer}.{d}.l{k}."
            p = {
                name[len(prefix) :]: _array(v)
                for name, v in params.items()
                if name.startswith(prefix)
            }
            H = p["W_hn" if cell == "gru" else str(_GATES[cell][0])].shape[0]
            w_ih, w_hh, b_ih, b_hh = [], [], [], []
            for name in _GATES[cell]:
                if name is None:
                    w_ih.append(p["W_in"])
                    w_hh.append(p["W_hn"])
                    b_ih.append(p["b_in"])
                    b_hh.append(p["b_hn"])
                    continue
                matrix = p[name]
                X = matrix.shape[1] - H
                w_ih.append(matrix[:, :X])
                w_hh.append(matrix[:, X:])
                b_ih.append(p["b" + name[1:]])
                b_hh.append(np.zeros(H))
            out[f"weight_ih_{s}"] = np.concatenate(w_ih)
            out[f"weight_hh_{s}"] = np.concatenate(w_hh)
            out[f"bias_ih_{s}"] = np.concatenate(b_ih)
            out[f"bias_hh_{s}"] = np.concatenate(b_hh)
    return out


def _ordered(
    params: dict[str, np.ndarray], cell: str, layer: str, depth: int, bidirectional: bool
) -> dict[str, np.ndarray]:
    """In the cell's canonical parameter order (that of rnnc.builtin_cells())."""
    from rnnc.cells import builtin_cells

    order = [p.name for p in builtin_cells()[cell].params]
    out = {}
    for k in range(depth):
        for d in ("fwd", "bwd") if bidirectional else ("fwd",):
            for name in order:
                key = f"{layer}.{d}.l{k}.{name}"
                out[key] = params[key]
    return out


# --- ONNX RNN / LSTM / GRU initialisers ------------------------------------------------

# ONNX stacks gates by rows in its own order: LSTM i, o, f, c; GRU z, r, h.
_ONNX_ORDER: dict[str, list[str | None]] = {
    "rnn": ["W"],
    "rnn_relu": ["W"],
    "lstm": ["W_i", "W_o", "W_f", "W_g"],
    "lstm_peephole": ["W_i", "W_o", "W_f", "W_g"],
    "gru": ["W_z", "W_r", None],
    "gru_reset_before": ["W_z", "W_r", "W_n"],
}
ONNX_DIRECTIONS = {"forward": ("fwd",), "reverse": ("bwd",), "bidirectional": ("fwd", "bwd")}


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
    if cell not in _ONNX_ORDER:
        raise RnncError(f"ONNX has no operator for cell {cell!r}; it has {', '.join(_ONNX_ORDER)}")
    W, R = _array(W), _array(R)
    H = R.shape[-1]
    n = W.shape[1] // H
    B_ = _array(B) if B is not None else np.zeros((W.shape[0], 2 * n * H))
    out: dict[str, np.ndarray] = {}
    for index, d in enumerate(ONNX_DIRECTIONS[direction]):
        prefix = f"{layer}.{d}.l{k}."
        w, r, wb, rb = W[index], R[index], B_[index][: n * H], B_[index][n * H :]
        for g, name in enumerate(_ONNX_ORDER[cell]):
            rows = slice(g * H, (g + 1) * H)
            if name is None:  # gru's candidate, linear_before_reset=1
                out[prefix + "W_in"], out[prefix + "b_in"] = w[rows], wb[rows]
                out[prefix + "W_hn"], out[prefix + "b_hn"] = r[rows], rb[rows]
                continue
            out[prefix + name] = np.concatenate([w[rows], r[rows]], axis=1)
            out[prefix + "b" + name[1:]] = wb[rows] + rb[rows]
        if cell == "lstm_peephole":
            p = _array(P)[index] if P is not None else np.zeros(3 * H)
            out[prefix + "p_i"], out[prefix + "p_o"], out[prefix + "p_f"] = np.split(p, 3)
    from rnnc.cells import builtin_cells

    order = [p.name for p in builtin_cells()[cell].params]
    return {
        f"{layer}.{d}.l{k}.{name}": out[f"{layer}.{d}.l{k}.{name}"]
        for d in ONNX_DIRECTIONS[direction]
        for name in order
    }


def to_onnx(
    params: Mapping[str, Any], cell: str, layer: str, direction: str = "forward", k: int = 0
) -> dict[str, np.ndarray]:
    """ONNX initialisers W, R, B (and P for ``lstm_peephole``) of one layer and depth.

    rnnc's single bias goes to ONNX's input-side bias (Wb) with zeros in Rb, except
    for ``gru``'s candidate, whose two biases ONNX keeps apart too; so
    ``from_onnx(**to_onnx(p))`` gives back ``p`` exactly.
    """
    if cell not in _ONNX_ORDER:
        raise RnncError(f"ONNX has no operator for cell {cell!r}; it has {', '.join(_ONNX_ORDER)}")
    Ws, Rs, Bs, Ps = [], [], [], []
    for d in ONNX_DIRECTIONS[direction]:
        prefix = f"{layer}.{d}.l{k}."
        p = {
            name[len(prefix) :]: _array(v) for name, v in params.items() if name.startswith(prefix)
        }
        H = p["b" + str(_ONNX_ORDER[cell][0])[1:]].shape[0]
        w, r, wb, rb = [], [], [], []
        for name in _ONNX_ORDER[cell]:
            if name is None:
                w.append(p["W_in"])
                r.append(p["W_hn"])
                wb.append(p["b_in"])
                rb.append(p["b_hn"])
                continue
            matrix = p[name]
            X = matrix.shape[1] - H
            w.append(matrix[:, :X])
            r.append(matrix[:, X:])
            wb.append(p["b" + name[1:]])
            rb.append(np.zeros(H))
        Ws.append(np.concatenate(w))
        Rs.append(np.concatenate(r))
        Bs.append(np.concatenate(wb + rb))
        if cell == "lstm_peephole":
            Ps.append(np.concatenate([p["p_i"], p["p_o"], p["p_f"]]))
    out = {"W": np.stack(Ws), "R": np.stack(Rs), "B": np.stack(Bs)}
    if Ps:
        out["P"] = np.stack(Ps)
    return out
