"""Decoding strategies, written once over the generated modules' step contract.

A module generated for a spec with a step loop that feeds a prediction back (a
decoder) exposes that loop as three functions (rnnc.ir.network.StepContract):

- ``init(params, inputs, lengths) -> carry``: everything before the loop (the
  encoder, bridges, attention keys) and the loop's initial states;
- ``step(params, carry, x_t) -> (carry, y_t)``: one step, given ``x_t``, the value fed
  at this step: token ids (B,), or a vector (B, width) for a decoder fed back vectors;
  ``y_t`` maps each member of the loop to its output at t;
- ``finish(params, carry) -> outputs``: the outputs, batch-first.

and ``STEP``: the input whose first step starts the feedback, the member whose output
is fed back, and whether it is fed back as token ids. A strategy decides what to feed:
the ground truth (:func:`teacher_forced`), the argmax of the prediction
(:func:`greedy`). The same functions drive the NumPy and the PyTorch modules (arrays or
tensors in, the same out) and any backend that implements the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Module = Mapping[str, Any]  # a generated module's namespace


def run_steps(
    module: Module,
    params: Mapping[str, Any],
    inputs: Mapping[str, Any],
    lengths: Mapping[str, Any],
    steps: int,
    pick: Callable[[int, dict[str, Any]], Any],
) -> dict[str, Any]:
    """Run ``steps`` steps from the first ground-truth step; after step t, ``pick(t,
    y_t)`` gives what is fed at step t + 1. Returns the module's outputs."""
    fed = module["STEP"]["input"]
    carry = module["init"](params, inputs, lengths)
    x_t = inputs[fed][:, 0]
    for t in range(steps):
        carry, y_t = module["step"](params, carry, x_t)
        if t + 1 < steps:
            x_t = pick(t, y_t)
    return module["finish"](params, carry)  # type: ignore[no-any-return]


def teacher_forced(
    module: Module, params: Mapping[str, Any], inputs: Mapping[str, Any], lengths: Mapping[str, Any]
) -> dict[str, Any]:
    """The ground truth fed at every step (a model's train mode with every teacher-forcing
    coin heads)."""
    fed = module["STEP"]["input"]
    truth = inputs[fed]
    return run_steps(module, params, inputs, lengths, truth.shape[1], lambda t, _: truth[:, t + 1])


def greedy(
    module: Module,
    params: Mapping[str, Any],
    inputs: Mapping[str, Any],
    lengths: Mapping[str, Any],
    steps: int,
) -> dict[str, Any]:
    """The prediction of each step fed to the next: its argmax for tokens, the vector
    itself otherwise (a model's generate mode). ``inputs`` holds ``steps`` steps of
    every input on the decoder's time axis (of the fed one only the first is read)."""
    prediction, tokens = module["STEP"]["prediction"], module["STEP"]["tokens"]

    def pick(t: int, y_t: dict[str, Any]) -> Any:
        return y_t[prediction].argmax(axis=-1) if tokens else y_t[prediction]

    return run_steps(module, params, inputs, lengths, steps, pick)
