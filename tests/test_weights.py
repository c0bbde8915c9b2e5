"""rnnc.runtime.weights: initial values, weights files and parameter checks."""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import rnnc
import rnnc.runtime.weights
from rnnc.runtime.params import param_shapes
from rnnc.runtime.weights import read_safetensors, safetensors_bytes, weights_limit
from tests.conftest import GALLERY, ROOT


def spec(name: str) -> rnnc.Spec:
    return rnnc.load_spec(ROOT / "specs" / f"{name}.yaml")


@pytest.mark.parametrize("path", GALLERY, ids=[p.stem for p in GALLERY])
def test_init_params_fit_the_spec_and_repeat_with_the_seed(path: Path) -> None:
    s = rnnc.load_spec(path)
    params = rnnc.init_params(s, seed=3)
    shapes = param_shapes(rnnc.analyze(s))
    assert {k: v.shape for k, v in params.items()} == shapes
    assert all(v.dtype == np.float64 for v in params.values())
    again = rnnc.init_params(s, seed=3)
    assert all(np.array_equal(params[k], again[k]) for k in params)
    other = rnnc.init_params(s, seed=4)
    assert any(not np.array_equal(params[k], other[k]) for k in params)


def test_init_bounds_follow_pytorch_defaults() -> None:
    params = rnnc.init_params(spec("seq2seq_attention"), seed=0)
    H = 64
    cell = params["encoder.fwd.l0.W_r"]
    assert np.abs(cell).max() <= 1 / math.sqrt(H) and np.abs(cell).max() > 0.9 / math.sqrt(H)
    head = params["out.W"]  # fan-in 64
    assert np.abs(head).max() <= 1 / math.sqrt(64)
    bridge = params["decoder.bridge.W"]  # fan-in 128
    assert np.abs(bridge).max() <= 1 / math.sqrt(128) < np.abs(cell).max()
    assert np.abs(params["out.b"]).max() <= 1 / math.sqrt(64)
    embedding = params["src.embedding"]  # N(0, 1)
    assert 0.8 < embedding.std() < 1.2


def test_param_init_sets_a_constant_at_every_depth_and_direction() -> None:
    s = rnnc.parse_spec(
        "rnnc: 1\nname: fb\ninputs: {x: {size: 3}}\n"
        "layers: {r: {cell: lstm, hidden: 4, input: x, depth: 2, direction: bidirectional,"
        " param_init: {b_f: 1.0}}}\noutputs: {y: {from: r}}\n"
    )
    params = rnnc.init_params(s)
    for name in ("r.fwd.l0.b_f", "r.bwd.l0.b_f", "r.fwd.l1.b_f", "r.bwd.l1.b_f"):
        assert np.array_equal(params[name], np.ones(4))
    assert not np.allclose(params["r.fwd.l0.b_i"], 1.0)


def test_init_params_refuses_an_invalid_spec() -> None:
    s = rnnc.parse_spec(
        "rnnc: 1\nname: bad\ninputs: {x: {size: 2}}\nlayers: {r: {cell: nope, hidden: 2, input: x}}\n"
        "outputs: {y: {from: r}}\n"
    )
    with pytest.raises(rnnc.SpecError):
        rnnc.init_params(s)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_weights_files_round_trip_exactly(tmp_path: Path, suffix: str) -> None:
    params = rnnc.init_params(spec("seq2seq_luong"), seed=1)
    params["out.b"] = params["out.b"].astype(np.float32)
    path = tmp_path / f"w{suffix}"
    rnnc.save_weights(path, params)
    loaded = rnnc.load_weights(path)
    assert loaded.keys() == params.keys()
    for name, value in params.items():
        assert loaded[name].dtype == value.dtype
        assert np.array_equal(loaded[name], value)


def test_our_safetensors_agree_with_the_safetensors_library() -> None:
    params = {
        "a.W": np.arange(6.0).reshape(2, 3),
        "b": np.array([1.5], dtype=np.float32),
        "s": np.zeros(()),
    }
    theirs = safetensors.numpy.load(safetensors_bytes(params))
    ours = read_safetensors(safetensors.numpy.save(params))
    for name, value in params.items():
        assert np.array_equal(theirs[name], value) and theirs[name].dtype == value.dtype
        assert np.array_equal(ours[name], value) and ours[name].dtype == value.dtype


def test_npz_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(rnnc.WeightsError, match=r"bad: member 'bad\.npy': it holds Python objects"):
        rnnc.load_weights(path)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x08\x00\x00\x00\x00\x00\x00\x00not json",
        b"\xff" * 16,
        b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
    ],
)
def test_corrupt_safetensors(raw: bytes) -> None:
    with pytest.raises(rnnc.WeightsError, match="not a safetensors file"):
        read_safetensors(raw)


def test_safetensors_offsets_are_checked() -> None:
    raw = safetensors_bytes({"a": np.zeros(4)})
    with pytest.raises(rnnc.WeightsError, match="data offsets end at byte 32, but the file"):
        read_safetensors(raw[:-8])


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(rnnc.WeightsError, match=r"expected \.npz or \.safetensors"):
        rnnc.save_weights(tmp_path / "w.pt", {})
    assert list(tmp_path.iterdir()) == []


def test_check_params_reports_every_problem_at_once() -> None:
    shapes = {"enc.fwd.l0.W_i": (64, 96), "enc.fwd.l0.b_i": (64,), "out.W": (3, 64), "out.b": (3,)}
    params = {
        "enc.fwd.l0.W_i": np.zeros((64, 80)),
        "enc.fwd.l0.b_i": np.full(64, np.nan),
        "out.W": np.zeros((3, 64), dtype=complex),
        "out.bb": np.zeros(3),
    }
    with pytest.raises(rnnc.WeightsError) as exc:
        rnnc.check_params(params, shapes, source="w.npz")
    assert exc.value.problems == [
        "out.b: missing (expected shape (3,))",
        "out.bb: unexpected parameter (did you mean 'out.b'?)",
        "enc.fwd.l0.W_i: expected (64, 96), found (64, 80)",
        "enc.fwd.l0.b_i: 64 values are not finite (nan or inf)",
        "out.W: expected real numbers, found dtype complex128",
    ]
    assert str(exc.value).startswith("w.npz: out.b: missing")


def test_check_params_passes_what_fits() -> None:
    shapes = {"a": (2,)}
    checked = rnnc.check_params({"a": [1.0, 2.0]}, shapes)
    assert np.array_equal(checked["a"], [1.0, 2.0])


def test_check_params_takes_integers_built_in_memory_as_floats() -> None:
    checked = rnnc.check_params({"a": [1, 2]}, {"a": (2,)})
    assert checked["a"].dtype == np.float64 and np.array_equal(checked["a"], [1.0, 2.0])


# --- bad weights files: every one refused as a WeightsError naming the file ------------

PARAMS = {"a.W": np.arange(6.0).reshape(2, 3), "a.b": np.array([0.5, -1.0])}
SHAPES = {"a.W": (2, 3), "a.b": (2,)}


def refusal(path: Path, expected: dict[str, tuple[int, ...]] | None = None) -> str:
    """The message of the WeightsError that loading ``path`` must raise; it names the
    file on every line."""
    with pytest.raises(rnnc.WeightsError) as exc:
        rnnc.load_weights(path, expected=expected)
    assert all(line.startswith(f"{path}: ") for line in str(exc.value).splitlines())
    return str(exc.value)


def npz_bytes(params: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    return buffer.getvalue()


def npy_bytes(shape: Any, data: bytes, descr: str = "<f8") -> bytes:
    """A .npy member whose header declares ``shape`` (not necessarily that of the data)."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def test_load_weights_keeps_its_one_argument_form(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    rnnc.save_weights(path, PARAMS)
    for loaded in (rnnc.load_weights(path), rnnc.load_weights(path, expected=SHAPES)):
        assert all(np.array_equal(loaded[k], v) for k, v in PARAMS.items())


def flip_a_data_byte(raw: bytes) -> bytes:
    at = raw.index(PARAMS["a.W"].tobytes()) + 3
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]


def npy_file(raw: bytes) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, PARAMS["a.W"])
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: b"", "not an .npz, which is a zip archive"),
        (lambda raw: raw[: len(raw) // 2], "not an .npz, which is a zip archive"),
        (flip_a_data_byte, "a.W: member 'a.W.npy' is damaged (Bad CRC-32 for file"),
        (npy_file, "not an .npz, which is a zip archive"),  # a .npy renamed .npz
    ],
    ids=["empty", "truncated", "flipped-byte", "npy-renamed"],
)
def test_a_damaged_npz_is_refused(
    tmp_path: Path, damage: Callable[[bytes], bytes], message: str
) -> None:
    path = tmp_path / "w.npz"
    path.write_bytes(damage(npz_bytes(PARAMS)))
    assert message in refusal(path)


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_every_truncation_of_an_npz_is_refused(tmp_path: Path, compressed: bool) -> None:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **PARAMS)
    raw = buffer.getvalue()
    path = tmp_path / "w.npz"
    for size in [*range(0, len(raw), 11), len(raw) - 1]:  # tests/test_fuzz_weights.py: all
        path.write_bytes(raw[:size])
        refusal(path)


def test_safetensors_nested_100000_levels_deep_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    deep = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(struct.pack("<Q", len(deep)) + deep)
    assert "header nested too deeply" in refusal(path)
    inside = '{"a":{"dtype":"F64","shape":%s,"data_offsets":[0,8]}}' % ("[" * 5000 + "]" * 5000)
    path.write_bytes(safetensors_raw(inside, bytes(8)))
    assert "header nested too deeply" in refusal(path)


class Inflated:
    """Counts the bytes read out of zip members (what zipfile inflates for them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.bytes = 0
        read = zipfile.ZipExtFile.read

        def counting(member: zipfile.ZipExtFile, n: int | None = -1) -> bytes:
            data = read(member, n)
            self.bytes += len(data)
            return data

        monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)


def zip_bomb(path: Path, header: bytes, zeros: int) -> None:
    """An .npz of one member a.npy: ``header``, then ``zeros`` zero bytes, deflated."""
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("a.npy", "w", force_zip64=True) as member,
    ):
        member.write(header)
        for _ in range(zeros >> 20):
            member.write(bytes(1 << 20))


def test_an_npz_member_declaring_more_than_it_holds_is_refused_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.npy", npy_bytes((100_000, 100_000), bytes(64)))
    inflated = Inflated(monkeypatch)
    assert (
        "a: member 'a.npy': its .npy header declares shape (100000, 100000) of float64 "
        "(80,000,000,000 bytes), but the member holds 64 bytes of data"
    ) in refusal(path)
    assert inflated.bytes < 1000


def test_a_zip_bomb_is_refused_from_its_declared_sizes_without_inflating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 64 << 20  # enough to prove the point: it deflates to 64 KB
    path = tmp_path / "w.npz"
    # The .npy header declares 24 bytes; the zip member, 64 MiB.
    zip_bomb(path, npy_bytes((3,), b""), size)
    inflated = Inflated(monkeypatch)
    assert (
        "declares shape (3,) of float64 (24 bytes), but the member holds 67,108,864 bytes"
        in refusal(path)
    )
    # Both agree on 64 MiB: refused by the model's shapes, or by the limit without them.
    count = size // 8
    zip_bomb(path, npy_bytes((count,), b""), size)
    message = refusal(path, expected={"a": (3,)})
    assert f"a: expected (3,), found ({count},)" in message
    assert f"its arrays declare {size:,} bytes; weights for this model hold at most" in message
    monkeypatch.setattr(rnnc.runtime.weights, "MAX_WEIGHTS_BYTES", 1 << 20)
    assert f"its arrays declare {size:,} bytes; rnnc loads at most 1,048,576 bytes" in refusal(path)
    assert inflated.bytes < 10_000


def test_the_weights_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert weights_limit({"a": (2, 3), "b": ()}) == 4 * 8 * 7 + (1 << 20)
    assert 0 < weights_limit() <= rnnc.runtime.weights.MAX_WEIGHTS_BYTES == 16 << 30
    monkeypatch.setattr(rnnc.runtime.weights, "available_memory", lambda: 1 << 30)
    assert weights_limit() == 1 << 30
    monkeypatch.setattr(rnnc.runtime.weights, "available_memory", lambda: None)
    assert weights_limit() == 16 << 30


def test_a_file_larger_than_the_model_allows_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.safetensors"
    rnnc.save_weights(path, {"a": np.zeros(1 << 18)})  # 2 MiB
    monkeypatch.setattr(rnnc.runtime.weights, "_read_safetensors_file", None)  # never reached
    assert "holds 2,097,232 bytes; weights for this model hold at most 1,048,608" in refusal(
        path, expected={"a": (1,)}
    )


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_expected_shapes_refuse_names_and_shapes_before_reading(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"w{suffix}"
    rnnc.save_weights(path, {"a.W": np.zeros((3, 2)), "a.bb": np.zeros(2)})
    assert refusal(path, expected=SHAPES).splitlines() == [
        f"{path}: a.b: missing (expected shape (2,))",
        f"{path}: a.bb: unexpected parameter (did you mean 'a.b'?)",
        f"{path}: a.W: expected (2, 3), found (3, 2)",
    ]


def test_a_float64_too_large_for_a_float32_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    rnnc.save_weights(path, {"a.W": np.full((2, 3), 1e300), "a.b": np.zeros(2)})
    loaded = rnnc.load_weights(path, expected=SHAPES)
    assert rnnc.check_params(loaded, SHAPES)["a.W"][0, 0] == 1e300  # float64: fits
    with pytest.raises(rnnc.WeightsError) as exc:
        rnnc.check_params(loaded, SHAPES, source=str(path), dtype="float32")
    assert str(exc.value) == (
        f"{path}: a.W: 6 values overflow float32 (largest magnitude 1e+300; "
        "float32 holds at most 3.403e+38)"
    )
    checked = rnnc.check_params(PARAMS, SHAPES, dtype=np.float32)
    assert all(v.dtype == np.float32 for v in checked.values())


def test_check_params_reports_nan_and_overflow_of_one_parameter() -> None:
    with pytest.raises(rnnc.WeightsError) as exc:
        rnnc.check_params({"a": [np.nan, 7e4, 1.0]}, {"a": (3,)}, dtype="float16")
    assert exc.value.problems == [
        "a: 1 values are not finite (nan or inf)",
        "a: 1 values overflow float16 (largest magnitude 7e+04; float16 holds at most 6.55e+04)",
    ]


def test_weights_files_hold_floats_only(tmp_path: Path) -> None:
    # Float32 bytes relabelled I32 would load as large, finite integers: refused.
    raw = safetensors_bytes({"a.b": np.array([0.5, -1.0], dtype=np.float32)})
    path = tmp_path / "w.safetensors"
    path.write_bytes(raw.replace(b'"F32"', b'"I32"'))
    assert "a.b: weights are float16, float32 or float64, found int32" in refusal(path)
    assert read_safetensors(path.read_bytes())["a.b"][0] == 1056964608  # the format reads it
    path = tmp_path / "w.npz"
    path.write_bytes(npz_bytes({"a.b": np.array([1, 2])}))
    assert "a.b: weights are float16, float32 or float64, found int64" in refusal(path)
    with pytest.raises(rnnc.WeightsError, match=r"a\.b: weights are float16, float32 or float64"):
        rnnc.save_weights(path, {"a.b": np.array([1, 2])})


def safetensors_raw(header: str | dict[str, Any], data: bytes) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + data


def entry(dtype: str, shape: Any, offsets: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            safetensors_raw(
                '{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},'
                '"a":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}}',
                bytes(16),
            ),
            "not a safetensors file ('a' appears twice in the header; a name appears once)",
        ),
        (
            safetensors_raw({"a": entry("F64", [2.9, 1], [0, 16])}, bytes(16)),
            "a: shape [2.9, 1]: expected a list of at most 32 non-negative integers",
        ),
        (
            safetensors_raw({"a": entry("F64", [True, 2], [0, 16])}, bytes(16)),
            "a: shape [True, 2]: expected a list",
        ),
        (
            safetensors_raw({"a": entry("F64", [-1, -2], [0, 16])}, bytes(16)),
            "a: shape [-1, -2]: expected a list",
        ),
        (
            safetensors_raw({"a": entry("F64", [2], [-8, 8])}, bytes(16)),
            "a: data_offsets [-8, 8]: expected [start, end] with 0 <= start <= end",
        ),
        (
            safetensors_raw({"a": entry("F64", [2], [16, 0])}, bytes(16)),
            "a: data_offsets [16, 0]: expected [start, end]",
        ),
        (
            safetensors_raw({"a": entry("F64", [2], [0, 8])}, bytes(16)),
            "a: data offsets [0, 8] hold 8 bytes, but shape [2] of F64 needs 16",
        ),
        (
            safetensors_raw(
                {"a": entry("F64", [2], [0, 16]), "b": entry("F64", [1], [8, 16])}, bytes(16)
            ),
            "b: data offsets [8, 16] overlap those of 'a'",
        ),
        (
            safetensors_raw(
                {"a": entry("F64", [1], [0, 8]), "b": entry("F64", [1], [16, 24])}, bytes(24)
            ),
            "b: no tensor holds the data bytes [8, 16]",
        ),
        (
            safetensors_raw({"a": entry("F64", [1], [0, 8])}, bytes(16)),
            "data offsets end at byte 8, but the file holds 16 bytes",
        ),
        (
            safetensors_raw({"a": entry("F64", [10**30], [0, 8])}, bytes(8)),
            "not a safetensors file (an integer of 31 digits in the header (at most 20))",
        ),
        (
            safetensors_raw({"a": entry("F64", [1e300, 1e300], [0, 8])}, bytes(8)),
            "a: shape [1e+300, 1e+300]: expected a list",
        ),
        (
            safetensors_raw({"a": entry("F64", [2**40] * 4, [0, 8])}, bytes(8)),
            "needs more than 2**64",
        ),
        (
            safetensors_raw({"a": entry("BF16", [1], [0, 2])}, bytes(2)),
            "a: unsupported dtype 'BF16' (rnnc reads F64, F32, F16, I64, I32)",
        ),
        (
            safetensors_raw({"a": {"dtype": "F64", "shape": [1], "offsets": [0, 8]}}, bytes(8)),
            "a: expected the fields dtype, shape, data_offsets; missing 'data_offsets', "
            "unexpected 'offsets'",
        ),
        (
            safetensors_raw({"__metadata__": {"n": 1}}, b""),
            "__metadata__: expected a mapping of strings to strings, found {'n': 1}",
        ),
        (
            struct.pack("<Q", 1 << 63) + b"{}",
            "not a safetensors file (bad header length 9223372036854775808",
        ),
        (
            struct.pack("<Q", 4) + b"{}",
            "not a safetensors file (bad header length 4: the file holds 2 bytes after it",
        ),
        (safetensors_raw("{}", b"") + b"\xff", "the file holds 1 bytes"),
        (safetensors_raw('{"a": NaN}', b""), "not a safetensors file (NaN in the header"),
    ],
)
def test_a_safetensors_header_that_does_not_fit_its_data_is_refused(
    tmp_path: Path, raw: bytes, message: str
) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(raw)
    assert message in refusal(path)


def test_safetensors_metadata_of_strings_is_read_past() -> None:
    raw = safetensors_raw(
        {"__metadata__": {"format": "np"}, "a": entry("F32", [], [0, 4])},
        np.float32(2.5).tobytes(),
    )
    assert read_safetensors(raw)["a"] == np.float32(2.5)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_names_from_a_file_cannot_start_lines_of_their_own(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"w{suffix}"
    rnnc.save_weights(path, {**PARAMS, "a.b\nw.npz: a.W\x1cfits": np.zeros(2)})
    message = refusal(path, expected=SHAPES)  # every line starts with the file's name
    assert "a.b\\nw.npz: a.W\\x1cfits: unexpected parameter" in message
