"""The cells' C steps (backends/native.py): which steps get them, that the scans
through them compute what the Python scans compute (float64 and float32, both
directions, ragged), that no spec text reaches the C source, and that a machine
without a C compiler still runs every model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnc
from rnnc.backends.native import plan
from rnnc.front.cells import builtin_cells
from rnnc.front.equations import parse_cell
from rnnc.ir.lower import lower_cell
from rnnc.tools.verify import random_inputs, verify
from tests.helpers import c_compiler, python_scans, spec_text

torch = pytest.importorskip("torch")

# make test installs gcc where it can; a machine with no C compiler at all still runs
# every model (tested below), only not through C steps.
needs_cc = pytest.mark.skipif(c_compiler() is None, reason="no C compiler on this machine")

SPEC = """
rnnc: 1
name: peepholes
inputs:
  x: {size: 5}
layers:
  r: {cell: lstm_peephole, hidden: 20, input: x, direction: bidirectional, depth: 2}
outputs:
  y: {from: r}
  c: {from: r, state: c}
"""


def compile_torch(text: str, dtype: str = "float64") -> Any:
    return rnnc.compile(rnnc.parse_spec(spec_text(text)), backend="torch", dtype=dtype)


def uses_c_steps(model: Any, dtype: Any) -> bool:
    kernels = model.namespace["native_kernels"]
    return all(kernels(fn, torch.zeros(1, dtype=dtype)) for fn in model.namespace["NATIVE_CELLS"])


def batch(model: Any, B: int, T: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    dtype = np.float32 if model.dtype == "float32" else np.float64
    x = rng.standard_normal((B, T, 5)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    return {"x": x}, lengths


def run_both(model: Any, inputs: dict[str, np.ndarray], lengths: np.ndarray) -> tuple[Any, Any]:
    outputs = model.run(inputs, lengths=lengths)
    cotangents = {k: np.cos(np.arange(v.size)).reshape(v.shape) for k, v in outputs.items()}
    return outputs, model.vjp(inputs, cotangents, lengths=lengths)


def assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rel: float) -> None:
    assert set(a) == set(b)
    for name in a:
        scale = max(float(np.abs(b[name]).max()), 1e-4)
        assert float(np.abs(a[name] - b[name]).max()) <= rel * scale, name


def test_steps_that_fit_get_c_and_the_rest_do_not() -> None:
    cells = builtin_cells()
    fits = {name: plan(lower_cell(cell, 4, 3)) is not None for name, cell in cells.items()}
    assert fits == {
        "rnn": True,
        "rnn_relu": True,
        "lstm": True,
        "lstm_peephole": True,
        "lstm_cifg": True,
        "gru": True,
        "gru_reset_before": True,  # W_n @ [x, r * h]: two stages, a product between
    }
    (product,) = plan(lower_cell(cells["gru_reset_before"], 4, 3)).products  # type: ignore[union-attr]
    assert product.block.param == "W_n" and product.stage == 1
    reads_x, errors = parse_cell("own", ["h"], {"h": "tanh(W @ [x, h]) + p * x"})
    assert reads_x is not None and not errors
    assert plan(lower_cell(reads_x, 3, 3)) is None  # x outside its hoisted product


@needs_cc
def test_c_steps_agree_with_the_python_scans_in_float64() -> None:
    """Both directions, two depths, ragged lengths: outputs, final states and every
    gradient, to float64 rounding."""
    native, python = compile_torch(SPEC), compile_torch(SPEC)
    python_scans(python)
    assert uses_c_steps(native, torch.float64)
    inputs, lengths = batch(native, 4, 9)
    out_c, grads_c = run_both(native, inputs, lengths)
    out_py, grads_py = run_both(python, inputs, lengths)
    assert_close(out_c, out_py, 1e-12)
    assert_close(grads_c, grads_py, 1e-12)


@needs_cc
def test_float32_at_32_rows_uses_packed_onednn_weights_and_agrees() -> None:
    """From 16 rows in float32 the step products go through oneDNN with the recurrent
    weights packed once per scan: the same numbers, within float32 rounding, as the
    Python scan and as the NumPy backend."""
    native, python = compile_torch(SPEC, "float32"), compile_torch(SPEC, "float32")
    python_scans(python)
    numpy_model = rnnc.compile(native.analysis, backend="numpy", dtype="float32")
    numpy_model.load_params(native.params())
    if torch.backends.mkldnn.is_available():
        with torch.no_grad():
            packed = native.namespace["recurrent_weight"](torch.zeros(20, 80), torch.zeros(32, 20))
        assert packed.layout != torch.strided
    inputs, lengths = batch(native, 32, 12)
    out_c, grads_c = run_both(native, inputs, lengths)
    for other in (python, numpy_model):
        out, grads = run_both(other, inputs, lengths)
        assert_close(out_c, out, 1e-4)
        assert_close(grads_c, grads, 1e-4)


@needs_cc
def test_a_forward_without_gradients_keeps_no_tape_and_gives_the_same_outputs() -> None:
    model = compile_torch(SPEC)
    namespace = model.namespace
    taped: list[bool] = []
    for fn in namespace["NATIVE_CELLS"]:  # depth 0 and depth 1 (another input size)

        def spy(*args: Any, scan: Any = namespace[f"{fn}_native"]) -> Any:
            taped.append(args[-1])
            return scan(*args)

        namespace[f"{fn}_native"] = spy
    inputs, lengths = batch(model, 3, 8)
    tensors = {"x": torch.as_tensor(inputs["x"])}
    lengths_t = torch.as_tensor(lengths)
    with torch.no_grad():
        untaped = model.module(tensors, lengths=lengths_t)
    assert taped and not any(taped)  # two slots in turn, nothing saved
    taped.clear()
    with_tape = model.module(tensors, lengths=lengths_t)
    assert taped and all(taped)
    for name, value in with_tape.items():
        torch.testing.assert_close(untaped[name], value.detach(), rtol=1e-13, atol=1e-15)


def test_without_a_c_compiler_cells_run_in_python(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reference = compile_torch(SPEC)
    inputs, lengths = batch(reference, 3, 6)
    expected = reference.run(inputs, lengths=lengths)
    monkeypatch.setenv("RNNC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    model = compile_torch(SPEC)
    with pytest.warns(UserWarning, match="cells run in Python"):
        outputs = model.run(inputs, lengths=lengths)
    assert not uses_c_steps(model, torch.float64)
    assert_close(outputs, expected, 1e-12)
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-made left behind


def test_rnnc_native_0_turns_the_c_steps_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNC_NATIVE", "0")
    model = compile_torch(SPEC)
    assert not uses_c_steps(model, torch.float64)


@needs_cc
def test_a_machine_compiles_a_model_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RNNC_CACHE", str(tmp_path))
    first = compile_torch(SPEC)
    assert uses_c_steps(first, torch.float64)
    (library,) = tmp_path.glob("cells-*.so")
    built = library.stat().st_mtime_ns
    second = compile_torch(SPEC)  # a new module, the same cells
    assert uses_c_steps(second, torch.float64)
    assert list(tmp_path.glob("cells-*.so")) == [library]
    assert library.stat().st_mtime_ns == built


@needs_cc
def test_the_c_source_holds_no_text_from_the_spec() -> None:
    """Values, states and parameters are named by position in the C source; a cell's
    own names (and anything else from the spec) never reach it."""
    text = """
rnnc: 1
name: zoo
cells:
  quokka:
    state: [wombat, numbat]
    equations:
      platypus: sigmoid(W_echidna @ [x, wombat] + b_kiwi + p_dingo * numbat)
      numbat: platypus * numbat + (1 - platypus) * tanh(W_emu @ [x, wombat])
      wombat: softsign(numbat) * hard_sigmoid(numbat) + relu(numbat) - 0.25 * wombat
    output: wombat
inputs:
  x: {size: 3}
layers:
  r: {cell: quokka, hidden: 4, input: x, direction: bidirectional}
outputs:
  y: {from: r}
"""
    model = compile_torch(text)
    source = model.namespace["NATIVE_SOURCE"]
    for name in (
        "zoo",
        "quokka",
        "wombat",
        "numbat",
        "platypus",
        "echidna",
        "kiwi",
        "dingo",
        "emu",
    ):
        assert name not in source
    assert uses_c_steps(model, torch.float64)
    rows = verify(model.analysis, ("numpy", "torch"), dtype="float64")
    assert rows and all(r.ok for r in rows)
    inputs, lengths = random_inputs(model.analysis, np.random.default_rng(1))
    assert np.isfinite(model.run(inputs, lengths=lengths)["y"]).all()


STAGES = """
rnnc: 1
name: stages
cells:
  odd:
    state: [c, h, r]  # r: a state nothing else reads
    equations:
      c: h
      g: c + b0 - b1
      u: W2 @ [x, h, g, g * g]
      h: 1 - hard_sigmoid(u) * tanh(W4 @ [x, u])
      r: 1 * (W3 @ c)
  copies:
    state: [h, c, s]
    equations:
      s: b0 * ((1 - W1 @ [x, x]))
      c: b3
      h: W4 @ [s, s]
    output: c
  chain:
    state: [m, h]
    equations:
      h: h
      g: W0 @ [h, h, x]
      m: W1 @ [m, g, m]
  late:
    state: [h, m, s]
    equations:
      m: (1 - h)
      s: s
      h: 2 * (b1 - W2 @ m)
    output: s
  leafy:
    state: [s, m, h]
    equations:
      s: -(W0 @ s) * b1
      a: W2 @ x
      h: W3 @ [s, s, m]
      r: h
      m: -(W4 @ [a, r])
  twins:
    state: [h]
    equations:
      r: sigmoid(W_r @ [x, h])
      a: r * h
      h: tanh(U @ (r * h)) + sigmoid(U @ ((1 - r) * h)) + tanh(V @ x) + U @ a + relu(U @ a)
inputs:
  x: {size: 4}
layers:
  l: {cell: odd, hidden: 5, input: x, direction: bidirectional, depth: 2}
  m: {cell: copies, hidden: 5, input: x, direction: bidirectional}
  n: {cell: chain, hidden: 5, input: x, direction: bidirectional}
  o: {cell: late, hidden: 5, input: x, direction: bidirectional}
  p: {cell: leafy, hidden: 5, input: x, direction: bidirectional}
  q: {cell: twins, hidden: 5, input: x, direction: bidirectional}
outputs:
  y: {from: l}
  c: {from: l, state: c}
  z: {from: m}
  h: {from: m, state: h}
  w: {from: n, state: m}
  v: {from: o, state: h}
  u: {from: p, state: m}
  t: {from: q}
"""


@needs_cc
def test_steps_with_products_inside_agree_with_the_numpy_backend() -> None:
    """Found by hypothesis: two products whose outputs are added (so they share one
    output gradient), a state nothing else reads (a value nothing reads at all is refused
    by the front end now), a state that copies another, a product
    whose output is a state (its gradient is the state's incoming one), the gradient
    of a product's operand that is another product's output gradient and a result
    (of x's projection), a bias whose gradient is summed after the product, a
    product of x's projection inside the step, one block times several operands and
    one operand twice (found by review); and a product of a product (three stages). Both directions,
    ragged."""
    model = compile_torch(STAGES)
    assert uses_c_steps(model, torch.float64)
    stages = {fn: sum(name.startswith("forward") for name in functions)
              for fn, functions in model.namespace["NATIVE_CELLS"].items()}  # fmt: skip
    assert set(stages.values()) == {2, 3}
    rows = verify(model.analysis, ("numpy", "torch"), dtype="float64")
    assert rows and all(r.ok for r in rows), [r for r in rows if not r.ok]


@needs_cc
def test_the_c_source_compiles_without_a_warning(tmp_path: Path) -> None:
    """Every built-in cell's steps and the staged cells above, under -Wall -Wextra."""
    import subprocess

    from rnnc.backends.native import HEADER, emit_c

    parts = [HEADER]
    for name, cell in builtin_cells().items():
        step = lower_cell(cell, 6, 5)
        found = plan(step)
        assert found is not None
        parts.append(emit_c(step, found, f"cell_{name}"))
    staged = compile_torch(STAGES).namespace["NATIVE_SOURCE"]
    parts.append(staged[len(HEADER) :])
    source = tmp_path / "cells.c"
    source.write_text("\n\n".join(parts))
    flags = ["-O2", "-fopenmp-simd", "-Wall", "-Wextra", "-Werror", "-c", "-o", "cells.o"]
    done = subprocess.run(
        [str(c_compiler()), *flags, str(source)], cwd=tmp_path, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[:2000]


@needs_cc
def test_a_cached_library_others_may_write_is_not_loaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RNNC_CACHE", str(tmp_path))
    assert uses_c_steps(compile_torch(SPEC), torch.float64)
    (library,) = tmp_path.glob("cells-*.so")
    library.chmod(0o666)
    with pytest.warns(UserWarning, match="not this user's alone"):
        assert not uses_c_steps(compile_torch(SPEC), torch.float64)


@needs_cc
def test_a_damaged_cached_library_is_built_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """In a new process (this one keeps the library it loaded mapped, by name)."""
    import subprocess
    import sys

    monkeypatch.setenv("RNNC_CACHE", str(tmp_path))
    assert uses_c_steps(compile_torch(SPEC), torch.float64)
    (library,) = tmp_path.glob("cells-*.so")
    damaged = tmp_path / "damaged"
    damaged.write_bytes(b"not a library")
    damaged.replace(library)  # a new file: the mapped one stays as it was
    program = (
        "import numpy as np, rnnc, torch\n"
        "from tests.helpers import c_compiler, python_scans, spec_text\n"
        "from tests.test_native import SPEC, batch, uses_c_steps\n"
        "model = rnnc.compile(rnnc.parse_spec(spec_text(SPEC)), backend='torch', dtype='float64')\n"
        "assert uses_c_steps(model, torch.float64)\n"
        "inputs, lengths = batch(model, 2, 3)\n"
        "assert np.isfinite(model.run(inputs, lengths=lengths)['y']).all()\n"
    )
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert library.read_bytes()[:4] == b"\x7fELF"


@needs_cc
def test_cc_may_carry_its_own_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RNNC_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", f"{c_compiler()} -w")
    assert uses_c_steps(compile_torch(SPEC), torch.float64)


@needs_cc
def test_float32_at_32_rows_with_a_product_inside_the_step_agrees() -> None:
    """gru_reset_before's in-step product through packed oneDNN weights (float32, 32
    rows) against the NumPy backend."""
    text = SPEC.replace("lstm_peephole", "gru_reset_before").replace(
        "  c: {from: r, state: c}\n", ""
    )
    native = compile_torch(text, "float32")
    assert uses_c_steps(native, torch.float32)
    numpy_model = rnnc.compile(native.analysis, backend="numpy", dtype="float32")
    numpy_model.load_params(native.params())
    inputs, lengths = batch(native, 32, 12)
    out_c, grads_c = run_both(native, inputs, lengths)
    out, grads = run_both(numpy_model, inputs, lengths)
    assert_close(out_c, out, 1e-4)
    assert_close(grads_c, grads, 1e-4)
