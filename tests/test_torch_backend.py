"""The PyTorch backend: the same numbers as the NumPy backend on every spec, its own
backward for cells outside PyTorch's kernels held to gradcheck, and the nn.Module a
PyTorch user gets (names, state dict, standalone file, torch.compile, DDP)."""

from __future__ import annotations

import ast
import importlib.util
import io
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rnnc
from rnnc.tools.verify import TOLERANCE, random_inputs, verify
from tests.conftest import GALLERY
from tests.helpers import c_compiler, python_scans, spec_text
from tests.test_properties import BASE_EXAMPLES, Generated, _settings, any_valid_specs, dump

torch = pytest.importorskip("torch")  # the torch extra is installed by make test


def assert_agree(rows) -> None:  # type: ignore[no-untyped-def]
    assert rows, "nothing was compared"
    bad = [(r.mode, r.what, r.name, r.rel_diff) for r in rows if not r.ok]
    assert not bad


@pytest.mark.parametrize("path", GALLERY, ids=lambda p: p.stem)
def test_gallery_backends_agree_in_every_mode(path: Path) -> None:
    analysis = rnnc.analyze(rnnc.load_spec(path))
    rows = verify(analysis, ("numpy", "torch"), dtype="float64")
    assert_agree(rows)
    # Every parameter's gradient was compared, in every mode the spec has.
    grads = {r.name for r in rows if r.what == "grad"}
    assert set(rnnc.init_params(analysis)) <= grads
    has_feedback = any(getattr(layer, "feedback", None) for layer in analysis.spec.layers.values())
    assert {r.mode for r in rows} == ({"train", "generate"} if has_feedback else {"train"})


LAYER_SPEC = """
rnnc: 1
name: variants
inputs:
  x: {size: 3}
  s: {size: 2, sequence: false}
layers:
  r: {cell: CELL, hidden: 4, input: x, depth: DEPTH, direction: DIRECTION, merge: MERGE,
      residual: RESIDUAL, init: {from: s, bridge: dense}}
outputs:
  y: {from: r}
  last: {from: r, steps: last}
  h: {from: r, state: h}
"""
CELLS = list(rnnc.builtin_cells())
VARIANTS = [
    (cell, direction, merge, depth)
    for cell, (direction, merge), depth in itertools.product(
        CELLS,
        [("forward", "concat"), ("backward", "concat"), ("bidirectional", "concat"),
         ("bidirectional", "sum"), ("bidirectional", "mul")],
        [1, 2],
    )
]  # fmt: skip


@pytest.mark.parametrize(("cell", "direction", "merge", "depth"), VARIANTS)
def test_every_builtin_cell_agrees_across_backends(
    cell: str, direction: str, merge: str, depth: int
) -> None:
    """Fused kernels (rnn, rnn_relu, lstm, gru) and generated scans (the rest), with a
    backward-only layer, merges, depth, residual and a bridged first state."""
    residual = "true" if depth > 1 and merge != "concat" else "false"
    text = LAYER_SPEC
    for key, value in [("CELL", cell), ("DEPTH", str(depth)), ("DIRECTION", direction),
                       ("MERGE", merge), ("RESIDUAL", residual)]:  # fmt: skip
        text = text.replace(key, value)
    analysis = rnnc.analyze(rnnc.parse_spec(spec_text(text)))
    assert_agree(verify(analysis, ("numpy", "torch"), dtype="float64", seed=depth))


def test_float32_agrees_within_its_tolerance() -> None:
    analysis = rnnc.analyze(rnnc.load_spec(GALLERY[0].parent / "seq2seq_attention.yaml"))
    rows = verify(analysis, ("numpy", "torch"), dtype="float32")
    assert all(r.rel_diff <= TOLERANCE["float32"] for r in rows)
    assert max(r.rel_diff for r in rows) > 1e-9  # it really ran in float32


USER_CELL = """
rnnc: 1
name: mine
cells:
  mgu:
    state: [h]
    equations:
      f: sigmoid(W_f @ [x, h] + b_f)
      n: softsign(W_n @ [x, f * h] + b_n)
      h: (1 - f) * h + f * n + p * x
inputs:
  x: {size: 3}
layers:
  r: {cell: mgu, hidden: 3, input: x}
outputs:
  y: {from: r}
"""


GRADCHECK = [
    ("user", "python"),  # reads x outside its product: no C steps
    ("mgu", "python"),  # the same without that: a product inside the step
    ("mgu", "native"),
    ("gru_reset_before", "python"),  # a product inside the step
    ("gru_reset_before", "native"),
    ("lstm_peephole", "python"),
    ("lstm_peephole", "native"),
    ("lstm_cifg", "python"),
    ("lstm_cifg", "native"),
]


@pytest.mark.parametrize(("source", "scan"), GRADCHECK)
def test_generated_backward_passes_gradcheck(source: str, scan: str) -> None:
    """The autograd.Function of a cell PyTorch has no kernel for runs rnnc's own BPTT
    (in Python, or through the cell's C steps); gradcheck holds it to finite
    differences (float64), with a ragged mask, both ways."""
    if source in ("user", "mgu"):
        text = USER_CELL if source == "user" else USER_CELL.replace(" + p * x", "")
    else:
        text = USER_CELL.replace("cell: mgu", f"cell: {source}")
    model = rnnc.compile(rnnc.parse_spec(spec_text(text)), backend="torch", dtype="float64")
    has_native = "NATIVE_CELLS" in model.namespace
    assert has_native == (source != "user")
    if scan == "python" and has_native:
        python_scans(model)
    if scan == "native":
        if c_compiler() is None:
            pytest.skip("no C compiler on this machine")
        (fn,) = model.namespace["NATIVE_CELLS"]
        assert model.namespace["native_kernels"](fn, torch.zeros(1, dtype=torch.float64))
    function = next(v for k, v in model.namespace.items() if k.endswith("_function"))
    params_of = next(v for k, v in model.namespace.items() if k.endswith("_params"))
    torch.manual_seed(0)
    params = {model.module.canonical[k]: p for k, p in model.module.named_parameters()}
    # Every entry (the cell's own parameters and the stacked W_x, b_x, R_s) is an input.
    P = {
        k: v.detach().clone().requires_grad_(True)
        for k, v in params_of(params, "r.fwd.l0.").items()
    }
    T, B = 4, 3
    xs = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(T)[:, None] < torch.tensor([4, 2, 3])[None])[:, :, None]
    n_states = 2 if "lstm" in source else 1
    h0 = [torch.randn(B, 3, dtype=torch.float64, requires_grad=True) for _ in range(n_states)]
    for reverse in (False, True):

        def run(xs, *tensors, reverse=reverse):  # type: ignore[no-untyped-def]
            return function.apply(xs, mask, reverse, True, tuple(P), *tensors)

        assert torch.autograd.gradcheck(run, (xs, *P.values(), *h0), eps=1e-6, atol=1e-8)


def test_state_dict_keys_are_the_canonical_names_and_round_trip() -> None:
    spec = rnnc.load_spec(GALLERY[0].parent / "seq2seq_attention.yaml")
    model = rnnc.compile(spec, backend="torch", dtype="float64")
    state = model.module.state_dict()
    assert list(state) == list(rnnc.init_params(spec))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = rnnc.compile(spec, backend="torch", dtype="float64")
    other.module.reset_parameters()
    other.module.load_state_dict(torch.load(buffer, weights_only=True))
    for name, value in model.params().items():
        np.testing.assert_array_equal(other.params()[name], value)


def test_a_layer_may_have_a_name_nn_module_uses() -> None:
    text = USER_CELL.replace("r: {cell: mgu", "training: {cell: mgu").replace(
        "from: r", "from: training"
    )
    model = rnnc.compile(rnnc.parse_spec(spec_text(text)), backend="torch", dtype="float64")
    # nn.Module keeps an attribute 'training'; the layer's key gets a trailing '_'.
    assert "training_.fwd.l0.W_f" in model.module.state_dict()
    assert model.module.canonical["training_.fwd.l0.W_f"] == "training.fwd.l0.W_f"
    assert model.module.training is False  # the attribute still means what torch means
    assert set(model.params()) == set(rnnc.init_params(model.analysis))
    assert_agree(verify(rnnc.analyze(rnnc.parse_spec(spec_text(text)))))


def _imports(source: str, top_level: bool = False) -> set[str]:
    modules = set()
    tree = ast.parse(source)
    for node in tree.body if top_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    return modules


def test_compiled_file_is_a_standalone_module(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = GALLERY[0].parent / "seq2seq_luong.yaml"
    target = tmp_path / "luong_model.py"
    assert cli("compile", str(path), "--backend", "torch", "-o", str(target)).code == 0
    source = target.read_text()
    # importing it needs only torch; its generate method alone uses rnnc's strategies
    assert _imports(source, top_level=True) - sys.stdlib_module_names == {"torch"}
    assert _imports(source) - sys.stdlib_module_names == {"torch", "rnnc"}
    assert source.count("from rnnc") == 1 and "from rnnc.runtime import decoding" in source
    assert source.startswith(
        f'"""PyTorch model \'seq2seq_luong\', generated by rnnc {rnnc.__version__}'
    )
    loaded = importlib.util.spec_from_file_location("luong_model", target)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    net = module.Model(dtype=torch.float64).eval()
    model = rnnc.compile(rnnc.load_spec(path), backend="torch", dtype="float64")
    net.load_state_dict(model.module.state_dict())
    inputs, lengths = random_inputs(model.analysis, np.random.default_rng(0))
    tensors = {k: torch.as_tensor(v) for k, v in inputs.items()}
    masks = {"tgt": torch.ones(3, 5, dtype=torch.bool)}
    ours = net(tensors, lengths={k: torch.as_tensor(v) for k, v in lengths.items()}, tf_mask=masks)
    expected = model.run(inputs, lengths=lengths, tf_mask={"tgt": np.ones((3, 5), bool)})
    for name, value in expected.items():
        np.testing.assert_allclose(ours[name].detach().numpy(), value, rtol=1e-12, atol=1e-14)
    generated = net(tensors, mode="generate", steps=6)
    expected = model.run(inputs, mode="generate", steps=6)
    for name, value in expected.items():
        assert value.shape[1] == 6
        np.testing.assert_allclose(generated[name].detach().numpy(), value, rtol=1e-12, atol=1e-14)


def test_module_trains_with_dropout_and_its_own_teacher_forcing_draws() -> None:
    model = rnnc.compile(
        rnnc.load_spec(GALLERY[0].parent / "deep_residual_rnn.yaml"), backend="torch"
    )
    net = model.module.train()
    inputs, _ = random_inputs(model.analysis, np.random.default_rng(0))
    tensors = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in inputs.items()}
    torch.manual_seed(0)
    a = net(tensors)
    b = net(tensors)
    name = next(iter(a))
    assert not torch.equal(a[name], b[name])  # different dropout masks
    net.eval()
    assert torch.equal(net(tensors)[name], net(tensors)[name])
    sum(v.sum() for v in a.values()).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_torch_compile_gives_the_same_outputs() -> None:
    spec = rnnc.load_spec(GALLERY[0].parent / "peephole_lstm.yaml")
    model = rnnc.compile(spec, backend="torch", dtype="float64")
    inputs, lengths = random_inputs(model.analysis, np.random.default_rng(0))
    tensors = {k: torch.as_tensor(v) for k, v in inputs.items()}
    lengths_t = {k: torch.as_tensor(v) for k, v in lengths.items()}
    compiled = torch.compile(model.module, backend="aot_eager")
    eager = model.module(tensors, lengths=lengths_t)
    fast = compiled(tensors, lengths=lengths_t)
    for name, value in eager.items():
        torch.testing.assert_close(fast[name], value, rtol=1e-12, atol=1e-14)


def test_distributed_data_parallel_averages_the_same_gradients(tmp_path: Path) -> None:
    import torch.distributed as dist

    spec = rnnc.load_spec(GALLERY[0].parent / "bidirectional_lstm.yaml")
    model = rnnc.compile(spec, backend="torch", dtype="float64")
    inputs, lengths = random_inputs(model.analysis, np.random.default_rng(0))
    tensors = {k: torch.as_tensor(v) for k, v in inputs.items()}
    lengths_t = {k: torch.as_tensor(v) for k, v in lengths.items()}
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model.module)
        sum(v.sum() for v in ddp(tensors, lengths=lengths_t).values()).backward()
        via_ddp = {k: p.grad.clone() for k, p in model.module.named_parameters()}
    finally:
        dist.destroy_process_group()
    grads = model.vjp(
        inputs,
        {k: np.ones_like(v) for k, v in model.run(inputs, lengths=lengths).items()},
        lengths=lengths,
    )
    for name, value in via_ddp.items():
        np.testing.assert_allclose(value.numpy(), grads[name], rtol=1e-12, atol=1e-14)


def test_verify_cli_agrees_and_reports(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("verify", str(GALLERY[0].parent / "seq2seq.yaml"), "--mode", "both")
    assert result.code == 0
    assert "numpy, torch agree" in result.out
    assert "generate  grad" in result.out and "encoder.fwd.l0.W_i" in result.out
    assert cli("verify", str(GALLERY[0]), "--backends", "numpy,tensorflow").code == 2
    assert cli("verify", str(GALLERY[0]), "--backends", "numpy").code == 2


def test_verify_fails_and_names_what_differs(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A backend that is wrong by one part in 1e6 in one gradient is caught."""
    import rnnc.tools.verify as verify_module

    real = verify_module.compile

    def skewed(analysis, backend, dtype):  # type: ignore[no-untyped-def]
        model = real(analysis, backend=backend, dtype=dtype)
        if backend == "torch":
            vjp = model.vjp

            def off(*args, **kwargs):  # type: ignore[no-untyped-def]
                grads = vjp(*args, **kwargs)
                grads["hidden.fwd.l0.b"] = grads["hidden.fwd.l0.b"] * (1 + 1e-6)
                return grads

            model.vjp = off
        return model

    monkeypatch.setattr(verify_module, "compile", skewed)
    result = cli("verify", str(GALLERY[0].parent / "elman_rnn.yaml"), "--quiet")
    assert result.code == 1
    assert "DIFFER" in result.out
    assert "train grad hidden.fwd.l0.b" in result.err


# --- generated specs -------------------------------------------------------------------


@pytest.mark.slow
@_settings(max(1, BASE_EXAMPLES // 2))
@given(
    any_valid_specs(),
    st.integers(0, 2**16),
)
def test_generated_specs_agree_across_backends(gen: Generated, seed: int) -> None:
    """Random valid specs (random cells, depths, directions, merges, attention,
    feedback): outputs and gradients agree in float64, ragged, in every mode.

    Without the specs' param_init: constants like W = 1 on a relu layer make the
    activations grow a hundredfold per step, and then rounding, not the backends,
    decides the last digits. (Both backends take param_init from the same
    rnnc.init_params, so nothing backend-specific goes untested.)"""
    spec = {**gen.spec, "layers": {
        name: {k: v for k, v in layer.items() if k != "param_init"}
        for name, layer in gen.spec["layers"].items()
    }}  # fmt: skip
    analysis = rnnc.analyze(rnnc.parse_spec(dump(spec)))
    rows = verify(analysis, ("numpy", "torch"), dtype="float64", seed=seed, batch=2, steps=4)
    bad = [(r.mode, r.what, r.name, r.rel_diff) for r in rows if not r.ok]
    assert not bad, (bad, dump(spec))


def test_without_pytorch_verify_says_how_to_get_a_second_backend(cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from rnnc.backends.torch_backend import TorchBackend

    monkeypatch.setattr(TorchBackend, "ready", staticmethod(lambda: False))
    result = cli("verify", str(GALLERY[0]))
    assert result.code == 1
    assert "pip install 'rnnc[torch]'" in result.err and "Traceback" not in result.err


def test_a_model_without_parameters_runs_in_its_dtype() -> None:
    """Found by review: a cell with no parameters and no dense layer made forward()
    fail looking for a parameter to take the dtype and device from."""
    text = """
rnnc: 1
name: noparams
cells:
  decay:
    state: [h]
    equations:
      h: sigmoid(h * 0.5)
inputs:
  x: {size: 3}
layers:
  l: {cell: decay, hidden: 4, input: x}
outputs:
  y: {from: l}
"""
    analysis = rnnc.analyze(rnnc.parse_spec(spec_text(text)))
    assert_agree(verify(analysis, ("numpy", "torch"), dtype="float64"))
    module = rnnc.compile(analysis, backend="torch", dtype="float32").module
    assert not list(module.parameters()) and not module.state_dict()
    x = {"x": torch.zeros(2, 5, 3)}
    assert module(x)["y"].dtype == torch.float32
    assert module.double()(x)["y"].dtype == torch.float64
