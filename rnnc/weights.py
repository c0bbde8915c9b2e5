"""Parameters: initial values, weights files, and checks of a parameter set.

``init_params`` draws every parameter of a spec from one seeded generator in
canonical order, so every backend starts from the same numbers. Weights files are
``.npz`` (NumPy, never pickles) or ``.safetensors`` (read and written here: the format
is an 8-byte little-endian header length, a JSON header, then raw little-endian data).
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from rnnc.checks import Analysis, analyze
from rnnc.errors import RnncError, SpecError, did_you_mean
from rnnc.files import write_atomic
from rnnc.params import param_shapes
from rnnc.spec import RecurrentLayer, Spec

Params = dict[str, np.ndarray]
MAX_SAFETENSORS_HEADER = 100 << 20

_SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
}
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}


class WeightsError(RnncError):
    """A weights file or parameter set does not fit; carries every problem found."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__("\n".join(head + p for p in problems))


def _analysis(spec: Spec | Analysis) -> Analysis:
    analysis = spec if isinstance(spec, Analysis) else analyze(spec)
    if not analysis.ok:
        raise SpecError(analysis.errors)
    return analysis


def init_rules(spec: Spec | Analysis) -> dict[str, tuple[tuple[int, ...], tuple[str, float]]]:
    """How :func:`init_params` draws each parameter: (shape, (kind, value)) with kind
    ``normal`` (N(0, 1)), ``uniform`` (U(-value, value)) or ``constant``."""
    analysis = _analysis(spec)
    layers = analysis.spec.layers
    shapes = param_shapes(analysis)
    rules: dict[str, tuple[tuple[int, ...], tuple[str, float]]] = {}
    for name, shape in shapes.items():
        owner, _, rest = name.partition(".")
        last = name.rsplit(".", 1)[-1]
        layer = layers.get(owner)
        if last == "embedding":
            rule = ("normal", 1.0)
        elif isinstance(layer, RecurrentLayer) and rest.split(".")[0] in ("fwd", "bwd"):
            rule = ("uniform", 1.0 / math.sqrt(layer.hidden))
            if last in layer.param_init:
                rule = ("constant", float(layer.param_init[last]))
        else:  # dense layers, bridges, attention: bounded by the fan-in of their matrix
            matrix = shapes[name] if len(shape) == 2 else shapes[_matrix_of(name)]
            rule = ("uniform", 1.0 / math.sqrt(matrix[1]))
        rules[name] = (shape, rule)
    return rules


def init_params(spec: Spec | Analysis, seed: int = 0) -> Params:
    """Initial float64 parameters, the same on every backend for the same seed.

    Like PyTorch's defaults: a recurrent cell's parameters are drawn from
    U(-1/sqrt(H), 1/sqrt(H)) with H its hidden size; dense layers, bridges and
    attention matrices from U(-1/sqrt(fan_in), 1/sqrt(fan_in)); embeddings from
    N(0, 1). ``param_init`` in a spec sets a cell parameter to a constant at every
    depth and direction (``{b_f: 1.0}``: the forget-gate bias of Jozefowicz et al.).
    Draws happen in canonical order from ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    params: Params = {}
    for name, (shape, (kind, value)) in init_rules(spec).items():
        if kind == "normal":
            params[name] = rng.standard_normal(shape)
        elif kind == "uniform":
            params[name] = rng.uniform(-value, value, shape)
        else:  # drawn anyway (and dropped), so the draws after it do not move
            rng.uniform(-1.0, 1.0, shape)
            params[name] = np.full(shape, value)
    return params


def _matrix_of(vector: str) -> str:
    """The matrix whose fan-in bounds a bias or vector parameter of the same owner."""
    prefix, last = vector.rsplit(".", 1)
    return f"{prefix}.{_MATRIX_OF_VECTOR[last]}"


_MATRIX_OF_VECTOR = {"b": "W", "b_c": "W_c", "v": "W_k"}


def check_params(
    params: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    source: str | None = None,
) -> Params:
    """Every parameter present, none extra, right shapes, real and finite; else raise.

    Returns the parameters as float arrays; nothing is returned half-checked.
    """
    problems: list[str] = []
    for name in shapes:
        if name not in params:
            problems.append(f"{name}: missing (expected shape {tuple(shapes[name])})")
    for name in params:
        if name not in shapes:
            problems.append(f"{name}: unexpected parameter{did_you_mean(name, shapes)}")
    checked: Params = {}
    for name, expected in shapes.items():
        if name not in params:
            continue
        value = np.asarray(params[name])
        if value.dtype.kind not in "fiu" or value.dtype.kind == "b":
            problems.append(f"{name}: expected real numbers, found dtype {value.dtype}")
            continue
        if tuple(value.shape) != tuple(expected):
            problems.append(f"{name}: expected {tuple(expected)}, found {tuple(value.shape)}")
            continue
        if not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            problems.append(f"{name}: {bad} values are not finite (nan or inf)")
            continue
        checked[name] = value
    if problems:
        raise WeightsError(problems, source)
    return checked


# --- files -----------------------------------------------------------------------------


def save_weights(path: str | os.PathLike[str], params: Mapping[str, np.ndarray]) -> None:
    """Write ``.npz`` or ``.safetensors`` (by suffix), atomically."""
    name = os.fspath(path)
    if name.endswith(".npz"):
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in params.items()}
        np.savez(buffer, **arrays)
        write_atomic(name, buffer.getvalue())
    elif name.endswith(".safetensors"):
        write_atomic(name, safetensors_bytes(params))
    else:
        raise WeightsError(["unknown weights format (expected .npz or .safetensors)"], name)


def load_weights(path: str | os.PathLike[str]) -> Params:
    """Read ``.npz`` (no pickles) or ``.safetensors`` weights by suffix."""
    name = os.fspath(path)
    try:
        if name.endswith(".npz"):
            with np.load(name, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        if name.endswith(".safetensors"):
            with open(name, "rb") as handle:
                return read_safetensors(handle.read(), name)
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError([f"cannot read weights: {exc}"], name) from None
    raise WeightsError(["unknown weights format (expected .npz or .safetensors)"], name)


def safetensors_bytes(params: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors encoding of named arrays (little-endian, C order)."""
    header: dict[str, Any] = {}
    chunks = []
    offset = 0
    for key in sorted(params):
        array = np.asarray(params[key], order="C")  # ascontiguousarray would make 0-d 1-d
        kind = _SAFETENSORS_NAMES.get(array.dtype.newbyteorder("<"))
        if kind is None:
            raise WeightsError([f"{key}: cannot store dtype {array.dtype} in safetensors"])
        data = array.astype(_SAFETENSORS_DTYPES[kind], copy=False).tobytes()
        header[key] = {
            "dtype": kind,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # align the data to 8 bytes
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def read_safetensors(raw: bytes, source: str = "<bytes>") -> Params:
    """Named arrays from safetensors bytes, checking the header against the data."""
    if len(raw) < 8:
        raise WeightsError(["not a safetensors file (too short)"], source)
    (size,) = struct.unpack("<Q", raw[:8])
    if size > min(MAX_SAFETENSORS_HEADER, len(raw) - 8):
        raise WeightsError(["not a safetensors file (bad header length)"], source)
    try:
        header = json.loads(raw[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsError(["not a safetensors file (header is not JSON)"], source) from None
    if not isinstance(header, dict):
        raise WeightsError(["not a safetensors file (header is not a mapping)"], source)
    data = memoryview(raw)[8 + size :]
    out: Params = {}
    problems = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{key}: unsupported or malformed entry {info!r}")
            continue
        if not 0 <= start <= end <= len(data) or end - start != dtype.itemsize * math.prod(shape):
            problems.append(f"{key}: data offsets do not match its shape and dtype")
            continue
        out[key] = np.frombuffer(data[start:end], dtype=dtype).reshape(shape).copy()
    if problems:
        raise WeightsError(problems, source)
    return out
