"""rnnc train and rnnc gradflow: tasks fit the specs they say, both backends learn,
weights move between backends, and gradient flow shows what courses teach."""

from __future__ import annotations

import numpy as np
import pytest

import rnnc
from rnnc.runtime.interop import to_torch
from rnnc.tools.gradflow import csv_text, gradient_flow, slope
from rnnc.tools.train import BOS, EOS, FIRST, PAD, Adam, Task, loss_and_cotangent, train
from rnnc.tools.verify import random_inputs
from tests.conftest import ROOT
from tests.helpers import spec_text

torch = pytest.importorskip("torch")

SEQ2SEQ = ROOT / "specs" / "seq2seq_attention.yaml"
BENCH = ROOT / "bench"


def analysis(path):  # type: ignore[no-untyped-def]
    return rnnc.analyze(rnnc.load_spec(path))


def test_reverse_batches_are_what_the_task_says() -> None:
    task = Task("reverse", vocab=10, min_len=3, max_len=6)
    binding = task.bind(analysis(SEQ2SEQ))
    batch = task.batch(binding, np.random.default_rng(0), 8)
    for b in range(8):
        n = int(batch.lengths["src"][b])
        src = batch.inputs["src"][b, :n]
        assert ((src >= FIRST) & (src < FIRST + 10)).all()
        assert (batch.inputs["src"][b, n:] == PAD).all()
        assert list(batch.targets[b, :n]) == list(src[::-1])
        assert batch.targets[b, n] == EOS
        assert batch.inputs["tgt"][b, 0] == BOS  # the decoder reads BOS, then the target
        assert list(batch.inputs["tgt"][b, 1 : n + 1]) == list(batch.targets[b, :n])
        assert batch.lengths["tgt"][b] == n + 1


def test_a_task_that_does_not_fit_says_which_do(cli) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(rnnc.RnncError, match="tasks that fit: copy, reverse, sort"):
        Task("parity").bind(analysis(SEQ2SEQ))
    result = cli("train", str(BENCH / "parity_gru.yaml"), "--task", "reverse")
    assert result.code == 1
    assert "tasks that fit: parity" in result.err and "Traceback" not in result.err
    assert cli("train", str(SEQ2SEQ), "--task", "revers").code == 2


def test_cross_entropy_cotangent_is_its_gradient() -> None:
    """The NumPy trainer's loss gradient against central differences."""
    task = Task("echo", vocab=10, min_len=3, max_len=5)
    binding = task.bind(analysis(BENCH / "echo_lstm.yaml"))
    batch = task.batch(binding, np.random.default_rng(1), 4)
    rng = np.random.default_rng(2)
    out = rng.standard_normal((*batch.targets.shape, 13))
    _, grad = loss_and_cotangent(binding, batch, out)
    direction = rng.standard_normal(out.shape)
    eps = 1e-6
    plus, _ = loss_and_cotangent(binding, batch, out + eps * direction)
    minus, _ = loss_and_cotangent(binding, batch, out - eps * direction)
    assert abs((plus - minus) / (2 * eps) - (grad * direction).sum()) < 1e-7


def test_adam_matches_torch_adam() -> None:
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    tensors = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    ours = Adam(lr=0.01, clip=1e9)
    theirs = torch.optim.Adam(tensors.values(), lr=0.01)
    for _ in range(5):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        ours.step(params, grads)
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        theirs.step()
    for k in params:
        np.testing.assert_allclose(params[k], tensors[k].detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_both_backends_learn_to_reverse(backend: str) -> None:
    """A short run of the attention seq2seq on short sequences: well above chance."""
    task = Task("reverse", vocab=5, min_len=2, max_len=4)
    result = train(analysis(SEQ2SEQ), task, backend=backend, steps=150, batch=32, eval_size=200)
    assert result.accuracy > 0.5  # chance: about 0.2% (5^-3.. on average)
    assert result.losses[-1] < result.losses[0] / 3


@pytest.mark.parametrize(
    ("spec", "name", "steps", "lr", "options"),
    [
        ("sum_lstm", "sum", 1000, 5e-3, {"min_len": 2, "max_len": 6}),
        ("echo_lstm", "echo", 300, 1e-2, {}),
        ("parity_gru", "parity", 400, 1e-2, {"min_len": 2, "max_len": 4}),
    ],
)
def test_the_other_tasks_learn(spec: str, name: str, steps: int, lr: float, options: dict) -> None:  # type: ignore[type-arg]
    task = Task(name, **options)
    path = BENCH / f"{spec}.yaml"
    result = train(analysis(path), task, backend="torch", steps=steps, lr=lr, eval_size=300)
    assert result.accuracy > 0.8


def test_weights_saved_from_one_backend_predict_the_same_on_the_other(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    weights = tmp_path / "w.safetensors"
    result = cli(
        "train", str(SEQ2SEQ), "--task", "copy", "--steps", "20", "--quiet", "-o", str(weights)
    )
    assert result.code == 0 and "held-out accuracy" in result.out
    params = rnnc.load_weights(weights)
    task = Task("copy")
    a = analysis(SEQ2SEQ)
    batch = task.batch(task.bind(a), np.random.default_rng(5), 16)
    outputs = []
    for backend in ("torch", "numpy"):
        model = rnnc.compile(a, backend=backend, dtype="float32")
        model.load_params(params)
        run = model.run(batch.inputs, lengths=batch.lengths, mode="generate", steps=13)
        outputs.append(run["logits"].argmax(-1))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_plain_lines_when_not_a_terminal(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("train", str(BENCH / "echo_lstm.yaml"), "--task", "echo", "--steps", "20")
    assert result.code == 0
    assert "step 20/20" in result.err and "\r" not in result.err
    quiet = cli(
        "train", str(BENCH / "echo_lstm.yaml"), "--task", "echo", "--steps", "20", "--quiet"
    )
    assert quiet.code == 0 and "step" not in quiet.err and "held-out accuracy" in quiet.out


# --- gradient flow ---------------------------------------------------------------------------


def test_gradient_flow_shows_the_vanishing_gradient_and_the_lstm_keeping_it() -> None:
    """With the default initialisation, a loss at the last of 100 steps reaches the
    first step of a simple rnn with a gradient orders of magnitude smaller; an lstm
    with a forget-gate bias of 1 loses it far more slowly (seeds fixed)."""
    a = analysis(BENCH / "gradflow.yaml")
    for seed in (0, 1):
        flows = gradient_flow(a, steps=100, seed=seed)
        assert flows["rnn"][0] < 1e-10 * flows["rnn"][-1]
        assert slope(flows["lstm"]) > 2 * slope(flows["rnn"])  # both negative: shallower
        assert slope(flows["rnn"]) < slope(flows["gru"]) < slope(flows["lstm"]) < 0


def test_gradient_flow_is_the_gradient() -> None:
    """Against torch.nn.GRUCell with the same weights, unrolled by hand: autograd's
    d sum(h_T) / d h_t for every t (an oracle that shares nothing with rnnc's BPTT)."""
    text = """
    rnnc: 1
    name: one
    inputs:
      x: {size: 3}
    layers:
      r: {cell: gru, hidden: 4, input: x}
    outputs:
      h: {from: r, state: h}
    """
    a = rnnc.analyze(rnnc.parse_spec(spec_text(text)))
    T, B, seed = 7, 2, 3
    flows = gradient_flow(a, steps=T, batch=B, seed=seed)
    state = to_torch(rnnc.init_params(a, seed=seed), "r", "gru")
    cell = torch.nn.GRUCell(3, 4).double()
    cell.load_state_dict({k[: -len("_l0")]: torch.tensor(v) for k, v in state.items()})
    inputs, _ = random_inputs(a, np.random.default_rng(seed), B, T, False)
    x = torch.tensor(inputs["x"])
    h = torch.zeros(B, 4, dtype=torch.float64)
    states = []
    for t in range(T):
        h = cell(x[:, t], h)
        h.retain_grad()
        states.append(h)
    h.sum().backward()
    expected = [float(s.grad.norm(dim=1).mean()) for s in states]
    np.testing.assert_allclose(flows["r"], expected, rtol=1e-10)
    assert len(csv_text(flows).splitlines()) == 1 + T


@pytest.mark.parametrize("suffix", ["png", "csv"])
def test_gradflow_cli_writes_the_picture_and_the_numbers(cli, tmp_path, suffix: str) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / f"flow.{suffix}"
    result = cli("gradflow", str(BENCH / "gradflow.yaml"), "-o", str(target), "--steps", "30")
    assert result.code == 0 and "decades/step" in result.out
    assert (tmp_path / "flow.csv").read_text().startswith("layer,step,steps_back,grad_norm")
    if suffix == "png":
        assert target.read_bytes().startswith(b"\x89PNG")
    assert cli("gradflow", str(BENCH / "gradflow.yaml"), "-o", str(tmp_path / "x.gif")).code == 2
