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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from rnnc.errors import RnncError
from rnnc.front.parse import schema_diagnostics
from rnnc.front.spec import GenerationOptions

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


# --- generation: stop at eos, beam search, sampling ------------------------------------


@dataclass(frozen=True)
class Generation:
    """What ``generate`` returns, per example the ``n_best`` hypotheses best first:
    ``tokens`` (B, N, T) ids, ``pad`` after each one's end; ``lengths`` (B, N) tokens
    generated, the eos counted; ``log_probs`` (B, N) the sum of their log-probabilities;
    ``scores`` (B, N) ``log_probs / lengths ** length_penalty``. A decoder fed back
    vectors has no tokens: ``outputs`` holds its outputs (batch-first) instead."""

    tokens: np.ndarray
    lengths: np.ndarray
    log_probs: np.ndarray
    scores: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


def as_tensors(found: Generation, device: Any) -> Generation:
    """A Generation of torch tensors (the torch module's generate)."""
    import torch

    def tensor(array: np.ndarray) -> Any:
        return torch.as_tensor(array, device=device)

    outputs = {k: tensor(v) for k, v in found.outputs.items()}
    return Generation(
        tensor(found.tokens), tensor(found.lengths), tensor(found.log_probs),
        tensor(found.scores), outputs,
    )  # fmt: skip


def options(defaults: GenerationOptions, overrides: Mapping[str, Any]) -> GenerationOptions:
    """The spec's ``generation`` block with a call's overrides (None: the default),
    checked as the block is."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(GenerationOptions.model_fields))
    if unknown:
        known = ", ".join(GenerationOptions.model_fields)
        raise RnncError(f"generate takes no option {', '.join(unknown)}; it takes {known}")
    plain = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in given.items()}
    if isinstance(plain.get("suppress"), (tuple, np.ndarray)):
        plain["suppress"] = [int(t) for t in plain["suppress"]]
    try:
        return GenerationOptions.model_validate({**defaults.model_dump(), **plain})
    except ValidationError as exc:
        said = "; ".join(f"{d.dotted_path}: {d.message}" for d in schema_diagnostics(exc))
        raise RnncError(f"generate: {said}") from None


class _Host:
    """Moves values between a generated module (NumPy arrays or torch tensors) and the
    search, which runs in NumPy (float64)."""

    def __init__(self, like: Any):
        self.torch = None
        if type(like).__module__.startswith("torch"):
            import torch

            self.torch = torch
        self.like = like

    def numpy(self, value: Any) -> np.ndarray:
        if self.torch is not None:
            return value.detach().cpu().numpy()  # type: ignore[no-any-return]
        return np.asarray(value)

    def ids(self, ids: np.ndarray) -> Any:
        if self.torch is None:
            return ids
        return self.torch.as_tensor(ids, dtype=self.torch.int64, device=self.like.device)

    def take(self, value: Any, index: Any, axis: int) -> Any:
        """Rows ``index`` (from ``ids``) of ``value`` along ``axis``."""
        if self.torch is not None:
            return value.index_select(axis, index)
        return np.take(value, index, axis=axis)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis, from the largest entry (no overflow)."""
    top = logits.max(axis=-1, keepdims=True)
    total = np.exp(logits - top).sum(axis=-1, keepdims=True)
    return logits - (top + np.log(total))  # type: ignore[no-any-return]


class _Decoder:
    """A module's step contract driven row by row: each row of the batch one
    hypothesis, rows reordered when the search picks among them."""

    def __init__(
        self, module: Module, params: Any, inputs: Any, lengths: Any, rows: np.ndarray | None
    ):
        """``rows``: the example each row decodes (None: one row per example, in order)."""
        self.module, self.params = module, params
        contract = module["STEP"]
        self.prediction = contract["prediction"]
        self.axes, self.history = contract["batch_axes"], set(contract["history"])
        carry = module["init"](params, inputs, lengths)
        self.host = _Host(carry["like"])
        self.carry, self.first = carry, inputs[contract["input"]][:, 0]
        if rows is not None:
            self.carry = self.reorder(carry, rows)
            self.first = self.host.take(self.first, self.host.ids(rows), 0)

    def reorder(self, carry: dict[str, Any], rows: np.ndarray, env: bool = True) -> dict[str, Any]:
        """The carry with row i taken from row ``rows[i]`` (hypotheses copied or dropped).
        ``env=False`` leaves what was made before the loop as it is: right when every
        row moves within its example, whose rows all hold the same copy of it."""
        take, rows = self.host.take, self.host.ids(rows)
        made = carry["env"]
        if env:
            made = {
                k: v if self.axes.get(k) is None else take(v, rows, self.axes[k])
                for k, v in made.items()
            }
        carries = {k: take(v, rows, 0) for k, v in carry["carries"].items()}
        ys = {k: [take(y, rows, 0) for y in v] for k, v in carry["ys"].items()}
        return {**carry, "env": made, "carries": carries, "ys": ys}

    def follow(self, rows: np.ndarray, env: bool) -> None:
        """The next step's row i continues row ``rows[i]`` (see reorder). What the step
        does before it reads the fed token (the module's ``prepare``: Bahdanau's
        attention weights) is done once per distinct row: a beam's hypotheses that
        branch from one parent share it."""
        carry = self.reorder(self.carry, rows, env)
        contract = self.module["STEP"]
        if contract["ready"]:
            distinct, inverse = np.unique(rows, return_inverse=True)
            if len(distinct) < len(rows):
                reads = {k: self.carry["env"][k] for k in contract["prepare_reads"]}
                parents = self.reorder({**self.carry, "env": reads}, distinct)
                once = self.module["prepare"](self.params, parents)["ready"]
                at = self.host.ids(inverse)
                carry["ready"] = {k: self.host.take(v, at, 0) for k, v in once.items()}
        self.carry = carry

    def step(self, fed: Any) -> np.ndarray:
        """One step on every row; the log-probabilities of the next token (rows, V): the
        log-softmax of the fed-back layer's output, in float64."""
        self.carry, y_t = self.module["step"](self.params, self.carry, fed)
        # a strategy never calls finish: keep only the outputs a step reads again
        self.carry["ys"] = {k: v if k in self.history else [] for k, v in self.carry["ys"].items()}
        # in the module's own precision (float32's exp is the cheaper), summed in float64
        return log_softmax(self.host.numpy(y_t[self.prediction])).astype(np.float64)


def generate(
    module: Module,
    params: Any,
    inputs: Any,
    lengths: Any,
    batch: int,
    opts: GenerationOptions,
    seed: int | None = None,
) -> Generation:
    """Decode ``batch`` examples with ``opts`` (see Generation and docs/decoding.md).
    ``inputs`` hold ``opts.max_steps`` steps of the decoder's inputs (as the module's
    generate mode takes them) and ``lengths`` those steps in full."""
    if "STEP" not in module:
        raise RnncError("generate needs a layer with feedback (a decoder fed its own predictions)")
    if not module["STEP"]["tokens"]:
        if opts.strategy != "greedy" or opts.n_best != 1:
            raise RnncError(
                "this decoder is fed back vectors, not tokens: it decodes greedily only "
                f"(found strategy: {opts.strategy}, n_best: {opts.n_best})"
            )
        return _vectors(module, params, inputs, lengths, batch, opts)
    if opts.strategy == "beam":
        if opts.n_best > opts.beam:
            raise RnncError(
                f"n_best ({opts.n_best}) must not exceed the beam ({opts.beam}): a beam keeps "
                "that many hypotheses"
            )
        return _beam(module, params, inputs, lengths, batch, opts)
    if opts.strategy == "sample":
        return _sample(module, params, inputs, lengths, batch, opts, seed)
    if opts.n_best != 1:
        raise RnncError(f"greedy decoding gives one hypothesis (found n_best: {opts.n_best})")
    return _greedy(module, params, inputs, lengths, batch, opts)


def _suppress(log_probs: np.ndarray, opts: GenerationOptions) -> np.ndarray:
    """The log-probabilities (rows, V) with the suppressed tokens at -inf, in place."""
    if opts.suppress:
        log_probs[:, [t for t in opts.suppress if t < log_probs.shape[-1]]] = -np.inf
    return log_probs


def _check_vocab(log_probs: np.ndarray, opts: GenerationOptions) -> None:
    V = log_probs.shape[-1]
    for name in ("eos", "pad"):
        if getattr(opts, name) >= V:
            raise RnncError(
                f"{name} ({getattr(opts, name)}) is not a token of the {V}-token vocabulary"
            )
    if len(set(opts.suppress) & set(range(V))) == V:
        raise RnncError("suppress holds every token of the vocabulary: nothing can be generated")


def _finished(
    tokens: np.ndarray, lengths: np.ndarray, log_probs: np.ndarray, opts: GenerationOptions
) -> Generation:
    """Hypotheses best first by score (ties: in the order found)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.where(
            lengths > 0, log_probs / np.maximum(lengths, 1) ** opts.length_penalty, -np.inf
        )
    order = np.argsort(-scores, axis=1, kind="stable")
    pick = lambda a: _rows(a, order)  # noqa: E731
    return Generation(pick(tokens), pick(lengths), pick(log_probs), pick(scores))


def _rows(array: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``array`` (B, C, ...) with each example's entries in ``order`` (B, C')."""
    return np.take_along_axis(array, order.reshape(order.shape + (1,) * (array.ndim - 2)), axis=1)


def _greedy(module, params, inputs, lengths, B, opts) -> Generation:  # type: ignore[no-untyped-def]
    """The likeliest token at every step, until each example's eos or max_steps."""
    decoder = _Decoder(module, params, inputs, lengths, None)
    choose = lambda log_probs, rows: log_probs.argmax(axis=-1)  # noqa: E731
    tokens, length, total = _one_by_one(decoder, B, opts, choose)
    return _finished(tokens[:, None], length[:, None], total[:, None], opts)


def _sample(module, params, inputs, lengths, B, opts, seed) -> Generation:  # type: ignore[no-untyped-def]
    """``n_best`` draws per example from the filtered distribution (temperature, top_k,
    top_p, suppress): uniforms from NumPy's generator, the inverse of the cumulative
    distribution, so every backend draws the same tokens."""
    N = opts.n_best
    decoder = _Decoder(module, params, inputs, lengths, np.repeat(np.arange(B), N))
    rng = np.random.default_rng(seed)
    # a uniform for every row at every step, so the stream never depends on which ended
    choose = lambda log_probs, rows: _draw(log_probs, rng.random(B * N)[rows], opts)  # noqa: E731
    tokens, length, total = _one_by_one(decoder, B * N, opts, choose)
    return _finished(tokens.reshape(B, N, -1), length.reshape(B, N), total.reshape(B, N), opts)


def _one_by_one(
    decoder: _Decoder,
    rows: int,
    opts: GenerationOptions,
    choose: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One hypothesis per row, each step's token chosen from the log-probabilities (the
    suppressed tokens at -inf; ``choose`` is also told which rows are still decoding),
    until every row's eos or max_steps: the tokens (pad after each end), the number
    generated, the sum of their log-probabilities. A row that ends leaves the batch."""
    tokens = np.full((rows, opts.max_steps), opts.pad, dtype=np.int64)
    length = np.zeros(rows, dtype=np.int64)
    total = np.zeros(rows)
    going = np.arange(rows)  # the rows still decoding, in the decoder's order
    fed = decoder.first
    for t in range(opts.max_steps):
        log_probs = _suppress(decoder.step(fed), opts)
        if t == 0:
            _check_vocab(log_probs, opts)
        pick = choose(log_probs, going)
        tokens[going, t] = pick
        total[going] += log_probs[np.arange(len(going)), pick]
        length[going] += 1
        on = pick != opts.eos
        if not on.all():
            if not on.any():
                break
            going, pick = going[on], pick[on]
            decoder.carry = decoder.reorder(decoder.carry, np.flatnonzero(on))
        fed = decoder.host.ids(pick)
    return tokens, length, total


def _draw(log_probs: np.ndarray, uniform: np.ndarray, opts: GenerationOptions) -> np.ndarray:
    """One token per row: the filtered distribution's inverse CDF at ``uniform``
    (temperature 0: the argmax). The suppressed tokens are at -inf already."""
    if opts.temperature == 0:
        return log_probs.argmax(axis=-1)  # type: ignore[no-any-return]
    scaled = log_probs / opts.temperature
    order = np.argsort(-scaled, axis=-1, kind="stable")  # likeliest first
    ranked = np.take_along_axis(scaled, order, axis=-1)
    probs = np.exp(ranked - ranked[:, :1])
    probs /= probs.sum(axis=-1, keepdims=True)
    keep = np.ones_like(probs, dtype=bool)
    if opts.top_k > 0:
        keep[:, opts.top_k :] = False
    if opts.top_p < 1.0:  # the smallest prefix whose probability reaches top_p
        before = np.cumsum(probs, axis=-1) - probs
        keep &= before < opts.top_p
    probs = np.where(keep, probs, 0.0)
    cdf = np.cumsum(probs, axis=-1)
    at = (uniform * cdf[:, -1])[:, None]
    index = np.minimum((cdf <= at).sum(axis=-1), probs.shape[-1] - 1)
    return np.take_along_axis(order, index[:, None], axis=-1)[:, 0]  # type: ignore[no-any-return]


def _beam(module, params, inputs, lengths, B, opts) -> Generation:  # type: ignore[no-untyped-def]
    """Beam search (see docs/decoding.md): ``beam`` live hypotheses per example, one
    batch of B x beam rows; at each step the candidates (every live hypothesis and
    token) are ranked by their sum of log-probabilities; those ending in eos among the
    best ``beam`` finish, the best ``beam`` others stay live. An example is done when no
    live hypothesis can beat its ``n_best``-th finished one, or at max_steps; its rows
    then leave the batch."""
    K, N, T = opts.beam, opts.n_best, opts.max_steps
    # step 0 has one hypothesis per example: one row each, branching into K after it
    decoder = _Decoder(module, params, inputs, lengths, None)
    searching = np.arange(B)  # the examples not done, in the decoder's order
    live = np.zeros((B, 1))  # the sums of their live hypotheses (-inf: none)
    history = np.full((B, 1, T), opts.pad, dtype=np.int64)  # the hypotheses' tokens
    pool = _Pool(B, N, T, opts.pad)
    fed = decoder.first
    for t in range(T):
        log_probs = _suppress(decoder.step(fed), opts)
        if t == 0:
            _check_vocab(log_probs, opts)
        (b, rows), V = live.shape, log_probs.shape[-1]
        example = np.arange(b)[:, None]
        candidates = (live[:, :, None] + log_probs.reshape(b, rows, V)).reshape(b, -1)
        # at most one eos per live hypothesis: K others are among the best 2K
        ranked, best = _largest(candidates, 2 * K)
        parent, token = best // V, best % V
        valid = ranked > -np.inf
        last = t == T - 1
        ends = valid & ((token == opts.eos) | last)
        ends[:, K:] = False  # only among the best K
        if ends.any():  # into each example's pool of the n_best best finished
            finished = history[example, parent]
            finished[:, :, t] = token
            pool.add(searching, ends, ranked, finished, t, opts)
        if last:
            break
        # live: the best K candidates not ending in eos, in rank order
        going = valid & (token != opts.eos)
        if going[:, :K].all():  # the common case: the best K go on
            live, parents, tokens = ranked[:, :K], parent[:, :K], token[:, :K]
        else:
            first = np.argsort(~going, axis=1, kind="stable")[:, :K]
            kept = going[example, first]
            live = np.where(kept, ranked[example, first], -np.inf)
            parents = np.where(kept, parent[example, first], 0)
            tokens = np.where(kept, token[example, first], opts.pad)
        history = history[example, parents]
        history[:, :, t] = tokens
        rows_next = example * rows + parents
        # rows move within their example, whose rows share what was made before the
        # loop; that is copied when step 0 branches, and follows when examples leave
        env = rows != K
        # the stopping rule can hold only for an example with n_best finished or none live
        scores = pool.scores[searching]
        if (scores[:, -1] > -np.inf).any() or (live[:, 0] == -np.inf).any():
            on = ~_cannot_improve(live, scores, t + 1, opts)
            if not on.any():
                break
            if not on.all():  # the done examples leave the batch
                searching, live, history = searching[on], live[on], history[on]
                rows_next, tokens, env = rows_next[on], tokens[on], True
        decoder.follow(rows_next.reshape(-1), env)
        fed = decoder.host.ids(tokens.reshape(-1))
    return Generation(pool.tokens, pool.lengths, pool.sums, pool.scores)


def _largest(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``n`` largest entries, largest first (ties: the lower index first), and
    their indices; past a row's width, -inf at index 0. A partition finds the n-th
    largest value; the entries at or above it are sorted."""
    B, C = values.shape
    if n > C:
        pad = np.full((B, n - C), -np.inf)
        ranked, index = _largest(np.concatenate([values, pad], axis=1), n)
        return ranked, np.where(index < C, index, 0)
    nth = np.partition(values, C - n, axis=1)[:, C - n, None]
    at = np.flatnonzero(values >= nth)  # row by row, in order: at least n per row
    if len(at) != B * n:  # ties with the n-th: those before it in the row go first
        above, tied = values > nth, values == nth
        room = n - above.sum(axis=1, keepdims=True)
        at = np.flatnonzero(above | tied & (np.cumsum(tied, axis=1) <= room))
    chosen = at.reshape(B, n)  # flat indices, increasing along each row
    found = values.take(chosen)
    order = np.argsort(-found, axis=1, kind="stable") + np.arange(0, B * n, n)[:, None]
    return found.take(order), chosen.take(order) % C


class _Pool:
    """Each example's ``n_best`` best finished hypotheses, best first."""

    def __init__(self, B: int, N: int, T: int, pad: int):
        self.tokens = np.full((B, N, T), pad, dtype=np.int64)
        self.lengths = np.zeros((B, N), dtype=np.int64)
        self.sums = np.full((B, N), -np.inf)
        self.scores = np.full((B, N), -np.inf)
        self.pad = pad

    def add(
        self,
        examples: np.ndarray,
        ends: np.ndarray,
        sums: np.ndarray,
        tokens: np.ndarray,
        t: int,
        opts: GenerationOptions,
    ) -> None:
        """For ``examples`` (b,): the candidates where ``ends`` (b, C), their sums and
        their tokens (b, C, T, a copy this may change), finished at step t."""
        N = self.tokens.shape[1]
        tokens[:, :, t + 1 :] = self.pad
        scores = np.where(ends, sums / (t + 1) ** opts.length_penalty, -np.inf)
        every = np.concatenate([self.scores[examples], scores], axis=1)
        keep = np.argsort(-every, axis=1, kind="stable")[:, :N]  # the pool first on ties
        both = lambda old, new: _rows(np.concatenate([old[examples], new], axis=1), keep)  # noqa: E731
        self.scores[examples] = _rows(every, keep)
        self.sums[examples] = both(self.sums, np.where(ends, sums, -np.inf))
        self.tokens[examples] = both(self.tokens, tokens)
        self.lengths[examples] = both(self.lengths, np.where(ends, t + 1, 0))


def _cannot_improve(
    live: np.ndarray, pool: np.ndarray, length: int, opts: GenerationOptions
) -> np.ndarray:
    """Per example: no live hypothesis (now ``length`` tokens long) can end with a score
    above the n_best-th finished one. A sum of log-probabilities only falls, so the
    best a live sum s can reach is s / L ** length_penalty for some L in
    (length, max_steps]: at one end of that range."""
    longest, shortest = opts.max_steps, min(length + 1, opts.max_steps)
    with np.errstate(invalid="ignore"):
        bound = np.maximum(
            live / longest**opts.length_penalty, live / shortest**opts.length_penalty
        )
    best = np.where(np.isnan(bound), -np.inf, bound).max(axis=1)
    return (pool[:, -1] > -np.inf) & (best <= pool[:, -1]) | (best == -np.inf)


def _vectors(module, params, inputs, lengths, B, opts) -> Generation:  # type: ignore[no-untyped-def]
    """A decoder fed back vectors: its prediction fed to the next step, max_steps steps;
    the outputs, no tokens."""
    outputs = greedy(module, params, inputs, lengths, opts.max_steps)
    host = _Host(next(iter(outputs.values())))
    empty = np.zeros((B, 1), dtype=np.int64)
    return Generation(
        np.zeros((B, 1, 0), dtype=np.int64),
        empty + opts.max_steps,
        np.zeros((B, 1)),
        np.zeros((B, 1)),
        {k: host.numpy(v) for k, v in outputs.items()},
    )
