"""What every compiled model shares at run time, written once for every backend.

The CompiledModel conventions (DESIGN.md): checking and preparing the inputs a user
passes (batch-first arrays, lengths, teacher-forcing masks), the keyword options of
``run``/``vjp``, the :class:`CompiledModelBase` every backend's model builds on, and
how generated source becomes a module (a header, a hash of the spec, ``linecache``).
The schedule a backend writes code from is :mod:`rnnc.ir.program`.
"""

from __future__ import annotations

import hashlib
import linecache
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, Unpack, runtime_checkable

import numpy as np

from rnnc.errors import RnncError
from rnnc.front.checks import Analysis
from rnnc.front.spec import TokenInput
from rnnc.ir.program import time_axes
from rnnc.runtime import decoding
from rnnc.runtime.decoding import Generation
from rnnc.version import __version__


def input_rules(analysis: Analysis) -> dict[str, dict[str, int]]:
    """What each input of the spec must be, as the plain data check_input_values reads
    (and a generated torch module carries as INPUTS): ``vocab`` for token ids or
    ``size`` for vectors, and ``sequence`` (whether it has a time axis after the batch)."""
    rules: dict[str, dict[str, int]] = {}
    for name, inp in analysis.spec.inputs.items():
        width = {"vocab": inp.vocab} if isinstance(inp, TokenInput) else {"size": inp.size}
        rules[name] = {**width, "sequence": inp.sequence}
    return rules


# NOTE: check_input_values, check_lengths and check_tf_mask are copied as text into
# every generated torch module (backends/torch_backend.py), so that Model.forward
# refuses what run refuses, in the same words, without importing rnnc. They read only
# builtins and their arguments, take NumPy arrays and torch tensors alike, and their
# annotations are builtin types that evaluate in any module.


def check_input_values(
    rules: dict[str, dict[str, int]],
    inputs: dict,
    kinds: dict[str, str],
    errors: tuple[type[Exception], type[Exception]] = (ValueError, TypeError),
) -> None:
    """Every input of ``rules`` (what input_rules gives; a generated torch module's
    INPUTS) present in ``inputs``, no other, each batch-first with the rank, width,
    dtype and token range its rule says. ``kinds``:
    each input's NumPy dtype kind ('f', 'i', 'u', 'b', ...). Every problem is reported
    at once, as ``errors[1]`` when only dtypes are wrong, else as ``errors[0]``."""
    problems: list[str] = []
    dtypes = 0  # how many of the problems are dtypes
    for name, rule in rules.items():
        if name not in inputs:
            continue
        value, kind, shape = inputs[name], kinds[name], tuple(inputs[name].shape)
        ids = "vocab" in rule
        steps = "(B, T" if rule["sequence"] else "(B"
        width = "" if ids else f", {rule['size']}"
        rank = 1 + rule["sequence"] + (not ids)  # (B[, T]) ids, (B[, T], size) vectors
        if len(shape) != rank or not (ids or shape[-1] == rule["size"]):
            problems.append(f"{name}: expected shape {steps}{width}), found {shape}")
        elif kind not in (("i", "u") if ids else ("f", "i", "u")):
            wanted = "integer token ids" if ids else "real numbers"
            problems.append(f"{name}: expected {wanted}, found dtype {value.dtype}")
            dtypes += 1
        elif ids and 0 not in shape and (value.min() < 0 or value.max() >= rule["vocab"]):
            problems.append(f"{name}: token ids must be in 0..{rule['vocab'] - 1}")
    names = [f"{name}: missing" for name in rules if name not in inputs]
    names += [f"{name}: not an input of the spec" for name in inputs if name not in rules]
    if names:
        problems += [*names, f"the spec's inputs are {', '.join(rules)}"]
    if problems:
        error = errors[1] if dtypes == len(problems) else errors[0]
        raise error("inputs do not fit the spec: " + "; ".join(problems))


def check_lengths(
    axis: str, lengths, batch: int, total: int, error: type[Exception] = ValueError
) -> None:
    """``lengths`` of the time axis ``axis`` (NumPy or torch integers): (B,), in 1..T."""
    fits = tuple(lengths.shape) == (batch,)
    if not fits or (batch and (lengths.min() < 1 or lengths.max() > total)):
        raise error(f"lengths[{axis!r}] must be (B,) = ({batch},) integers in 1..{total}")


def check_tf_mask(
    axis: str, mask, batch: int, total: int, error: type[Exception] = ValueError
) -> None:
    """A teacher-forcing mask of the time axis ``axis``: (B, T)."""
    if tuple(mask.shape) != (batch, total):
        raise error(f"tf_mask for {axis!r} must be (B, T) = ({batch}, {total})")


def dropout_generator(mode: str, seed: int | None) -> np.random.Generator | None:
    """Dropout happens in train mode when a seed is given (off by default and in verify)."""
    return np.random.default_rng(seed) if mode == "train" and seed is not None else None


def prepare_inputs(
    analysis: Analysis,
    inputs: Mapping[str, Any],
    lengths: Any,
    mode: str,
    steps: int | None,
    tf_mask: Any,
    seed: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The CompiledModel conventions, turned into what a generated forward takes.

    ``lengths``: (B,) for a spec with one time axis, else a dict by sequence input
    (default: full length). ``mode="train"``: layers with feedback read the ground truth
    where ``tf_mask`` (B, T) is true; without a mask one is drawn with each layer's
    teacher_forcing probability from ``numpy.random.default_rng(seed)``.
    ``mode="generate"``: a layer with feedback reads the first ground-truth step, then
    its own predictions, for ``steps`` steps.
    """
    if mode not in ("train", "generate"):
        raise RnncError(f"mode must be 'train' or 'generate', found {mode!r}")
    g = analysis.graph
    axes, fed_axes, truths = time_axes(analysis)
    inputs = {name: np.asarray(value) for name, value in inputs.items()}
    kinds = {name: value.dtype.kind for name, value in inputs.items()}
    check_input_values(input_rules(analysis), inputs, kinds, (RnncError, RnncError))
    if mode == "generate":
        if not fed_axes:
            raise RnncError("mode='generate' needs a layer with feedback")
        if steps is None or steps < 1:
            raise RnncError("mode='generate' needs steps >= 1")
        for name in analysis.spec.inputs:
            if g.nodes[name].get("axis") not in fed_axes:
                continue
            value = np.asarray(inputs[name])
            if name in truths:  # only the first step is read; the rest are predictions
                pad = np.zeros((value.shape[0], steps - 1, *value.shape[2:]), dtype=value.dtype)
                inputs[name] = np.concatenate([value[:, :1], pad], axis=1)
            elif value.shape[1] != steps:
                raise RnncError(
                    f"mode='generate' with steps={steps} needs input {name!r} with {steps} steps, "
                    f"found {value.shape[1]}"
                )
    out: dict[str, np.ndarray] = {}
    for axis in axes:
        value = np.asarray(inputs[axis])
        batch, total = value.shape[0], value.shape[1]
        if lengths is None or (mode == "generate" and axis in fed_axes):
            length = np.full(batch, total)
        elif isinstance(lengths, Mapping):
            length = np.asarray(lengths.get(axis, np.full(batch, total)))
        else:
            length = np.asarray(lengths)
        length = length.astype(np.int64)
        check_lengths(axis, length, batch, total, RnncError)
        out[axis] = length
    masks: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed)
    for axis, p in fed_axes.items():
        batch, total = np.asarray(inputs[axis]).shape[:2]
        if mode == "generate":
            mask = np.zeros((batch, total), dtype=bool)
            mask[:, 0] = True
        elif tf_mask is not None:
            given = tf_mask.get(axis) if isinstance(tf_mask, Mapping) else tf_mask
            mask = np.asarray(given, dtype=bool)
            check_tf_mask(axis, mask, batch, total, RnncError)
        else:
            mask = rng.random((batch, total)) < p
        masks[axis] = mask
    return inputs, out, masks


class RunKeywords(TypedDict, total=False):
    """What ``run``, ``vjp`` and ``value_and_grad`` take by keyword (RunOptions' fields)."""

    lengths: Any
    mode: str
    steps: int | None
    tf_mask: Any
    seed: int
    dropout_seed: int | None


@dataclass(frozen=True)
class RunOptions:
    """The keyword options of ``run``, ``vjp`` and ``value_and_grad`` (docs/backends.md):
    the fields of :class:`RunKeywords`, with their defaults."""

    lengths: Any = None
    mode: str = "train"
    steps: int | None = None
    tf_mask: Any = None
    seed: int = 0
    dropout_seed: int | None = None

    def prepare(
        self, analysis: Analysis, inputs: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Inputs, lengths by time axis and teacher-forcing masks (see prepare_inputs)."""
        return prepare_inputs(
            analysis, inputs, self.lengths, self.mode, self.steps, self.tf_mask, self.seed
        )


Loss = Callable[[dict[str, np.ndarray]], tuple[float, Mapping[str, np.ndarray]]]


@runtime_checkable
class CompiledModel(Protocol):
    """What ``rnnc.compile`` returns on every backend (DESIGN.md, "Backends")."""

    source: str  # the generated module

    def param_shapes(self) -> dict[str, tuple[int, ...]]: ...

    def load_params(self, params: Mapping[str, np.ndarray]) -> None: ...

    def params(self) -> dict[str, np.ndarray]: ...

    def run(
        self, inputs: Mapping[str, np.ndarray], **options: Unpack[RunKeywords]
    ) -> dict[str, np.ndarray]: ...

    def vjp(
        self,
        inputs: Mapping[str, np.ndarray],
        cotangents: Mapping[str, np.ndarray],
        **options: Unpack[RunKeywords],
    ) -> dict[str, np.ndarray]: ...

    def value_and_grad(
        self, inputs: Mapping[str, np.ndarray], loss: Loss, **options: Unpack[RunKeywords]
    ) -> tuple[float, dict[str, np.ndarray]]: ...

    def generate(
        self, inputs: Mapping[str, np.ndarray], lengths: Any = None, **options: Any
    ) -> Generation: ...


@runtime_checkable
class Backend(Protocol):
    """A backend as the entry-point group ``rnnc.backends`` names it: an object with a
    ``name`` and ``compile`` (it may also have ``ready()``, whether its own
    requirements are installed, and ``threads(n)``, a context for ``rnnc bench``)."""

    name: str

    def compile(
        self, analysis: Analysis, dtype: str = "float32", **options: Any
    ) -> CompiledModel: ...


class CompiledModelBase:
    """The CompiledModel interface every backend shares, written once: a backend sets
    ``analysis``, ``source`` and ``_shapes`` and implements ``_outputs``,
    ``_value_and_grad``, ``load_params`` and ``params``."""

    analysis: Analysis
    source: str
    namespace: dict[str, Any]
    _shapes: dict[str, tuple[int, ...]]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def run(
        self, inputs: Mapping[str, np.ndarray], **options: Unpack[RunKeywords]
    ) -> dict[str, np.ndarray]:
        """Outputs of the model, batch-first (see docs/backends.md for the options)."""
        return self._outputs(inputs, RunOptions(**options))

    def vjp(
        self,
        inputs: Mapping[str, np.ndarray],
        cotangents: Mapping[str, np.ndarray],
        **options: Unpack[RunKeywords],
    ) -> dict[str, np.ndarray]:
        """Gradients of sum(output * cotangent) for every parameter and real input."""
        return self._value_and_grad(inputs, lambda _: (0.0, cotangents), RunOptions(**options))[1]

    def value_and_grad(
        self, inputs: Mapping[str, np.ndarray], loss: Loss, **options: Unpack[RunKeywords]
    ) -> tuple[float, dict[str, np.ndarray]]:
        """``loss(outputs) -> (value, cotangents)`` on NumPy outputs; returns the value
        and the gradients of every parameter and real input, from one forward and one
        backward pass (what rnnc train uses)."""
        return self._value_and_grad(inputs, loss, RunOptions(**options))

    def generate(
        self,
        inputs: Mapping[str, np.ndarray],
        lengths: Any = None,
        *,
        strategy: str | None = None,
        beam: int | None = None,
        n_best: int | None = None,
        max_steps: int | None = None,
        eos: int | None = None,
        pad: int | None = None,
        length_penalty: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        suppress: Any = None,
        seed: int | None = None,
    ) -> Generation:
        """Decode: greedy, beam search or sampling from the decoder's step contract, each
        option defaulting to the spec's ``generation`` block (docs/decoding.md). The
        decoder's token input gives step 0 (<bos>): (B, 1) ids, or more steps of which
        the first is read."""
        overrides = {
            "strategy": strategy, "beam": beam, "n_best": n_best, "max_steps": max_steps,
            "eos": eos, "pad": pad, "length_penalty": length_penalty,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "suppress": suppress,
        }  # fmt: skip
        opts = decoding.options(self.analysis.spec.generation, overrides)
        if not time_axes(self.analysis)[1]:
            raise RnncError(
                "generate needs a layer with feedback (a decoder fed its own predictions)"
            )
        inputs_, lengths_, _ = prepare_inputs(
            self.analysis, inputs, lengths, "generate", opts.max_steps, None, 0
        )
        batch = len(next(iter(lengths_.values())))
        args = self._contract_arguments(inputs_, lengths_)
        return decoding.generate(self.namespace, *args, batch, opts, seed)

    def _contract_arguments(
        self, inputs: dict[str, Any], lengths: dict[str, np.ndarray]
    ) -> tuple[Any, Any, Any]:
        """What the generated step contract takes: parameters, inputs, lengths."""
        raise NotImplementedError  # pragma: no cover - every backend has its own

    def _outputs(self, inputs: Mapping[str, Any], options: RunOptions) -> dict[str, np.ndarray]:
        raise NotImplementedError  # pragma: no cover - every backend has its own

    def _value_and_grad(
        self, inputs: Mapping[str, Any], loss: Loss, options: RunOptions
    ) -> tuple[float, dict[str, np.ndarray]]:
        raise NotImplementedError  # pragma: no cover - every backend has its own


def spec_hash(analysis: Analysis) -> str:
    """A short hash of the spec, for the header of generated modules."""
    source = analysis.spec.model_dump_json(by_alias=True)
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def module_header(analysis: Analysis, library: str, backend: str) -> str:
    """The docstring a generated module starts with: rnnc's version and the spec's hash."""
    return (
        f'"""{library} model {analysis.spec.name!r}, generated by rnnc {__version__} '
        f"(spec sha256 {spec_hash(analysis)}).\n\nDo not edit: regenerate with "
        f'`rnnc compile SPEC --backend {backend}`.\n"""'
    )


def load_module(source: str, analysis: Analysis, backend: str) -> dict[str, Any]:
    """Run generated source as a module and return its namespace; the source is
    registered with linecache so tracebacks show the generated lines."""
    filename = f"<rnnc-{backend}:{analysis.spec.name}:{spec_hash(analysis)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": f"rnnc_generated_{analysis.spec.name}"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace
