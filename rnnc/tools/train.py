"""``rnnc train``: teach a spec a synthetic sequence task, on either backend.

Tasks are generated on the fly from a seed; each says which specs it fits:

- ``copy``, ``reverse``, ``sort``: token seq2seq (an encoder input and a decoder whose
  prediction is fed back); variable lengths; scored by exact match of the greedy,
  free-running decoding;
- ``sum``: many-to-one regression, the sum of a sequence of numbers in [0, 1];
- ``parity``: many-to-one classification, the parity of a bit sequence (long-range
  memory);
- ``echo``: a many-to-many tagger, the token from ``k`` steps earlier at every step.

Token conventions for the seq2seq tasks: 0 pads, 1 begins (BOS), 2 ends (EOS), and the
task's symbols are 3, 4, ... The decoder input is BOS followed by the target; its
output is the target followed by EOS.

Optimiser: Adam with the gradient's global norm clipped (:class:`Adam`, below), the same
on both backends: each backend gives a loss's value and gradients through the
CompiledModel's ``value_and_grad`` (the NumPy backend with its own generated BPTT, no
torch involved; the PyTorch backend with autograd), and Adam updates the parameters.
rnnc itself never imports torch.

When the decoder attends, the trained model also decodes the longest held-out example
with its attention weights as an output (:func:`held_out_alignment`; added to a copy of
the spec when the spec has no such output), and :func:`plot_alignment` draws them as
Bahdanau et al. (2015, Fig. 3) do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnc.errors import RnncError
from rnnc.front.checks import Analysis, analyze
from rnnc.front.graph import output_node
from rnnc.front.spec import Output, Spec, TokenInput
from rnnc.ir.program import Program
from rnnc.runtime.compiler import compile as compile_spec
from rnnc.runtime.decoding import log_softmax
from rnnc.runtime.files import write_atomic
from rnnc.runtime.weights import init_params
from rnnc.tools.gradflow import png_bytes, pyplot

PAD, BOS, EOS, FIRST = 0, 1, 2, 3
SEQ2SEQ = ("copy", "reverse", "sort")
TASKS = (*SEQ2SEQ, "sum", "parity", "echo")


# --- tasks -------------------------------------------------------------------------------


@dataclass
class Binding:
    """Which inputs and output of a spec a task uses."""

    task: str
    source: str  # the input the sequence goes into
    target: str | None  # seq2seq: the decoder's ground-truth input
    output: str  # the output the loss is on
    kind: str  # "seq2seq" | "last" (one value per example) | "tag" (every step)
    tokens: bool  # the source is token ids (else real numbers of size 1)
    decoder: str | None = None  # seq2seq: the recurrent layer that decodes


@dataclass
class Batch:
    inputs: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    targets: np.ndarray  # token ids (B, T) / (B,), or reals (B,)
    mask: np.ndarray | None  # (B, T) where the targets count


@dataclass
class Task:
    name: str
    vocab: int = 10  # symbols of the seq2seq and echo tasks
    min_len: int = 3
    max_len: int = 12
    delay: int = 2  # echo: how many steps back

    def bind(self, analysis: Analysis) -> Binding:
        """The spec's inputs and output this task uses, or an error naming the tasks
        that fit the spec."""
        found = _bind(self, analysis)
        if isinstance(found, Binding):
            return found
        fitting = [t for t in TASKS if isinstance(_bind(Task(t, self.vocab), analysis), Binding)]
        what = f"tasks that fit: {', '.join(fitting)}" if fitting else "no task fits it"
        raise RnncError(f"task {self.name!r} does not fit {analysis.spec.name}: {found}; {what}")

    def batch(self, binding: Binding, rng: np.random.Generator, size: int) -> Batch:
        lengths = rng.integers(self.min_len, self.max_len + 1, size)
        T = int(lengths.max())
        steps = np.arange(T)[None, :] < lengths[:, None]
        if binding.kind == "seq2seq":
            symbols = rng.integers(FIRST, FIRST + self.vocab, (size, T))
            src = np.where(steps, symbols, PAD)
            if self.name == "copy":
                out = src.copy()
            elif self.name == "reverse":
                out = np.array(
                    [
                        np.concatenate([s[:n][::-1], s[n:]])
                        for s, n in zip(src, lengths, strict=True)
                    ]
                )
            else:
                out = np.array(
                    [
                        np.concatenate([np.sort(s[:n]), s[n:]])
                        for s, n in zip(src, lengths, strict=True)
                    ]
                )
            targets = np.full((size, T + 1), PAD)
            targets[:, :T] = out
            targets[np.arange(size), lengths] = EOS
            tgt = np.concatenate([np.full((size, 1), BOS), targets[:, :T]], axis=1)
            tgt = np.where(np.arange(T + 1)[None, :] <= lengths[:, None], tgt, PAD)
            mask = np.arange(T + 1)[None, :] <= lengths[:, None]
            assert binding.target is not None
            return Batch(
                {binding.source: src, binding.target: tgt},
                {binding.source: lengths, binding.target: lengths + 1},
                targets,
                mask,
            )
        if self.name == "echo":
            symbols = rng.integers(FIRST, FIRST + self.vocab, (size, T))
            src = np.where(steps, symbols, PAD)
            targets = np.full((size, T), PAD)
            targets[:, self.delay :] = src[:, : T - self.delay]
            return Batch({binding.source: src}, {binding.source: lengths}, targets, steps)
        bits = rng.integers(0, 2, (size, T))
        values = rng.random((size, T)) if self.name == "sum" else bits.astype(float)
        values = np.where(steps, values, 0.0)
        if self.name == "sum":
            targets = values.sum(axis=1)
        else:
            targets = (values.sum(axis=1).astype(int) % 2).astype(np.int64)
        source = np.where(steps, bits, 0) if binding.tokens else values[:, :, None]
        if binding.tokens and self.name == "sum":
            source = np.where(steps, rng.integers(0, 10, (size, T)), 0)
            targets = source.sum(axis=1) / 10.0
        return Batch({binding.source: source}, {binding.source: lengths}, targets, None)


def _bind(task: Task, analysis: Analysis) -> Binding | str:
    spec, g = analysis.spec, analysis.graph
    program = Program(analysis)
    outputs = spec.outputs
    sequences = {n: i for n, i in spec.inputs.items() if i.sequence}
    if task.name in SEQ2SEQ:
        for name, layer in spec.recurrent_layers().items():
            fed = program.fed(name) if layer.feedback is not None and analysis.ok else None
            if fed is None or not fed.tokens:
                continue
            target = spec.inputs[fed.ids]
            sources = [
                n
                for n, i in sequences.items()
                if n != fed.ids
                and isinstance(i, TokenInput)
                and g.nodes[n]["axis"] != g.nodes[fed.ids]["axis"]
            ]
            logits = [
                o
                for o, out in outputs.items()
                if out.from_ == fed.prediction and out.steps != "last" and out.state is None
            ]
            if not sources or not logits:
                continue
            need = FIRST + task.vocab
            if target.vocab < need or spec.inputs[sources[0]].vocab < need:  # type: ignore[union-attr]
                return f"its vocabularies hold fewer than the {need} tokens the task needs (3 special + {task.vocab})"
            return Binding(task.name, sources[0], fed.ids, logits[0], "seq2seq", True, name)
        return "it needs a token encoder input and a decoder whose token prediction is fed back"
    if any(layer.feedback is not None for layer in spec.recurrent_layers().values()):
        return "its decoder feeds back predictions; this task has no target sequence to decode"
    if len(sequences) != 1:
        return "it needs exactly one sequence input"
    ((source, inp),) = sequences.items()
    tokens = isinstance(inp, TokenInput)
    if not tokens and inp.size != 1:  # type: ignore[union-attr]
        return f"its input {source!r} is a vector of size {inp.size}; the task feeds one number per step"  # type: ignore[union-attr]
    for name, out in outputs.items():
        axis = g.nodes[out.from_].get("axis")
        width = g.nodes[output_node(name)].get("width")
        per_example = out.select is not None or axis is None
        if task.name == "sum" and per_example and width == 1:
            return Binding(task.name, source, None, name, "last", tokens)
        if task.name == "parity" and per_example and width == 2 and (not tokens or inp.vocab >= 2):  # type: ignore[union-attr]
            return Binding(task.name, source, None, name, "last", tokens)
        if task.name == "echo" and tokens and not per_example and width == inp.vocab:  # type: ignore[union-attr]
            if inp.vocab < FIRST + task.vocab:  # type: ignore[union-attr]
                return f"its vocabulary holds fewer than the {FIRST + task.vocab} tokens the task needs"
            return Binding(task.name, source, None, name, "tag", tokens)
    wants = {
        "sum": "an output of width 1 once per example (steps: last or a state)",
        "parity": "an output of width 2 (two logits) once per example",
        "echo": "a token input and an output at every step as wide as its vocabulary",
    }[task.name]
    return f"it needs {wants}"


# --- losses and scores -------------------------------------------------------------------------


def loss_and_cotangent(binding: Binding, batch: Batch, out: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean loss and its gradient with respect to the output (cross-entropy for
    tokens and classes, half squared error for the sum)."""
    if binding.task == "sum":
        pred = out.reshape(len(out), -1)[:, 0]
        err = pred - batch.targets
        grad = np.zeros_like(out).reshape(len(out), -1)
        grad[:, 0] = err / len(out)
        return float(0.5 * np.mean(err**2)), grad.reshape(out.shape)
    logp = log_softmax(out)
    targets = batch.targets
    onehot = np.zeros_like(out)
    np.put_along_axis(onehot, targets[..., None], 1.0, axis=-1)
    weight = np.ones(targets.shape) if batch.mask is None else batch.mask.astype(float)
    count = max(weight.sum(), 1.0)
    loss = -float((np.take_along_axis(logp, targets[..., None], -1)[..., 0] * weight).sum() / count)
    grad = (np.exp(logp) - onehot) * weight[..., None] / count
    return loss, grad


def score(binding: Binding, batch: Batch, out: np.ndarray) -> float:
    """Held-out accuracy: exact match of the decoded sequences (seq2seq), every valid
    step right (echo), the right class (parity), or within 0.05 of the sum."""
    if binding.task == "sum":
        return float(np.mean(np.abs(out.reshape(len(out), -1)[:, 0] - batch.targets) < 0.05))
    pred = out.argmax(axis=-1)
    if binding.kind == "last":
        return float(np.mean(pred == batch.targets))
    assert batch.mask is not None
    right = (pred[:, : batch.targets.shape[1]] == batch.targets) | ~batch.mask
    return float(np.mean(right.all(axis=1)))


# --- Adam -----------------------------------------------------------------------------------


@dataclass
class Adam:
    """Adam (Kingma & Ba) on a dict of arrays, updated in place, with the gradient's
    global norm clipped to ``clip`` first."""

    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip: float = 1.0
    t: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)

    def step(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> float:
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        scale = min(1.0, self.clip / (norm + 1e-12))
        self.t += 1
        b1, b2 = self.betas
        for name, p in params.items():
            g = grads[name] * scale
            m = self.m[name] = b1 * self.m.get(name, np.zeros_like(p)) + (1 - b1) * g
            v = self.v[name] = b2 * self.v.get(name, np.zeros_like(p)) + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1**self.t), v / (1 - b2**self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return norm


# --- the loop -------------------------------------------------------------------------------


@dataclass
class Result:
    params: dict[str, np.ndarray]
    accuracy: float
    seconds: float
    losses: list[float]
    examples: list[tuple[list[int], list[int], list[int]]]  # (input, target, prediction)
    alignment: Alignment | None = None  # when the decoder attends


def train(
    analysis: Analysis,
    task: Task,
    backend: str = "torch",
    steps: int = 1000,
    batch: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    clip: float = 1.0,
    eval_size: int = 500,
    report: Callable[[int, float, float | None], None] | None = None,
    report_every: int = 50,
) -> Result:
    """Train ``analysis``'s spec on ``task``; return the parameters and the held-out
    accuracy (greedy, free-running decoding for seq2seq), and when the decoder attends
    the alignment of a held-out example."""
    binding = task.bind(analysis)
    model = compile_spec(analysis, backend=backend, dtype="float32")
    model.load_params(init_params(analysis, seed=seed))
    rng = np.random.default_rng(seed)
    held_out = task.batch(binding, np.random.default_rng(seed + 10_000), eval_size)
    start = time.perf_counter()
    losses = []
    step_fn = _stepper(model, binding, lr, clip)
    for i in range(1, steps + 1):
        loss = step_fn(task.batch(binding, rng, batch), i)
        losses.append(loss)
        if report is not None and (i % report_every == 0 or i == steps):
            accuracy = (
                evaluate(model, binding, held_out)
                if i == steps or i % (report_every * 10) == 0
                else None
            )
            report(i, loss, accuracy)
    accuracy = evaluate(model, binding, held_out)
    seconds = time.perf_counter() - start
    return Result(
        model.params(),
        accuracy,
        seconds,
        losses,
        examples(model, binding, held_out),
        held_out_alignment(analysis, binding, model, held_out, backend),
    )


def predict(model: Any, binding: Binding, batch: Batch) -> np.ndarray:
    """The model's outputs on a batch: free-running from BOS for seq2seq."""
    if binding.kind == "seq2seq":
        return model.run(
            batch.inputs, lengths=batch.lengths, mode="generate", steps=batch.targets.shape[1]
        )[binding.output]
    return model.run(batch.inputs, lengths=batch.lengths)[binding.output]


def evaluate(model: Any, binding: Binding, batch: Batch) -> float:
    return score(binding, batch, predict(model, binding, batch))


def examples(
    model: Any, binding: Binding, batch: Batch, n: int = 5
) -> list[tuple[list[int], list[int], list[int]]]:
    """A few held-out examples: input symbols, target and prediction (seq2seq: up to EOS)."""
    if binding.kind != "seq2seq":
        return []
    pred = predict(model, binding, batch).argmax(axis=-1)
    out = []
    for b in range(n):
        length = int(batch.lengths[binding.source][b])
        source = batch.inputs[binding.source][b, :length].tolist()
        target = batch.targets[b, :length].tolist()
        guess = pred[b].tolist()
        guess = guess[: guess.index(EOS)] if EOS in guess else guess
        out.append(
            ([s - FIRST for s in source], [t - FIRST for t in target], [p - FIRST for p in guess])
        )
    return out


def _stepper(model: Any, binding: Binding, lr: float, clip: float) -> Callable[[Batch, int], float]:
    """One optimiser step on a batch: the backend's forward and backward
    (``value_and_grad``), then Adam on the parameters. Teacher-forcing coin flips and
    dropout masks are drawn from the step number, on either backend alike."""
    adam = Adam(lr=lr, clip=clip)
    params = model.params()

    def step(batch: Batch, i: int) -> float:
        def loss(outputs: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
            value, grad = loss_and_cotangent(binding, batch, outputs[binding.output])
            return value, {binding.output: grad}

        value, grads = model.value_and_grad(
            batch.inputs, loss, lengths=batch.lengths, seed=i, dropout_seed=i
        )
        adam.step(params, {k: grads[k] for k in params})
        model.load_params(params)
        return value

    return step


# --- the alignment (Bahdanau et al. 2015, Fig. 3) ---------------------------------------------


@dataclass
class Alignment:
    """Where the decoder looked while it generated one example: ``weights[t, s]`` is
    the attention weight of generated step t on source step s (each row sums to 1).
    Tokens are ids, as the batches hold them; ``generated`` ends at its first EOS."""

    source: list[int]
    target: list[int]  # the right answer, then EOS
    generated: list[int]
    weights: np.ndarray  # (len(generated), len(source))


def attention_output(spec: Spec, decoder: str) -> tuple[Spec, str]:
    """A spec with an output of ``decoder``'s attention weights, and that output's name:
    ``spec`` itself when it has one, else a copy with one added (``alignment``, or
    ``alignment_2`` ... when taken). An output adds no parameters, so the copy loads
    the weights trained on ``spec``."""
    for name, out in spec.outputs.items():
        if out.from_ == decoder and out.attention == "weights":
            return spec, name
    name, i = "alignment", 1
    while name in spec.outputs:
        i += 1
        name = f"alignment_{i}"
    weights = Output.model_validate({"from": decoder, "attention": "weights"})
    return spec.model_copy(update={"outputs": {**spec.outputs, name: weights}}), name


def held_out_alignment(
    analysis: Analysis, binding: Binding, model: Any, batch: Batch, backend: str
) -> Alignment | None:
    """The alignment of the longest example in ``batch`` (the first of them), decoded
    as evaluation decodes (greedy, free running from BOS) by ``model``'s parameters;
    None unless the task decodes and its decoder attends."""
    if binding.decoder is None:
        return None
    if getattr(analysis.spec.layers[binding.decoder], "attention", None) is None:
        return None
    spec, name = attention_output(analysis.spec, binding.decoder)
    if spec is not analysis.spec:
        params = model.params()
        model = compile_spec(analyze(spec), backend=backend, dtype="float32")
        model.load_params(params)
    lengths = batch.lengths[binding.source]
    b = int(np.argmax(lengths))
    n = int(lengths[b])
    outputs = model.run(
        {k: v[b : b + 1] for k, v in batch.inputs.items()},
        lengths={k: v[b : b + 1] for k, v in batch.lengths.items()},
        mode="generate",
        steps=n + 1,  # the reversed, copied or sorted symbols, then EOS
    )
    generated = outputs[binding.output][0].argmax(axis=-1).tolist()
    end = generated.index(EOS) + 1 if EOS in generated else len(generated)
    return Alignment(
        batch.inputs[binding.source][b, :n].tolist(),
        batch.targets[b, : n + 1].tolist(),
        generated[:end],
        np.asarray(outputs[name][0, :end, :n], dtype=np.float64),
    )


def symbol(token: int) -> str:
    """A token as the task's symbols write it (``examples`` prints them so too)."""
    return {PAD: "<pad>", BOS: "<s>", EOS: "</s>"}.get(token, str(token - FIRST))


def plot_alignment(alignment: Alignment, about: str) -> bytes:
    """The alignment as a PNG heatmap, drawn as Bahdanau et al. (2015, Fig. 3) draw
    theirs: source tokens along the top, generated tokens down the left, black for
    weight 0 and white for 1. A generated token that differs from the target is red
    and names the target's (``7 ≠ 4``)."""
    plt = pyplot("the alignment heatmap")
    rows, cols = alignment.weights.shape
    size = (max(4.0, 2.2 + 0.4 * cols), max(3.0, 1.8 + 0.4 * rows))  # room for the title
    figure, axes = plt.subplots(figsize=size, dpi=120, layout="constrained")
    image = axes.imshow(alignment.weights, cmap="gray", vmin=0.0, vmax=1.0)
    axes.xaxis.tick_top()
    axes.xaxis.set_label_position("top")
    axes.set_xticks(range(cols), [symbol(t) for t in alignment.source])
    pairs = list(zip(alignment.generated, alignment.target, strict=False))  # generated ends first
    axes.set_yticks(
        range(rows), [symbol(g) if g == w else f"{symbol(g)} ≠ {symbol(w)}" for g, w in pairs]
    )
    for label, (g, w) in zip(axes.get_yticklabels(), pairs, strict=True):
        if g != w:
            label.set_color("red")
    axes.set_xlabel("source")
    axes.set_ylabel("generated")
    figure.colorbar(image, ax=axes, fraction=0.04, pad=0.03, label="attention weight")
    figure.suptitle(f"{about}\na held-out example of length {cols}", fontsize=9)
    return png_bytes(figure)


def write_heatmap(alignment: Alignment, path: str | Path, about: str) -> str:
    """Write the alignment's heatmap to ``path``; what to tell the user: where it is,
    or why it is not there (matplotlib missing; training's other results stand)."""
    try:
        write_atomic(path, plot_alignment(alignment, about))
    except RnncError as exc:
        return f"alignment heatmap not written: {exc}"
    return f"wrote {path} (the attention weights of a held-out example)"


def alignment_path(weights: str | Path) -> Path:
    """Where the heatmap goes beside saved weights: ``w.safetensors`` -> ``w.alignment.png``."""
    return Path(weights).with_suffix(".alignment.png")


__all__ = ["TASKS", "Adam", "Alignment", "Task", "plot_alignment", "train", "write_heatmap"]
