"""The spec language (version 1) as Pydantic models.

Pydantic stays at this edge: it checks the shape of a spec (keys, types, bounds,
names) and reports every violation at once. References between parts of a spec,
sizes and the graph are checked later, by :mod:`rnnc.front.checks`.

Layers and inputs are told apart by the key that names their kind (``cell``,
``dense``, ``embedding``; ``size``, ``vocab``), so an error names one variant
instead of listing why every variant failed.
"""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rnnc.front import notebook
from rnnc.front.load import SourceMap

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_NAME = 64


def check_identifier(name: str) -> str:
    """Names are ASCII Python identifiers, not keywords, not dunders."""
    if not _IDENTIFIER.match(name):
        raise PydanticCustomError(
            "identifier",
            "expected a name of ASCII letters, digits and '_' not starting with a digit, found '{name}'",
            {"name": name},
        )
    if len(name) > MAX_NAME:
        raise PydanticCustomError(
            "identifier", "expected a name of at most 64 characters, found {n}", {"n": len(name)}
        )
    if keyword.iskeyword(name):  # soft keywords (match, case, type, _) are valid names
        raise PydanticCustomError(
            "identifier", "'{name}' is a Python keyword; choose another name", {"name": name}
        )
    if name.startswith("__") and name.endswith("__"):
        raise PydanticCustomError(
            "identifier", "'{name}' is reserved (a double-underscore name)", {"name": name}
        )
    return name


Identifier = Annotated[
    str,
    AfterValidator(check_identifier),
    Field(json_schema_extra={"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"}),
]
Size = Annotated[int, Field(ge=1, le=65536)]
Vocab = Annotated[int, Field(ge=1, le=1_000_000)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]

Direction = Literal["forward", "backward", "bidirectional"]
Merge = Literal["concat", "sum", "mean", "mul"]
Score = Literal["dot", "general", "additive"]
Bridge = Literal["none", "dense"]
Activation = Literal["identity", "tanh", "relu", "sigmoid", "softmax", "log_softmax"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class Selection(_Model):
    """A value of a node: its steps (the default), each example's last step
    (``steps: last``), a recurrent layer's final state (``state: h``) or its valid steps
    pooled (``pool: mean | max``)."""

    SELECTORS: ClassVar[tuple[str, ...]] = ("steps", "state", "pool")

    from_: Identifier = Field(alias="from")
    steps: Literal["all", "last"] | None = Field(
        None, description="all (default): (B, T, size); last: each example's own last step."
    )
    state: Identifier | None = Field(
        None,
        description="A final state of a recurrent layer's cell: top layer, directions "
        "merged, at each example's length.",
    )
    pool: Literal["mean", "max"] | None = Field(
        None, description="The mean or the maximum over each example's valid steps."
    )

    @model_validator(mode="after")
    def _one_selector(self) -> Selection:
        given = [key for key in self.SELECTORS if getattr(self, key) is not None]
        if len(given) > 1:
            raise PydanticCustomError(
                "selector",
                "give only one of {keys} (found {found})",
                {"keys": ", ".join(f"'{k}'" for k in self.SELECTORS), "found": " and ".join(given)},
            )
        return self

    @property
    def select(self) -> str | None:
        """How the value is taken, as the graph's edges say it: ``state h``, ``last``,
        ``mean``, ``max``, or None for every step."""
        if self.state is not None:
            return f"state {self.state}"
        if self.steps == "last":
            return "last"
        return self.pool


Reference = Identifier | Selection
References = Reference | Annotated[list[Reference], Field(min_length=1, max_length=64)]


def references(value: Reference | list[Reference]) -> tuple[tuple[str, str | None], ...]:
    """What a layer's ``input`` reads: (node, how it is selected) per entry, in order."""
    entries = value if isinstance(value, list) else [value]
    return tuple((e, None) if isinstance(e, str) else (e.from_, e.select) for e in entries)


def as_names(value: Reference | list[Reference]) -> tuple[str, ...]:
    return tuple(name for name, _ in references(value))


def _unique(states: list[str]) -> list[str]:
    twice = [s for i, s in enumerate(states) if s in states[:i]]
    if twice:
        raise PydanticCustomError("unique", "state '{name}' is listed twice", {"name": twice[0]})
    return states


# --- inputs ----------------------------------------------------------------------------


class VectorInput(_Model):
    """Real vectors: ``(B, T, size)``, or ``(B, size)`` with ``sequence: false``."""

    size: Size = Field(description="Width of each vector.")
    sequence: bool = Field(True, description="False: one vector per example (one-to-many).")


class TokenInput(_Model):
    """Token ids ``(B, T)`` in ``[0, vocab)``; with ``embed`` they become vectors."""

    vocab: Vocab = Field(description="Number of distinct tokens.")
    embed: Size | None = Field(
        None, description="Embedding width; the table is the parameter NAME.embedding."
    )
    sequence: bool = Field(True, description="False: one token per example.")


def _input_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "vocab" in value:
            return "tokens"
        if "size" in value:
            return "vectors"
        return None
    kinds: dict[type, str] = {VectorInput: "vectors", TokenInput: "tokens"}
    return kinds.get(type(value))


InputSpec = Annotated[
    Annotated[VectorInput, Tag("vectors")] | Annotated[TokenInput, Tag("tokens")],
    Discriminator(
        _input_kind,
        custom_error_type="input_kind",
        custom_error_message="an input needs 'size' (real vectors) or 'vocab' (token ids)",
    ),
]


# --- layers ----------------------------------------------------------------------------


class Init(_Model):
    """Start this layer's states from another node's final states.

    Without ``states``, every depth and state starts from the source's final ``h`` (top
    layer); with ``states: [h, c]``, depth k starts each listed state from the source's
    depth k final state of that name (as ``torch.nn.LSTM`` hands ``(h_n, c_n)`` over),
    the states not listed from zeros.
    """

    from_: Identifier = Field(
        alias="from", description="A recurrent layer or a non-sequence input."
    )
    bridge: Bridge = Field(
        "none", description="none: copy (sizes must match); dense: tanh(W h + b)."
    )
    states: Annotated[list[Identifier], Field(min_length=1, max_length=16)] | None = Field(
        None, description="Hand these states over depth by depth (e.g. [h, c])."
    )

    @field_validator("states")
    @classmethod
    def _unique_states(cls, states: list[str] | None) -> list[str] | None:
        return _unique(states) if states is not None else None


def bridge_params(layer: str, depth: int = 0, state: str | None = None) -> tuple[str, str]:
    """The matrix and bias of a dense bridge: one for the source's final h, or with
    ``init: {states: [...]}`` one per depth and state."""
    if state is None:
        return f"{layer}.bridge.W", f"{layer}.bridge.b"
    return f"{layer}.bridge.l{depth}.W_{state}", f"{layer}.bridge.l{depth}.b_{state}"


class Attention(_Model):
    """Attend over a sequence at every step (Bahdanau: additive; Luong: dot, general)."""

    memory: Identifier = Field(description="The sequence to attend over (an encoder).")
    score: Score = Field("additive", description="dot | general | additive")
    input_feeding: bool = Field(
        False,
        description="Luong 3.3: the attentional vector of step t-1 joins the input at step t.",
    )


class RecurrentEdge(_Model):
    """An extra edge across time: the value of ``from`` at ``t - delay`` joins the input."""

    from_: Identifier = Field(alias="from")
    delay: int = Field(1, ge=0, le=1024, description="Steps back in time; 0 means the same step.")


class RecurrentLayer(_Model):
    """A scan of a cell over time; ``depth`` stacked copies, one or two directions."""

    cell: Identifier = Field(description="A built-in cell (rnnc cells) or one under 'cells:'.")
    hidden: Size = Field(description="Width of each state.")
    input: References = Field(description="One name or a list, concatenated per step.")
    direction: Direction = "forward"
    merge: Merge = Field("concat", description="How the two directions combine.")
    depth: int = Field(1, ge=1, le=64, description="Number of stacked layers.")
    residual: bool = Field(False, description="Add each stacked layer's input to its output.")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, allow_inf_nan=False, description="Between stacked layers, in training."
    )
    init: Init | None = None
    param_init: dict[Identifier, FiniteFloat] = Field(
        default_factory=dict, description="A constant per cell parameter, e.g. {b_f: 1.0}."
    )
    attention: Attention | None = None
    feedback: Identifier | None = Field(
        None, description="A layer whose output at t-1 replaces the ground truth at t."
    )
    teacher_forcing: Probability | None = Field(
        None, description="Probability of feeding the ground truth (default 1 with feedback)."
    )
    recurrent: list[RecurrentEdge] = Field(default_factory=list, max_length=64)

    @property
    def inputs(self) -> tuple[str, ...]:
        return as_names(self.input)

    @property
    def directions(self) -> tuple[str, ...]:
        return {"forward": ("fwd",), "backward": ("bwd",), "bidirectional": ("fwd", "bwd")}[
            self.direction
        ]

    def links(self) -> list[str]:
        """What the layer starts from, attends to and feeds back, in words."""
        said = []
        if self.init is not None:
            states = f" ({', '.join(self.init.states)} layer by layer)" if self.init.states else ""
            bridge = " through a dense bridge" if self.init.bridge == "dense" else ""
            said.append(f"starts from {self.init.from_}{states}{bridge}")
        if self.attention is not None:
            feeding = " with input feeding" if self.attention.input_feeding else ""
            said.append(f"{self.attention.score} attention over {self.attention.memory}{feeding}")
        if self.feedback is not None:
            tf = 1.0 if self.teacher_forcing is None else self.teacher_forcing
            said.append(f"feeds back {self.feedback} (teacher forcing {tf:g})")
        return said

    @property
    def output_width(self) -> int:
        """Width of the layer's output per step (directions merged)."""
        both = self.direction == "bidirectional" and self.merge == "concat"
        return 2 * self.hidden if both else self.hidden


class DenseLayer(_Model):
    """An affine map ``activation(W @ input + b)`` applied at every step."""

    dense: Size = Field(description="Output width.")
    input: References
    activation: Activation = "identity"

    @property
    def inputs(self) -> tuple[str, ...]:
        return as_names(self.input)


class EmbeddingLayer(_Model):
    """A lookup table from token ids to vectors: parameter NAME.embedding (vocab, size)."""

    embedding: Size = Field(description="Embedding width.")
    input: Identifier = Field(description="A token input without 'embed'.")

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


LAYER_KINDS = {"cell": "recurrent", "dense": "dense", "embedding": "embedding"}


def _layer_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next((kind for key, kind in LAYER_KINDS.items() if key in value), None)
    kinds: dict[type, str] = {
        RecurrentLayer: "recurrent",
        DenseLayer: "dense",
        EmbeddingLayer: "embedding",
    }
    return kinds.get(type(value))


LayerSpec = Annotated[
    Annotated[RecurrentLayer, Tag("recurrent")]
    | Annotated[DenseLayer, Tag("dense")]
    | Annotated[EmbeddingLayer, Tag("embedding")],
    Discriminator(
        _layer_kind,
        custom_error_type="layer_kind",
        custom_error_message="a layer needs 'cell' (recurrent), 'dense' or 'embedding'",
    ),
]
Layer = RecurrentLayer | DenseLayer | EmbeddingLayer


# --- outputs and cells -------------------------------------------------------------------


class Output(Selection):
    """What the model returns: every step, the last step, a final state, the steps
    pooled, or a decoder's attention weights."""

    SELECTORS: ClassVar[tuple[str, ...]] = ("steps", "state", "pool", "attention")

    attention: Literal["weights"] | None = Field(
        None, description="weights: the decoder's attention weights, (B, T_target, T_source)."
    )


class CellSpec(_Model):
    """A cell written as equations; see docs/cells.md."""

    state: Annotated[list[Identifier], Field(min_length=1, max_length=16)]
    equations: Annotated[dict[Identifier, str], Field(min_length=1, max_length=64)]
    output: Identifier | None = Field(None, description="The state the cell outputs (default h).")

    @field_validator("state")
    @classmethod
    def _unique_states(cls, state: list[str]) -> list[str]:
        return _unique(state)


class GenerationOptions(_Model):
    """Defaults for ``generate`` (docs/decoding.md); every one can be overridden per call."""

    strategy: Literal["greedy", "beam", "sample"] = Field(
        "greedy", description="greedy: the argmax; beam: beam search; sample: draws."
    )
    max_steps: int = Field(50, ge=1, le=100_000, description="Tokens at most, the eos counted.")
    eos: int = Field(
        2, ge=0, description="The end-of-sequence token: a hypothesis ends at its first."
    )
    pad: int = Field(0, ge=0, description="Fills each hypothesis' tokens after its end.")
    beam: int = Field(5, ge=1, le=100_000, description="Live hypotheses per example.")
    n_best: int = Field(1, ge=1, le=100_000, description="Hypotheses returned per example.")
    length_penalty: float = Field(
        0.0, ge=-10.0, le=10.0, allow_inf_nan=False,
        description="Scores are log_probs / lengths ** length_penalty.",
    )  # fmt: skip
    temperature: float = Field(
        1.0, ge=0.0, le=1e6, allow_inf_nan=False, description="Sampling: logits / temperature."
    )
    top_k: int = Field(0, ge=0, description="Sampling: only the k likeliest tokens (0: all).")
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, allow_inf_nan=False,
        description="Sampling: the likeliest tokens whose probabilities reach p (nucleus).",
    )  # fmt: skip
    suppress: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=100_000)] = Field(
        default_factory=list, description="Tokens never generated."
    )


class Spec(_Model):
    """A whole rnnc spec (version 1)."""

    model_config = ConfigDict(title="rnnc spec", json_schema_extra={"$id": "rnnc.schema.json"})

    rnnc: Literal[1] = Field(description="Version of the spec language.")
    name: Identifier
    description: str = Field("", max_length=10_000)
    inputs: Annotated[dict[Identifier, InputSpec], Field(min_length=1, max_length=256)]
    layers: Annotated[dict[Identifier, LayerSpec], Field(min_length=1, max_length=256)]
    outputs: Annotated[dict[Identifier, Output], Field(min_length=1, max_length=256)]
    cells: Annotated[dict[Identifier, CellSpec], Field(max_length=64)] = Field(default_factory=dict)
    generation: GenerationOptions = Field(
        default_factory=lambda: GenerationOptions.model_validate({}),
        description="Defaults for generate.",
    )

    _source: SourceMap | None = PrivateAttr(default=None)

    @property
    def source(self) -> SourceMap | None:
        """Where each key was written, when the spec came from text."""
        return self._source

    @property
    def file(self) -> str | None:
        return self._source.file if self._source else None

    def recurrent_layers(self) -> dict[str, RecurrentLayer]:
        return {n: x for n, x in self.layers.items() if isinstance(x, RecurrentLayer)}

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None, **_: Any
    ) -> dict[str, Any]:
        """Jupyter shows a spec as its unrolled diagram (its DOT text without Graphviz)."""
        return notebook.mimebundle(self, "unrolled")


def strip_union_tags(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop the discriminator tag Pydantic puts after ``inputs.NAME`` and ``layers.NAME``."""
    if len(loc) >= 3 and loc[0] in ("inputs", "layers"):
        return (*loc[:2], *loc[3:])
    return loc
