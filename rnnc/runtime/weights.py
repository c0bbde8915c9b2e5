"""Parameters: initial values, weights files, and checks of a parameter set.

``init_params`` draws every parameter of a spec from one seeded generator in
canonical order, so every backend starts from the same numbers. Weights files are
``.npz`` (NumPy, never pickles) or ``.safetensors`` (read and written here: the format
is an 8-byte little-endian header length, a JSON header, then raw little-endian data).

NOTE: what loading promises. ``load_weights(path, expected=shapes)`` followed by
``check_params(loaded, shapes, dtype=model_dtype)`` gives parameters that are all
finite and of the model's shapes and dtype, or raises :class:`WeightsError` naming the
file, what is wrong and what fits; never another exception. Everything a file declares
(names, dtypes, shapes, sizes) is checked against the file itself and against
:func:`weights_limit` before any array data is read or inflated, so a lying header
cannot make rnnc allocate or read more than the file's declared arrays.

NOTE: weights files hold floats (float16, float32, float64), never integers. Float32
bytes relabelled as int32 would otherwise load as large but finite numbers that no
check could tell from real ones. ``save_weights`` and ``load_weights`` refuse other
dtypes; ``read_safetensors`` still decodes I32/I64 (it reads the format, not weights);
``check_params`` takes integer arrays built in memory and returns them as floats.
"""

from __future__ import annotations

import io
import json
import math
import os
import reprlib
import struct
import zipfile
import zlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import numpy as np
import numpy.typing as npt

from rnnc.errors import RnncError, SpecError, did_you_mean
from rnnc.front.checks import Analysis, analyze
from rnnc.front.spec import RecurrentLayer, Spec
from rnnc.runtime.files import write_atomic
from rnnc.runtime.params import available_memory, param_shapes, require_memory

Params = dict[str, np.ndarray]
_T = TypeVar("_T")
Shapes = Mapping[str, tuple[int, ...]]
MAX_SAFETENSORS_HEADER = 100 << 20  # as the safetensors library
MAX_WEIGHTS_BYTES = 16 << 30
MAX_DIMS = 32  # NumPy 1.x's most

_SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
}
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
_SAFETENSORS_FIELDS = ("dtype", "shape", "data_offsets")
_FLOATS = "float16, float32 or float64"


class WeightsError(RnncError):
    """A weights file or parameter set does not fit; carries every problem found."""

    def __init__(self, problems: list[str], source: str | None = None):
        # Names in problems come from files: escaped, a name cannot start a line of its
        # own (a newline, or any of the separators str.splitlines knows) or hide text.
        self.problems = [p if p.isprintable() else _escaped(p) for p in problems]
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__("\n".join(head + p for p in self.problems))


def _escaped(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
    Draws happen in canonical order from ``numpy.random.default_rng(seed)``. A model
    whose parameters would not fit in this machine's memory is refused (RnncError).
    """
    rules = init_rules(spec)
    require_memory({name: shape for name, (shape, _) in rules.items()}, itemsize=8)
    rng = np.random.default_rng(seed)
    params: Params = {}
    for name, (shape, (kind, value)) in rules.items():
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
    return f"{prefix}.{_MATRIX_OF_VECTOR.get(last) or 'W_' + last.removeprefix('b_')}"


# b_c -> W_c (attention's output), b_h -> W_h (a bridge per state), and these:
_MATRIX_OF_VECTOR = {"b": "W", "v": "W_k"}


def check_params(
    params: Mapping[str, Any],
    shapes: Shapes,
    source: str | None = None,
    *,
    dtype: npt.DTypeLike | None = None,
) -> Params:
    """Every parameter present, none extra, right shapes, real and finite; else raise.

    ``dtype`` is the model's (``"float32"``, ``np.float32``): each value is cast to it
    and must still be finite, so a float64 1e300 meant for a float32 model is refused
    as an overflow instead of becoming inf. Without it, values are checked as given.
    Returns float arrays (of ``dtype`` when given; otherwise integers become float64
    and floats stay as they are); nothing is returned half-checked.
    """
    target = None if dtype is None else np.dtype(dtype)
    if target is not None and target.kind != "f":
        raise ValueError(f"check_params: dtype must be a float dtype, found {target}")
    problems = _name_problems(params, shapes)
    checked: Params = {}
    for name, expected in shapes.items():
        if name not in params:
            continue
        try:
            value = np.asarray(params[name])
        except (ValueError, TypeError) as exc:  # ragged nested lists
            problems.append(f"{name}: expected an array of real numbers ({exc})")
            continue
        if value.dtype.kind not in "fiu":
            problems.append(f"{name}: expected real numbers, found dtype {value.dtype}")
            continue
        if tuple(value.shape) != tuple(expected):
            problems.append(_shape_problem(name, expected, value.shape))
            continue
        if target is not None:
            into = target
        else:
            into = value.dtype if value.dtype.kind == "f" else np.dtype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            cast = value.astype(into, copy=False)
        finite = np.isfinite(value)
        not_finite = int(finite.size - np.count_nonzero(finite))
        overflow = int(np.count_nonzero(finite & ~np.isfinite(cast)))
        if not_finite:
            problems.append(f"{name}: {not_finite} values are not finite (nan or inf)")
        if overflow:
            largest = float(np.abs(value[finite]).max())
            problems.append(
                f"{name}: {overflow} values overflow {into} (largest magnitude {largest:.4g}; "
                f"{into} holds at most {float(np.finfo(into).max):.4g})"
            )
        if not (not_finite or overflow):
            checked[name] = cast
    if problems:
        raise WeightsError(problems, source)
    return checked


def _name_problems(names: Collection[str], shapes: Shapes) -> list[str]:
    problems = [
        f"{name}: missing (expected shape {tuple(shape)})"
        for name, shape in shapes.items()
        if name not in names
    ]
    problems += [
        f"{name}: unexpected parameter{did_you_mean(name, shapes)}"
        for name in names
        if name not in shapes
    ]
    return problems


def _shape_problem(name: str, expected: tuple[int, ...], found: tuple[int, ...]) -> str:
    return f"{name}: expected {tuple(expected)}, found {tuple(found)}"


# --- files -----------------------------------------------------------------------------


def weights_limit(expected: Shapes | None = None) -> int:
    """The most bytes a weights file, and the arrays it declares, may hold.

    For a model of known shapes: four times its parameters in float64, plus 1 MiB for
    names and headers. Otherwise :data:`MAX_WEIGHTS_BYTES` (16 GiB), and never more
    than the memory available now (:func:`rnnc.runtime.params.available_memory`), where known.
    """
    if expected is not None:
        return 4 * 8 * sum(math.prod(shape) for shape in expected.values()) + (1 << 20)
    free = available_memory()
    return MAX_WEIGHTS_BYTES if free is None else min(MAX_WEIGHTS_BYTES, free)


def _limit_text(expected: Shapes | None, limit: int) -> str:
    if expected is not None:
        return f"weights for this model hold at most {limit:,} bytes (4x its float64 size + 1 MiB)"
    return (
        f"rnnc loads at most {limit:,} bytes without the model's shapes "
        "(the smaller of 16 GiB and the memory available)"
    )


def save_weights(path: str | os.PathLike[str], params: Mapping[str, np.ndarray]) -> None:
    """Write ``.npz`` or ``.safetensors`` (by suffix), atomically; floats only, as
    :func:`load_weights` reads."""
    name = os.fspath(path)
    if not name.endswith((".npz", ".safetensors")):
        raise WeightsError(["unknown weights format (expected .npz or .safetensors)"], name)
    arrays: dict[str, Any] = {key: np.asarray(value) for key, value in params.items()}
    unfit = [
        f"{key}: weights are {_FLOATS}, found {array.dtype}"
        for key, array in arrays.items()
        if not _is_float(array.dtype)
    ]
    if unfit:
        raise WeightsError(unfit, name)
    if name.endswith(".npz"):
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_atomic(name, buffer.getvalue())
    else:
        write_atomic(name, safetensors_bytes(arrays))


def load_weights(path: str | os.PathLike[str], *, expected: Shapes | None = None) -> Params:
    """Read ``.npz`` (no pickles) or ``.safetensors`` weights by suffix.

    What the file declares is checked before any array data is read: every array a
    float (float16, float32 or float64), every declared size equal to the bytes the
    file holds for it, and the file and its arrays within :func:`weights_limit`.
    ``expected``, the model's shapes (``model.param_shapes()``), adds its names and
    shapes to these checks, and a tighter limit. Raises :class:`WeightsError` listing
    every problem found; finiteness is :func:`check_params`'s part.
    """
    name = os.fspath(path)
    if name.endswith(".npz"):
        read = _read_npz
    elif name.endswith(".safetensors"):
        read = _read_safetensors_file
    else:
        raise WeightsError(["unknown weights format (expected .npz or .safetensors)"], name)
    limit = weights_limit(expected)
    try:
        with open(name, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise WeightsError(
                    [f"the file holds {size:,} bytes; {_limit_text(expected, limit)}"], name
                )
            return read(handle, size, name, expected, limit)
    except OSError as exc:
        raise WeightsError([f"cannot read weights: {exc}"], name) from None


@dataclass(frozen=True)
class _Declared:
    """An array as a file declares it, before any of its data is read."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    nbytes: int
    start: int  # where its data begins: in the data section, or in its .npz member
    fortran: bool = False


def _check_declared(
    arrays: Mapping[str, _Declared], expected: Shapes | None, limit: int, source: str
) -> None:
    """Refuse, before reading any data, what a file declares that cannot be weights."""
    problems = [] if expected is None else _name_problems(arrays, expected)
    for key, array in arrays.items():
        if not _is_float(array.dtype):
            problems.append(f"{key}: weights are {_FLOATS}, found {array.dtype}")
        elif expected is not None and key in expected and array.shape != tuple(expected[key]):
            problems.append(_shape_problem(key, expected[key], array.shape))
    total = sum(array.nbytes for array in arrays.values())
    if total > limit:
        problems.append(f"its arrays declare {total:,} bytes; {_limit_text(expected, limit)}")
    if problems:
        raise WeightsError(problems, source)


def _is_float(dtype: np.dtype[Any]) -> bool:
    return dtype.kind == "f" and dtype.itemsize in (2, 4, 8)


def _is_shape(shape: Any) -> bool:
    return (
        isinstance(shape, (tuple, list))
        and len(shape) <= MAX_DIMS
        and all(type(n) is int and n >= 0 for n in shape)  # not bools, not floats
    )


def _nbytes(shape: tuple[int, ...], itemsize: int) -> int | None:
    """The bytes of an array of this shape, or None past 2**64 (no file holds that)."""
    if itemsize == 0 or 0 in shape:
        return 0
    total = itemsize
    for n in shape:
        total *= n
        if total > 1 << 64:  # stop before a product of huge numbers becomes slow
            return None
    return total


def _decode(data: bytes | memoryview, array: _Declared) -> np.ndarray:
    values = np.frombuffer(data, dtype=array.dtype)
    values = values.reshape(array.shape, order="F" if array.fortran else "C")
    return values.astype(array.dtype.newbyteorder("="))  # a writable copy, native order


# --- .npz ------------------------------------------------------------------------------

# What zipfile raises on a damaged archive (BadZipFile for a bad CRC too) or member.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError)


class _Unfit(Exception):
    """A member that reads, but is no .npy array rnnc loads; says what is wrong."""


_NPY_LENGTH_FORMATS = {(1, 0): "<H", (2, 0): "<I"}
_NPY_MAGIC_LENGTH = 8
_MAX_NPY_HEADER = 10_000  # numpy's own bound (max_header_size)


def _read_npz(
    handle: IO[bytes], size: int, source: str, expected: Shapes | None, limit: int
) -> Params:
    """Arrays from an .npz, read as numpy.load would, without trusting its sizes."""
    try:
        archive = zipfile.ZipFile(handle)
    except _ZIP_ERRORS as exc:
        problem = f"cannot read weights: not an .npz, which is a zip archive ({exc})"
        raise WeightsError([problem], source) from None
    with archive:
        members, problems = _npz_members(archive)
        arrays = _each_member(members, lambda key, info: _npy_header(archive, info), problems)
        if problems:
            raise WeightsError(problems, source)
        _check_declared(arrays, expected, limit, source)
        out = _each_member(
            members, lambda key, info: _npy_data(archive, info, arrays[key]), problems
        )
        if problems:
            raise WeightsError(problems, source)
        return out


def _each_member(
    members: Mapping[str, zipfile.ZipInfo],
    read: Callable[[str, zipfile.ZipInfo], _T],
    problems: list[str],
) -> dict[str, _T]:
    """``read`` of every member it succeeds on; a line in ``problems`` for each other."""
    out: dict[str, _T] = {}
    for key, info in members.items():
        try:
            out[key] = read(key, info)
        except _Unfit as exc:
            problems.append(f"{key}: member {info.filename!r}: {exc}")
        except _ZIP_ERRORS as exc:
            problems.append(f"{key}: member {info.filename!r} is damaged ({exc})")
    return out


def _npz_members(archive: zipfile.ZipFile) -> tuple[dict[str, zipfile.ZipInfo], list[str]]:
    """The archive's NAME.npy members by NAME, and what is wrong with the others."""
    members: dict[str, zipfile.ZipInfo] = {}
    problems = []
    for info in archive.infolist():
        key = info.filename.removesuffix(".npy")
        if key == info.filename or info.is_dir():
            problems.append(f"member {info.filename!r} is no array (an .npz holds NAME.npy)")
        elif key in members:
            problems.append(f"{key}: member {info.filename!r} appears twice")
        elif info.flag_bits & 0x1:
            problems.append(f"{key}: member {info.filename!r} is encrypted")
        elif info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            problems.append(
                f"{key}: member {info.filename!r} uses compression method "
                f"{info.compress_type}; rnnc reads stored and deflated members "
                "(what numpy.savez and numpy.savez_compressed write)"
            )
        else:
            members[key] = info
    return members, problems


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Declared:
    """How a .npy member declares its array, from the member's first bytes only."""
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
        except ValueError as exc:  # not the magic string, or too short for it
            raise _Unfit(f"no .npy array ({exc})") from None
        length_format = _NPY_LENGTH_FORMATS.get(version)
        if length_format is None:
            raise _Unfit(f".npy format version {version}; rnnc reads (1, 0) and (2, 0)")
        length_bytes = member.read(struct.calcsize(length_format))
        if len(length_bytes) != struct.calcsize(length_format):
            raise _Unfit("it ends inside its .npy header")
        (length,) = struct.unpack(length_format, length_bytes)
        if length > _MAX_NPY_HEADER:
            raise _Unfit(f"its .npy header is {length} bytes long; at most {_MAX_NPY_HEADER}")
        text = member.read(length)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    try:
        shape, fortran, dtype = read_header(io.BytesIO(length_bytes + text))
    # NOTE: numpy parses the header text with ast.literal_eval, tokenize (for Python 2
    # headers) and np.dtype, which raise many kinds of errors on hostile text; on these
    # few bounded bytes, any of them means the header is bad.
    except Exception as exc:
        raise _Unfit(f"bad .npy header ({exc})") from None
    if dtype.hasobject:
        raise _Unfit("it holds Python objects (pickles), which rnnc never loads")
    if not _is_shape(shape):
        raise _Unfit(
            f"its .npy header declares shape {reprlib.repr(shape)}; a shape is at most "
            f"{MAX_DIMS} non-negative integers"
        )
    start = _NPY_MAGIC_LENGTH + len(length_bytes) + length
    nbytes = _nbytes(shape, dtype.itemsize)
    if nbytes is None or start + nbytes != info.file_size:
        size = "more than 2**64" if nbytes is None else f"{nbytes:,}"
        raise _Unfit(
            f"its .npy header declares shape {shape} of {dtype} ({size} bytes), "
            f"but the member holds {info.file_size - start:,} bytes of data"
        )
    return _Declared(dtype, tuple(shape), nbytes, start, fortran)


def _npy_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo, array: _Declared) -> np.ndarray:
    with archive.open(info) as member:
        member.read(array.start)
        data = member.read(array.nbytes)  # up to the member's end, where zipfile checks its CRC
    if len(data) != array.nbytes:
        raise _Unfit(f"it ends after {len(data)} of its {array.nbytes} bytes of data")
    return _decode(data, array)


# --- .safetensors ----------------------------------------------------------------------


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
    """Named arrays from safetensors bytes, checking the header against the data: each
    entry well formed, and the entries' data offsets tiling the data exactly."""
    arrays, data = _safetensors_layout(raw, source)
    return _safetensors_arrays(arrays, data)


def _read_safetensors_file(
    handle: IO[bytes], size: int, source: str, expected: Shapes | None, limit: int
) -> Params:
    raw = handle.read(size)
    arrays, data = _safetensors_layout(raw, source)
    _check_declared(arrays, expected, limit, source)
    return _safetensors_arrays(arrays, data)


def _safetensors_arrays(arrays: Mapping[str, _Declared], data: memoryview) -> Params:
    return {key: _decode(data[a.start : a.start + a.nbytes], a) for key, a in arrays.items()}


def _safetensors_layout(raw: bytes, source: str) -> tuple[dict[str, _Declared], memoryview]:
    """The arrays a safetensors file declares, checked against each other and its data.

    The header is a flat JSON mapping of name -> {dtype, shape, data_offsets}, plus an
    optional ``__metadata__`` mapping of strings to strings; each name appears once.
    """
    if len(raw) < 8:
        raise WeightsError(["not a safetensors file (too short)"], source)
    (size,) = struct.unpack("<Q", raw[:8])
    if size > min(MAX_SAFETENSORS_HEADER, len(raw) - 8):
        problem = (
            f"not a safetensors file (bad header length {size}: the file holds "
            f"{len(raw) - 8} bytes after it, and a header is at most {MAX_SAFETENSORS_HEADER})"
        )
        raise WeightsError([problem], source)
    header = _safetensors_header(raw[8 : 8 + size], source)
    arrays: dict[str, _Declared] = {}
    problems = []
    for key, info in header.items():
        if key == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                problems.append(
                    f"__metadata__: expected a mapping of strings to strings, "
                    f"found {reprlib.repr(info)}"
                )
            continue
        try:
            arrays[key] = _safetensors_entry(info)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    data = memoryview(raw)[8 + size :]
    problems = problems or _layout_problems(arrays, len(data))
    if problems:
        raise WeightsError(problems, source)
    return arrays, data


class _HeaderError(ValueError):
    """A safetensors header that parses as JSON but cannot be one."""


def _safetensors_header(text: bytes, source: str) -> dict[str, Any]:
    try:
        header = json.loads(
            text.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_int=_json_int,
            parse_constant=_json_constant,
        )
    except _HeaderError as exc:
        raise WeightsError([f"not a safetensors file ({exc})"], source) from None
    except RecursionError:
        problem = (
            "not a safetensors file (header nested too deeply: it is a flat mapping of "
            "name -> {dtype, shape, data_offsets})"
        )
        raise WeightsError([problem], source) from None
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise WeightsError(
            [f"not a safetensors file (header is not JSON: {exc})"], source
        ) from None
    if not isinstance(header, dict):
        raise WeightsError(["not a safetensors file (header is not a mapping)"], source)
    return header


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise _HeaderError(f"{key!r} appears twice in the header; a name appears once")
        mapping[key] = value
    return mapping


def _json_int(text: str) -> int:
    if len(text) > 20:  # int64 needs 19 digits; int() of a longer one can be slow
        raise _HeaderError(f"an integer of {len(text)} digits in the header (at most 20)")
    return int(text)


def _json_constant(name: str) -> Any:
    raise _HeaderError(f"{name} in the header is not JSON")


def _safetensors_entry(info: Any) -> _Declared:
    """One header entry, name -> {dtype, shape, data_offsets}; ValueError says what is
    wrong with it."""
    if not isinstance(info, dict):
        raise ValueError(f"expected {{dtype, shape, data_offsets}}, found {reprlib.repr(info)}")
    missing = [field for field in _SAFETENSORS_FIELDS if field not in info]
    extra = [field for field in info if field not in _SAFETENSORS_FIELDS]
    if missing or extra:
        found = ", ".join(
            [*(f"missing {f!r}" for f in missing), *(f"unexpected {f!r}" for f in extra)]
        )
        raise ValueError(f"expected the fields dtype, shape, data_offsets; {found}")
    kind, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    dtype = _SAFETENSORS_DTYPES.get(kind) if isinstance(kind, str) else None
    if dtype is None:
        choices = ", ".join(_SAFETENSORS_DTYPES)
        raise ValueError(f"unsupported dtype {reprlib.repr(kind)} (rnnc reads {choices})")
    if not _is_shape(shape):
        raise ValueError(
            f"shape {reprlib.repr(shape)}: expected a list of at most {MAX_DIMS} "
            "non-negative integers"
        )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(n) is int for n in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise ValueError(
            f"data_offsets {reprlib.repr(offsets)}: expected [start, end] with 0 <= start <= end"
        )
    start, end = offsets
    nbytes = _nbytes(tuple(shape), dtype.itemsize)
    if nbytes is None or nbytes != end - start:
        needs = "more than 2**64" if nbytes is None else str(nbytes)
        raise ValueError(
            f"data offsets [{start}, {end}] hold {end - start} bytes, "
            f"but shape {shape} of {kind} needs {needs}"
        )
    return _Declared(dtype, tuple(shape), nbytes, start)


def _layout_problems(arrays: Mapping[str, _Declared], length: int) -> list[str]:
    """The entries' data offsets must tile the data: no gap, no overlap, to its end."""
    problems = []
    position, previous = 0, ""
    for key, array in sorted(arrays.items(), key=lambda item: (item[1].start, item[1].nbytes)):
        end = array.start + array.nbytes
        if array.start < position:
            problems.append(
                f"{key}: data offsets [{array.start}, {end}] overlap those of {previous!r}"
            )
        elif array.start > position:
            problems.append(f"{key}: no tensor holds the data bytes [{position}, {array.start}]")
        position, previous = max(position, end), key
    if position != length:
        problems.append(f"data offsets end at byte {position}, but the file holds {length} bytes")
    return problems
