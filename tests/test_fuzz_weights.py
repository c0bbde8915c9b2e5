"""Fuzzing the weights loader (hypothesis).

Property: a weights file of a small gallery spec (``init_params(spec, seed=0)`` in
``.npz`` or ``.safetensors``), changed by a few mutations, either loads and checks --
``check_params(load_weights(path, expected=...), shapes, dtype=...)`` -- into
parameters all finite and of the model's shapes and dtype, or raises a
``rnnc.WeightsError`` that names the file on every line: never another exception, and
no example past Hypothesis' deadline of a second (no huge read, no long hang).

Mutations come in three stages, each drawn from a table below:

1. of the parameters before they are written: missing, extra and renamed names; other
   dtypes (integers, bools, complex, pickled objects); other shapes; NaN, inf, and
   float64 values too large for float32 or float16;
2. of the format: for ``.npz``, .npy headers that declare other shapes, dtypes or
   versions, members renamed, repeated or added, and zip fields (sizes, CRC,
   compression method, flags) that lie; for ``.safetensors``, JSON edits of the
   header (dtypes, shapes with floats, negatives, bools, huge numbers and too many
   dimensions, data offsets, fields, entries, metadata, repeated names, deep nesting,
   NaN, long integers) and a header length that lies;
3. of the bytes: truncations, flipped, inserted and deleted bytes, more often near
   either end of the file (zip directories, safetensors headers) than in the middle.

Bounded like tests/test_properties.py: ``RNNC_HYPOTHESIS_EXAMPLES`` (default 40) times
2 examples per format, the same ones every run unless the variable is set.
``pytest --hypothesis-show-statistics`` shows how many examples loaded and why the
others were refused.
"""

from __future__ import annotations

import io
import json
import re
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import rnnc
from rnnc.runtime.params import param_shapes
from rnnc.runtime.weights import MAX_SAFETENSORS_HEADER, safetensors_bytes
from tests.conftest import ROOT
from tests.test_properties import BASE_EXAMPLES, _settings

pytestmark = pytest.mark.slow

FUZZ_SETTINGS = settings(_settings(BASE_EXAMPLES * 2), deadline=timedelta(seconds=1))
# How many edits each stage makes: none as often as one, so that some files survive.
EDITS = st.sampled_from([0, 0, 1, 1, 2])

Draw = Callable[[st.SearchStrategy[Any]], Any]
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Model:
    name: str
    shapes: dict[str, tuple[int, ...]]
    params: Arrays


def model_of(name: str) -> Model:
    analysis = rnnc.analyze(rnnc.load_spec(ROOT / "specs" / f"{name}.yaml"))
    return Model(name, param_shapes(analysis), rnnc.init_params(analysis, seed=0))


MODELS = [model_of("elman_rnn"), model_of("peephole_lstm")]


# --- 1. the parameters -----------------------------------------------------------------

SPECIAL_VALUES = [np.nan, np.inf, -np.inf, 1e300, -1e39, 3.5e38, 7e4, 5e-324]
RESHAPES: list[Callable[[np.ndarray], np.ndarray]] = [
    lambda v: v.T,
    lambda v: v.reshape(-1),
    lambda v: v[None],
    lambda v: np.atleast_1d(v)[..., :-1],
    lambda v: np.array(v.flat[0]) if v.size else np.zeros(()),
    lambda v: np.zeros((0, *v.shape[1:])),
    np.asfortranarray,
]


def drop(params: Arrays, name: str, draw: Draw) -> None:
    del params[name]


def add(params: Arrays, name: str, draw: Draw) -> None:
    """Another parameter, or this one again with another shape (suffix "")."""
    suffix = draw(st.sampled_from(["x", "_2", ".W", ""]))
    params[name + suffix] = np.atleast_1d(params[name])[..., :1]


def rename(params: Arrays, name: str, draw: Draw) -> None:
    params[name.upper() if draw(st.booleans()) else name + "x"] = params.pop(name)


def special_value(params: Arrays, name: str, draw: Draw) -> None:
    value = np.array(params[name])
    if value.dtype.kind == "f" and value.size:
        with np.errstate(over="ignore"):  # 1e300 in float16 is inf: also a fine test
            value.flat[draw(st.integers(0, value.size - 1))] = draw(st.sampled_from(SPECIAL_VALUES))
    params[name] = value


def reshape(params: Arrays, name: str, draw: Draw) -> None:
    params[name] = draw(st.sampled_from(RESHAPES))(params[name])


def retype_to(dtypes: list[str]) -> Callable[[Arrays, str, Draw], None]:
    def retype(params: Arrays, name: str, draw: Draw) -> None:
        if params[name].dtype.kind not in "biufc":  # strings and objects stay
            return
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
            params[name] = params[name].astype(draw(st.sampled_from(dtypes)))

    return retype


def pickle(params: Arrays, name: str, draw: Draw) -> None:
    objects = [{"a": 1}] if draw(st.booleans()) else list(params[name].reshape(-1))
    params[name] = np.array(objects, dtype=object)


SAFETENSORS_DTYPES = ["float16", "float32", ">f8", "int32", "int64"]
NPZ_DTYPES = [*SAFETENSORS_DTYPES, "uint8", "bool", "complex128", "U3"]
PARAM_EDITS = [drop, add, rename, special_value, special_value, reshape]


def edited_params(draw: Draw, model: Model, dtypes: list[str], *more: Any) -> Arrays:
    params = dict(model.params)
    edits = [*PARAM_EDITS, retype_to(dtypes), *more]
    for _ in range(draw(EDITS)):
        if params:
            edit = draw(st.sampled_from(edits))
            edit(params, draw(st.sampled_from(sorted(params))), draw)
    return params


# --- 2a. the .npz format ---------------------------------------------------------------

NPY_SHAPES = st.one_of(
    st.lists(st.integers(0, 50), max_size=3).map(tuple),
    st.sampled_from([(100_000, 100_000), (2**62,), (2**40, 2**40, 0), (-1,), (-4, -8), (1,) * 70]),
    st.sampled_from([(2.5,), (True, 3), ("a",), [3], None, 7]),
)
NPY_DESCRS = st.sampled_from(
    [
        *("<f4", "<f8", ">f8", "<f2", "<i4", "|b1", "<c16", "|O", "V8", "<U2", "|S8", "<f16"),
        *([("a", "<f8")], ("<f8", (2,)), ("<f8", (100_000, 100_000)), 3, "nonsense"),
    ]
)


@dataclass
class Member:
    name: str
    payload: bytes
    value: np.ndarray  # what the payload held before any edit


def npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=True)
    return buffer.getvalue()


def npy_header(header: dict[str, Any], version: tuple[int, int]) -> bytes:
    """A .npy preamble declaring ``header`` whatever it holds (numpy's writer would
    refuse some); its length padded to 64 as numpy does."""
    text = repr(header).encode("latin1")
    length_format = "<H" if version == (1, 0) else "<I"
    text += b" " * (-(6 + 2 + struct.calcsize(length_format) + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(length_format, len(text)) + text


def redeclare(members: list[Member], at: int, draw: Draw) -> None:
    """The member's .npy header declares another shape, dtype or order; data kept."""
    value = members[at].value
    header = np.lib.format.header_data_from_array_1_0(value)
    key = draw(st.sampled_from(["shape", "descr", "fortran_order"]))
    header[key] = draw({"shape": NPY_SHAPES, "descr": NPY_DESCRS}.get(key, st.booleans()))
    data = value.tobytes() if value.dtype != object else b"\x80\x04N."
    version = draw(st.sampled_from([(1, 0), (2, 0)]))
    members[at].payload = npy_header(header, version) + data


def rewrite_npy_preamble(members: list[Member], at: int, draw: Draw) -> None:
    """Another version, header length or header text after the magic string."""
    payload = members[at].payload
    kind = draw(st.sampled_from(["version", "length", "text"]))
    if kind == "version":
        version = draw(st.sampled_from([b"\x02\x00", b"\x03\x00", b"\x09\x09", b"\x00\x00"]))
        members[at].payload = payload[:6] + version + payload[8:]
    elif kind == "length":
        length = draw(st.sampled_from([0, 1, 10_000, 10_001, 65535]))
        members[at].payload = payload[:8] + struct.pack("<H", length) + payload[10:]
    else:
        text = draw(
            st.binary(max_size=40) | st.sampled_from([b"{", b"[" * 3000, b"not not " * 500])
        )
        members[at].payload = payload[:8] + struct.pack("<H", len(text)) + text


def rename_member(members: list[Member], at: int, draw: Draw) -> None:
    members[at].name = draw(st.sampled_from(["x.npz", "x/", "x", ".npy", "x.npy.npy"]))


def repeat_member(members: list[Member], at: int, draw: Draw) -> None:
    members.append(draw(st.sampled_from(members)))  # zipfile warns, writes both


def extra_member(members: list[Member], at: int, draw: Draw) -> None:
    name = draw(st.sampled_from(["README.txt", "x.npy"]))
    members.append(Member(name, draw(st.binary(max_size=64)), np.zeros(0)))


MEMBER_EDITS = [redeclare, redeclare, rewrite_npy_preamble, rename_member, repeat_member]
MEMBER_EDITS += [extra_member]

# Zip header fields: (offset in a local header, offset in a central one, format).
ZIP_FIELDS = {
    "flags": (6, 8, "<H"),
    "method": (8, 10, "<H"),
    "crc": (14, 16, "<I"),
    "compressed size": (18, 20, "<I"),
    "size": (22, 24, "<I"),
}
ZIP_VALUES = {
    "flags": st.sampled_from([0, 1, 8, 0x40, 0x800, 0xFFFF]),
    "method": st.sampled_from([0, 1, 8, 9, 12, 14, 93, 99]),
    "crc": st.integers(0, 2**32 - 1),
    "compressed size": st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 0xFFFFFFFF]),
    "size": st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 2**31, 0xFFFFFFFF]),
}


def patch_zip_field(raw: bytes, draw: Draw) -> bytes:
    """One field of one member, in its local header, its central one, or both."""
    name = draw(st.sampled_from(sorted(ZIP_FIELDS)))
    local, central, fmt = ZIP_FIELDS[name]
    value = struct.pack(fmt, draw(ZIP_VALUES[name]))
    out = bytearray(raw)
    for signature, offset in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        starts = [m.start() for m in re.finditer(re.escape(signature), raw)]
        if starts and draw(st.booleans()):
            at = draw(st.sampled_from(starts)) + offset
            out[at : at + len(value)] = value
    return bytes(out)


def npz_file(draw: Draw, model: Model) -> bytes:
    params = edited_params(draw, model, NPZ_DTYPES, pickle)
    members = [Member(f"{name}.npy", npy(value), value) for name, value in params.items()]
    for _ in range(draw(EDITS)):
        if members:
            at = draw(st.integers(0, len(members) - 1))
            draw(st.sampled_from(MEMBER_EDITS))(members, at, draw)
    buffer = io.BytesIO()
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        with zipfile.ZipFile(buffer, "w", compression) as archive:
            for member in members:  # dated, so that an example's bytes never change
                info = zipfile.ZipInfo(member.name, date_time=(2020, 1, 1, 0, 0, 0))
                archive.writestr(info, member.payload, compress_type=compression)
    raw = buffer.getvalue()
    for _ in range(draw(EDITS)):
        raw = patch_zip_field(raw, draw)
    return raw


# --- 2b. the .safetensors format -------------------------------------------------------

JSON_SHAPES = st.one_of(
    st.lists(st.integers(-3, 70), max_size=4),
    st.lists(st.integers(-(2**70), 2**70), max_size=3),
    st.lists(st.floats(), max_size=3),
    st.lists(st.booleans(), max_size=3),
    st.sampled_from([[1] * 40, [2**40] * 4, [2**40, 2**40, 0], [[2], 3], "3", None, 3, {}]),
)
JSON_DTYPES = st.sampled_from(
    ["F64", "F32", "F16", "I64", "I32", "BF16", "U8", "BOOL", "F8_E4M3", "f64", "", 3, None]
)
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4))
JSON_SCALARS = JSON_VALUES | st.floats()


@dataclass
class Safetensors:
    """A safetensors file being mutated: its header as a dict, its data, and
    replacements made in the header's JSON text (what a dict cannot hold)."""

    header: dict[str, Any]
    data: bytes
    replacements: dict[str, str] = field(default_factory=dict)
    wrap: int = 0  # levels of [...] around the whole header

    def marker(self, text: str) -> str:
        """A string to put in the header that becomes ``text`` in its JSON."""
        key = f"@@{len(self.replacements)}@@"
        self.replacements[json.dumps(key)] = text
        return key

    def encode(self) -> bytes:
        text = json.dumps(self.header, separators=(",", ":"))
        for key, replacement in self.replacements.items():
            text = text.replace(key, replacement)
        text = "[" * self.wrap + text + "]" * self.wrap
        return struct.pack("<Q", len(text)) + text.encode() + self.data  # JSON is ASCII


def tensor_names(file: Safetensors) -> list[str]:
    return sorted(k for k, v in file.header.items() if k != "__metadata__" and isinstance(v, dict))


def set_dtype(file: Safetensors, name: str, draw: Draw) -> None:
    file.header[name]["dtype"] = draw(JSON_DTYPES)


def set_shape(file: Safetensors, name: str, draw: Draw) -> None:
    shape = file.header[name].get("shape")
    if not (isinstance(shape, list) and all(type(n) is int for n in shape)):
        shape = [2, 3]
    almost = [n + 0.9 for n in shape]  # [n + 0.9, m] was once cut to [n, m]
    file.header[name]["shape"] = draw(JSON_SHAPES | st.just(almost))


def set_offsets(file: Safetensors, name: str, draw: Draw) -> None:
    offsets = file.header[name].get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2):
        offsets = [0, 8]
    start, end = (n if isinstance(n, int) else 0 for n in offsets)
    n = len(file.data)
    file.header[name]["data_offsets"] = draw(
        st.lists(st.integers(-10, n + 10), max_size=3)
        | st.sampled_from([[end, start], [start + 8, end + 8], [start, end + 2**64], [start]])
        | st.sampled_from([[float(start), float(end)], [start, None], "0-8", [-end, -start]])
    )


def set_field(file: Safetensors, name: str, draw: Draw) -> None:
    key = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
    if key in file.header[name] and draw(st.booleans()):
        del file.header[name][key]
    else:
        file.header[name][key] = draw(JSON_SCALARS)


def set_entry(file: Safetensors, name: str, draw: Draw) -> None:
    choice = draw(st.sampled_from(["drop", "rename", "copy", "scalar"]))
    if choice == "drop":
        del file.header[name]
    elif choice == "rename":
        file.header[name + "x"] = file.header.pop(name)
    elif choice == "copy":  # a second name over the same data
        file.header[name + "x"] = dict(file.header[name])
    else:
        file.header[name] = draw(JSON_SCALARS | st.lists(JSON_VALUES, max_size=3))


def set_metadata(file: Safetensors, name: str, draw: Draw) -> None:
    file.header["__metadata__"] = draw(
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3)
        | st.dictionaries(st.text(max_size=3), JSON_SCALARS, min_size=1, max_size=3)
        | JSON_SCALARS
    )


def repeat_name(file: Safetensors, name: str, draw: Draw) -> None:
    """name: {...}, name: {another's}: plain JSON keeps the second."""
    other = file.header[draw(st.sampled_from(tensor_names(file)))]
    text = f"{json.dumps(file.header[name])},{json.dumps(name)}:{json.dumps(other)}"
    file.header[name] = file.marker(text)


def nest(file: Safetensors, name: str, draw: Draw) -> None:
    depth = draw(st.sampled_from([2, 100, 999, 1001, 5000, 100_000]))
    if draw(st.booleans()):
        file.wrap = depth
    else:
        key = draw(st.sampled_from(["shape", "data_offsets", "dtype"]))
        file.header[name][key] = file.marker("[" * depth + "]" * depth)


def odd_number(file: Safetensors, name: str, draw: Draw) -> None:
    digits = draw(st.sampled_from([19, 20, 21, 4000, 5000]))
    text = draw(st.sampled_from(["1" + "0" * digits, "NaN", "-Infinity", "1e999", "-0", "1.0"]))
    file.header[name]["shape"] = [file.marker(text)]


HEADER_EDITS = [set_dtype, set_dtype, set_shape, set_shape, set_offsets, set_offsets]
HEADER_EDITS += [set_field, set_entry, set_metadata, repeat_name, nest, odd_number]


def set_header_length(raw: bytes, draw: Draw) -> bytes:
    (size,) = struct.unpack("<Q", raw[:8])
    length = draw(
        st.sampled_from([0, 1, size - 1, size + 1, len(raw) - 8, len(raw) - 7])
        | st.sampled_from([MAX_SAFETENSORS_HEADER + 1, 2**63, 2**64 - 1])
        | st.integers(0, 2**64 - 1)
    )
    return struct.pack("<Q", max(0, length)) + raw[8:]


def safetensors_file(draw: Draw, model: Model) -> bytes:
    params = edited_params(draw, model, SAFETENSORS_DTYPES)
    raw = safetensors_bytes(params)
    (size,) = struct.unpack("<Q", raw[:8])
    file = Safetensors(json.loads(raw[8 : 8 + size]), raw[8 + size :])
    for _ in range(draw(EDITS)):
        names = tensor_names(file)
        if names:
            draw(st.sampled_from(HEADER_EDITS))(file, draw(st.sampled_from(names)), draw)
    raw = file.encode()
    if draw(st.integers(0, 9)) == 0:
        raw = set_header_length(raw, draw)
    return raw


# --- 3. the bytes ----------------------------------------------------------------------


def positions(n: int) -> st.SearchStrategy[int]:
    """Anywhere in n bytes, and often within 256 bytes of either end."""
    last = max(0, n - 1)
    return (
        st.integers(0, last) | st.integers(0, min(last, 255)) | st.integers(max(0, n - 256), last)
    )


def damaged(draw: Draw, raw: bytes) -> bytes:
    for _ in range(draw(EDITS)):
        kind = draw(st.sampled_from(["truncate", "flip", "flip", "insert", "delete", "zero"]))
        at = draw(positions(len(raw)))
        if kind == "truncate":
            raw = raw[:at]
        elif kind == "flip" and raw:
            raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
        elif kind == "insert":
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
        elif kind == "delete":
            raw = raw[:at] + raw[at + draw(st.integers(1, 8)) :]
        else:
            n = draw(st.integers(1, 8))
            raw = raw[:at] + bytes(len(raw[at : at + n])) + raw[at + n :]
    return raw


# --- the property ----------------------------------------------------------------------


def kind_of(problem: str) -> str:
    """A problem without its names and numbers, to count refusals by kind."""
    problem = re.sub(r"^[^ ]*: ", "", problem)  # the parameter it concerns
    problem = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", problem)
    return re.sub(r"-?\d+(\.\d+)?(e[+-]?\d+)?", "N", problem)[:80]


def assert_fits_or_refused(path: Path, raw: bytes, model: Model, draw: Draw) -> None:
    dtype = np.dtype(draw(st.sampled_from(["float32", "float64"])))
    expected = model.shapes if draw(st.booleans()) else None
    path.write_bytes(raw)
    try:
        loaded = rnnc.load_weights(path, expected=expected)
        checked = rnnc.check_params(loaded, model.shapes, source=str(path), dtype=dtype)
    except rnnc.WeightsError as exc:
        lines = str(exc).splitlines()
        assert lines and all(line.startswith(f"{path}: ") for line in lines), str(exc)
        event(f"refused: {kind_of(exc.problems[0])}")
        return
    event("loaded")
    assert {name: value.shape for name, value in checked.items()} == model.shapes
    assert all(value.dtype == dtype for value in checked.values())
    assert all(np.all(np.isfinite(value)) for value in checked.values())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-weights")


@FUZZ_SETTINGS
@given(st.sampled_from(MODELS), st.data())
def test_a_mutated_npz_fits_or_is_refused(folder: Path, model: Model, data: st.DataObject) -> None:
    raw = damaged(data.draw, npz_file(data.draw, model))
    assert_fits_or_refused(folder / "w.npz", raw, model, data.draw)


@FUZZ_SETTINGS
@given(st.sampled_from(MODELS), st.data())
def test_a_mutated_safetensors_fits_or_is_refused(
    folder: Path, model: Model, data: st.DataObject
) -> None:
    raw = damaged(data.draw, safetensors_file(data.draw, model))
    assert_fits_or_refused(folder / "w.safetensors", raw, model, data.draw)
