"""rnnc.weights: initial values, weights files and parameter checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import rnnc
from rnnc.params import param_shapes
from rnnc.weights import read_safetensors, safetensors_bytes
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
    with pytest.raises(rnnc.WeightsError, match="cannot read weights"):
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
    with pytest.raises(rnnc.WeightsError, match="data offsets"):
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
