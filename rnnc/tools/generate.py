"""``rnnc generate``: decode with a trained model from the command line.

Inputs come from ``--input NAME="3 5 7"`` (one example), a JSON-lines file (one example
per line, ragged sequences padded), or ``--task``: the held-out examples ``rnnc train``
evaluated on, decoded and scored as it scores them (docs/decoding.md, docs/training.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnnc.errors import RnncError
from rnnc.front.spec import TokenInput
from rnnc.runtime.decoding import Generation
from rnnc.tools.train import BOS, Batch, Binding, Task

Example = dict[str, np.ndarray]


def parse_input(analysis: Any, text: str) -> tuple[str, np.ndarray]:
    """``NAME=VALUES``: token ids, or numbers, separated by spaces (a sequence of
    vectors: one vector after another, ``;`` between steps optional)."""
    name, sep, values = text.partition("=")
    inputs = analysis.spec.inputs
    if not sep or name not in inputs:
        raise RnncError(
            f"--input takes NAME=VALUES with NAME one of {', '.join(inputs)}, found {text!r}"
        )
    return name, _values(name, inputs[name], values.replace(";", " ").split())


def _values(name: str, spec: Any, words: Sequence[Any]) -> np.ndarray:
    tokens = isinstance(spec, TokenInput)
    try:
        array = np.array([int(w) if tokens else float(w) for w in words])
    except (TypeError, ValueError):
        kind = "token ids (integers)" if tokens else "numbers"
        raise RnncError(f"input {name!r} takes {kind}, found {list(words)[:5]!r}") from None
    if not tokens:
        array = array.reshape(-1, spec.size) if spec.sequence else array
        if array.size % spec.size:
            raise RnncError(f"input {name!r} takes vectors of size {spec.size}")
    return array


def read_examples(analysis: Any, path: str | Path) -> list[Example]:
    """One example per line of a JSON-lines file: {"src": [3, 5, 7], ...}."""
    examples = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RnncError(f"{path}:{number}: not JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise RnncError(f"{path}:{number}: expected an object of inputs, found {line[:40]!r}")
        example = {}
        for name, value in record.items():
            if name not in analysis.spec.inputs:
                known = ", ".join(analysis.spec.inputs)
                raise RnncError(f"{path}:{number}: {name!r} is not an input; inputs: {known}")
            words = np.ravel(np.asarray(value, dtype=object)).tolist()
            example[name] = _values(name, analysis.spec.inputs[name], words)
        examples.append(example)
    if not examples:
        raise RnncError(f"{path}: no examples")
    return examples


def batch_of(
    analysis: Any, examples: list[Example], fed: str, bos: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Examples padded into a batch (pad 0), with each sequence's lengths; the decoder's
    token input, unless given, is ``bos``."""
    inputs: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    for name, spec in analysis.spec.inputs.items():
        if name == fed and not all(name in e for e in examples):
            inputs[name] = np.full((len(examples), 1), bos)
            continue
        missing = [i for i, e in enumerate(examples) if name not in e]
        if missing:
            raise RnncError(f"input {name!r} is missing (example {missing[0]})")
        values = [e[name] for e in examples]
        if not spec.sequence:
            inputs[name] = np.stack(values)
            continue
        longest = max(len(v) for v in values)
        padded = np.zeros((len(values), longest, *values[0].shape[1:]), dtype=values[0].dtype)
        for i, v in enumerate(values):
            padded[i, : len(v)] = v
        inputs[name] = padded
        lengths[name] = np.array([len(v) for v in values])
    return inputs, {k: v for k, v in lengths.items() if k != fed}


def describe(generation: Generation, words: Any = str) -> list[str]:
    """Each example's hypotheses, best first, with their scores."""
    lines = []
    for b in range(generation.tokens.shape[0]):
        lines.append(f"example {b}:")
        for n in range(generation.tokens.shape[1]):
            length = int(generation.lengths[b, n])
            tokens = " ".join(words(int(t)) for t in generation.tokens[b, n, :length])
            lines.append(
                f"  {n + 1}. score {generation.scores[b, n]:.4f}  log-prob "
                f"{generation.log_probs[b, n]:.4f}  length {length}:  {tokens}"
            )
    return lines


def held_out(task: Task, binding: Binding, seed: int, size: int = 500) -> Batch:
    """The held-out examples ``rnnc train --seed SEED`` evaluated on."""
    return task.batch(binding, np.random.default_rng(seed + 10_000), size)


def task_accuracy(generation: Generation, batch: Batch) -> float:
    """Exact match of each example's best hypothesis with its target and eos (as
    rnnc train scores free-running decoding)."""
    assert batch.mask is not None
    width = batch.targets.shape[1]
    best = generation.tokens[:, 0, :width]
    if best.shape[1] < width:
        best = np.pad(best, ((0, 0), (0, width - best.shape[1])), constant_values=-1)
    right = (best == batch.targets) | ~batch.mask
    return float(np.mean(right.all(axis=1)))


def decode_inputs(
    batch: Batch, binding: Binding
) -> tuple[dict[str, np.ndarray], Mapping[str, Any]]:
    """A task batch as generate takes it: <bos> for the decoder."""
    assert binding.target is not None
    inputs = dict(batch.inputs)
    inputs[binding.target] = np.full((len(batch.targets), 1), BOS)
    lengths = {k: v for k, v in batch.lengths.items() if k != binding.target}
    return inputs, lengths
