"""rnnc.front.functions: each function of the cell language, declared once, is right on every
target: its slope against central finite differences of its value, and the NumPy,
PyTorch and C renderings against each other and against the math in the docs."""

from __future__ import annotations

import ctypes
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rnnc.front.equations import FUNCTIONS as LANGUAGE
from rnnc.front.functions import FUNCTIONS, NUMPY, TORCH, Prim, Renderer, c_renderer
from tests.helpers import c_compiler

# Points away from the kinks (relu at 0, hard_sigmoid at -2.5 and 2.5), where a slope
# is a one-sided matter.
POINTS = np.array([-30.0, -4.0, -2.4, -1.3, -0.7, -0.1, 0.05, 0.3, 1.1, 2.2, 3.5, 40.0])

# The math as docs/cells.md writes it, computed here with the standard library alone.
MATH = {
    "sigmoid": lambda a: 1.0 / (1.0 + math.exp(-a)),
    "tanh": math.tanh,
    "relu": lambda a: max(a, 0.0),
    "hard_sigmoid": lambda a: min(max(0.2 * a + 0.5, 0.0), 1.0),
    "softsign": lambda a: a / (1.0 + abs(a)),
    "identity": lambda a: a,
}


def numpy_value(renderer: Renderer, name: str, a: np.ndarray) -> np.ndarray:
    return np.asarray(eval(renderer.value(name, "a")[0], {"np": np}, {"a": a}))


def test_the_language_is_the_registry() -> None:
    assert tuple(FUNCTIONS) == LANGUAGE
    assert set(MATH) == set(FUNCTIONS)  # a new function needs its math in this test too


@pytest.mark.parametrize("renderer", [NUMPY, TORCH, c_renderer("float"), c_renderer("double")])
def test_every_target_writes_every_primitive(renderer: Renderer) -> None:
    missing = set(Prim) - {Prim.A, Prim.Y, Prim.CONST} - set(renderer.prims)
    assert not missing


def test_slopes_read_only_the_value() -> None:
    for function in FUNCTIONS.values():
        assert Prim.A not in function.slope.prims(), function.name
        assert Prim.Y not in function.value.prims(), function.name


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_values_are_the_math(name: str) -> None:
    expected = np.array([MATH[name](float(a)) for a in POINTS])
    np.testing.assert_allclose(numpy_value(NUMPY, name, POINTS), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_slopes_are_the_derivative(name: str) -> None:
    eps = 1e-6
    numeric = (numpy_value(NUMPY, name, POINTS + eps) - numpy_value(NUMPY, name, POINTS - eps)) / (
        2 * eps
    )
    y = numpy_value(NUMPY, name, POINTS)
    slope = np.broadcast_to(eval(NUMPY.slope(name, "y")[0], {"np": np}, {"y": y}), POINTS.shape)
    np.testing.assert_allclose(slope, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_renders_the_same_numbers_in_its_dtype(dtype: str) -> None:
    torch = pytest.importorskip("torch")
    a = torch.tensor(POINTS, dtype=getattr(torch, dtype))
    for name in FUNCTIONS:
        value = eval(TORCH.value(name, "a")[0], {"torch": torch}, {"a": a})
        slope = eval(TORCH.slope(name, "y")[0], {"torch": torch}, {"y": value})
        slope = torch.as_tensor(slope, dtype=a.dtype).expand_as(a)
        assert value.dtype == a.dtype and slope.dtype == a.dtype, name  # no float32 drift
        y = numpy_value(NUMPY, name, POINTS)
        expected_slope = np.broadcast_to(
            eval(NUMPY.slope(name, "y")[0], {"np": np}, {"y": y}), y.shape
        )
        tolerance = 1e-6 if dtype == "float32" else 1e-14
        np.testing.assert_allclose(value.numpy(), y, rtol=tolerance, atol=tolerance, err_msg=name)
        np.testing.assert_allclose(slope.numpy(), expected_slope, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("real", ["float", "double"])
def test_c_renders_the_same_numbers(real: str, tmp_path: Path) -> None:
    compiler = c_compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    c = c_renderer(real)
    lines = ["#include <math.h>"]
    for name in FUNCTIONS:
        lines += [
            f"{real} value_{name}({real} a) {{ return {c.value(name, 'a')[0]}; }}",
            f"{real} slope_{name}({real} y) {{ return {c.slope(name, 'y')[0]}; }}",
        ]
    source = tmp_path / "functions.c"
    source.write_text("\n".join(lines) + "\n")
    library = tmp_path / "functions.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", library, source, "-lm"],
        check=True,
        capture_output=True,
    )
    loaded = ctypes.CDLL(str(library))
    ctype = ctypes.c_float if real == "float" else ctypes.c_double
    tolerance = 1e-6 if real == "float" else 1e-14
    for name in FUNCTIONS:
        value_fn, slope_fn = getattr(loaded, f"value_{name}"), getattr(loaded, f"slope_{name}")
        for fn in (value_fn, slope_fn):
            fn.restype, fn.argtypes = ctype, [ctype]
        values = np.array([value_fn(float(a)) for a in POINTS])
        y = numpy_value(NUMPY, name, POINTS)
        np.testing.assert_allclose(values, y, rtol=tolerance, atol=tolerance, err_msg=name)
        slopes = np.array([slope_fn(float(v)) for v in values])
        expected = np.broadcast_to(eval(NUMPY.slope(name, "y")[0], {"np": np}, {"y": y}), y.shape)
        np.testing.assert_allclose(slopes, expected, rtol=tolerance, atol=tolerance, err_msg=name)


def test_c_literals_are_typed_and_finite() -> None:
    assert c_renderer("float").literal(0.2) == "((float)0.2f)"
    assert c_renderer("double").literal(1.0) == "((double)1.0)"
    with pytest.raises(ValueError, match="no C literal"):
        c_renderer("double").literal(math.inf)
