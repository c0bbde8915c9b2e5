"""Property tests of the spec language (hypothesis).

1. Random *valid* specs, built as plain dicts and dumped to YAML, load, check without
   errors and unroll to an acyclic graph with depth x directions x steps cells per
   recurrent layer.
2. One mutation of a valid spec gives an error at the path the mutation touched,
   located on the line where that key or value is written in the YAML text.
3. Arbitrary text never escapes as anything but ``rnnc.SpecError``: not from
   ``parse_spec``/``check``, not from the CLI, not from ``parse_cell``.

Everything expected here is computed from the generated dicts and the dumped YAML
text, with the contract in DESIGN.md (built-in cell names, states and parameter names;
the keys of the spec language) as the only outside knowledge.

The run is bounded for CI: ``RNNC_HYPOTHESIS_EXAMPLES`` (default 40) sets the number
of examples of the spec properties (each mutation gets a quarter of it); the text
fuzzers run 3.75 times as many (150). A failing example is reported as found, without
shrinking, which can take minutes on these inputs; set ``RNNC_HYPOTHESIS_SHRINK=1`` to
have Hypothesis shrink it to a minimal one.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import itertools
import keyword
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import rnnc
from rnnc.front.functions import FUNCTIONS as CELL_FUNCTIONS
from rnnc.tools.cli import main

pytestmark = pytest.mark.slow

BASE_EXAMPLES = int(os.environ.get("RNNC_HYPOTHESIS_EXAMPLES", "40"))
SHRINK = os.environ.get("RNNC_HYPOTHESIS_SHRINK", "") not in ("", "0")


# The default run (make test, CI) draws the same examples every time, so a result does
# not depend on luck; asking for a number of examples explores new ones.
EXPLORE = "RNNC_HYPOTHESIS_EXAMPLES" in os.environ


def _settings(examples: int) -> settings:
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    return settings(
        max_examples=max(1, examples),
        derandomize=not EXPLORE,
        database=None if not EXPLORE else settings.default.database,
        deadline=None,
        phases=[*phases, Phase.shrink] if SHRINK else phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


SPEC_SETTINGS = _settings(BASE_EXAMPLES)
MUTATION_SETTINGS = _settings(BASE_EXAMPLES // 4)  # per mutation
TEXT_SETTINGS = _settings(round(BASE_EXAMPLES * 3.75))
STEPS = 3

# --- the contract (DESIGN.md) ----------------------------------------------------------

# Built-in cells: name -> (states, parameter names).
_LSTM_PARAMS = ("W_i", "W_f", "W_g", "W_o", "b_i", "b_f", "b_g", "b_o")
BUILTIN_CELLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rnn": (("h",), ("W", "b")),
    "rnn_relu": (("h",), ("W", "b")),
    "lstm": (("h", "c"), _LSTM_PARAMS),
    "lstm_peephole": (("h", "c"), (*_LSTM_PARAMS, "p_i", "p_f", "p_o")),
    "lstm_cifg": (("h", "c"), ("W_f", "W_g", "W_o", "b_f", "b_g", "b_o")),
    "gru": (("h",), ("W_r", "W_z", "W_in", "W_hn", "b_r", "b_z", "b_in", "b_hn")),
    "gru_reset_before": (("h",), ("W_r", "W_z", "W_n", "b_r", "b_z", "b_n")),
}
FUNCTIONS = tuple(CELL_FUNCTIONS)  # every function the cell language has

# The keys of each part of a spec.
TOP_KEYS = ("rnnc", "name", "description", "inputs", "layers", "outputs", "cells")
VECTOR_KEYS = ("size", "sequence")
TOKEN_KEYS = ("vocab", "embed", "sequence")
RECURRENT_KEYS = (
    "cell",
    "hidden",
    "input",
    "direction",
    "merge",
    "depth",
    "residual",
    "dropout",
    "init",
    "param_init",
    "attention",
    "feedback",
    "teacher_forcing",
    "recurrent",
)
DENSE_KEYS = ("dense", "input", "activation")
EMBEDDING_KEYS = ("embedding", "input")
OUTPUT_KEYS = ("from", "steps", "state")
INIT_KEYS = ("from", "bridge")
ATTENTION_KEYS = ("memory", "score")
CELL_KEYS = ("state", "equations", "output")
DIRECTIONS = ("forward", "backward", "bidirectional")
MERGES = ("concat", "sum", "mean", "mul")
ACTIVATIONS = ("identity", "tanh", "relu", "sigmoid", "softmax", "log_softmax")

# --- generating valid specs ------------------------------------------------------------


def _is_name(text: str) -> bool:
    return not keyword.iskeyword(text)


NAMES = st.builds(
    str.__add__,
    st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789_", max_size=7),
).filter(_is_name)
SIZES = st.integers(1, 48)
VOCABS = st.integers(2, 60)

STATE_POOL = ("c", "m", "s")  # user cell states besides h
LOCAL_POOL = ("a", "g", "k", "r", "u", "z")  # intermediate values of user cells


@dataclass
class UserCell:
    spec: dict[str, Any]
    states: tuple[str, ...]
    params: tuple[str, ...]


def _operand(draw: Any, names: list[str]) -> str:
    """The right side of '@': x, a hidden-wide value, or a concatenation of them."""
    parts = draw(st.lists(st.sampled_from(["x", *names]), min_size=1, max_size=3))
    if len(parts) == 1 and draw(st.booleans()):
        return parts[0]
    return "[" + ", ".join(parts) + "]"


def _term(draw: Any, names: list[str], fresh: Callable[[str], str], depth: int) -> str:
    """A hidden-wide expression of the equation language (its width never depends on sizes)."""
    kind = draw(st.integers(0, 7 if depth > 0 else 2))
    if kind == 0:
        return f"{fresh('W')} @ {_operand(draw, names)}"
    if kind == 1:
        return fresh("b")
    if kind == 2:
        return draw(st.sampled_from(names))
    if kind == 3:
        return f"{draw(st.sampled_from(FUNCTIONS))}({_term(draw, names, fresh, depth - 1)})"
    if kind == 4:
        op = draw(st.sampled_from(["+", "-", "*"]))
        left = _term(draw, names, fresh, depth - 1)
        right = _term(draw, names, fresh, depth - 1)
        if op == "*" and "@" in right:
            right = f"({right})"  # '@' and '*' bind alike: a * W @ x is (a * W) @ x
        return f"{left} {op} {right}"
    if kind == 5:
        number = draw(st.sampled_from(["1", "0.5", "2", "1e-3"]))
        return f"{number} * ({_term(draw, names, fresh, depth - 1)})"
    if kind == 6:
        return f"(1 - {_term(draw, names, fresh, depth - 1)})"
    return f"-({_term(draw, names, fresh, depth - 1)})"


@st.composite
def user_cells(draw: Any) -> UserCell:
    states = draw(
        st.permutations(
            ["h", *draw(st.lists(st.sampled_from(STATE_POOL), max_size=2, unique=True))]
        )
    )
    local = draw(st.lists(st.sampled_from(LOCAL_POOL), max_size=3, unique=True))
    order = draw(st.permutations([*local, *states]))
    last = max(i for i, target in enumerate(order) if target in states)
    order = [*order[:last], *order[last + 1 :], order[last]]  # a state's equation comes last
    counter = itertools.count()
    params: list[str] = []

    def fresh(prefix: str) -> str:
        params.append(f"{prefix}{next(counter)}")
        return params[-1]

    equations: dict[str, str] = {}
    for target in order:
        visible = [*states, *(n for n in equations if n not in states)]
        equations[target] = _term(draw, visible, fresh, depth=2)
    for n, target in enumerate(order[:-1]):  # every value is read (rnnc refuses dead ones)
        later = " ".join(equations[t] for t in order[n + 1 :])
        if target not in states and not re.search(rf"\b{target}\b", later):
            equations[order[-1]] += f" + {target}"
    spec: dict[str, Any] = {"state": list(states), "equations": equations}
    if len(states) > 1 and draw(st.booleans()):
        spec["output"] = draw(st.sampled_from(states))
    return UserCell(spec, tuple(states), tuple(params))


@dataclass
class Generated:
    """A valid spec as a dict, and what the generator knows about it."""

    spec: dict[str, Any]
    # node name -> width of its per-step value (None: token ids)
    widths: dict[str, int | None] = field(default_factory=dict)
    static: str | None = None  # the sequence: false input
    cells: dict[str, UserCell] = field(default_factory=dict)

    @property
    def layers(self) -> dict[str, Any]:
        return self.spec["layers"]

    def recurrent(self) -> list[str]:
        return [n for n, layer in self.layers.items() if "cell" in layer]

    def states_of(self, layer: str) -> tuple[str, ...]:
        cell = self.layers[layer]["cell"]
        return self.cells[cell].states if cell in self.cells else BUILTIN_CELLS[cell][0]

    def params_of(self, layer: str) -> tuple[str, ...]:
        cell = self.layers[layer]["cell"]
        return self.cells[cell].params if cell in self.cells else BUILTIN_CELLS[cell][1]

    def used_names(self) -> set[str]:
        return {
            *self.spec["inputs"],
            *self.layers,
            *self.spec["outputs"],
            *self.spec.get("cells", {}),
        }


def _output_width(layer: dict[str, Any]) -> int:
    both = layer.get("direction") == "bidirectional" and layer.get("merge", "concat") == "concat"
    return 2 * layer["hidden"] if both else layer["hidden"]


def _recurrent_layer(
    draw: Any, gen: Generated, inputs: list[str], hidden: int, *, forward: bool
) -> dict[str, Any]:
    cells = [*BUILTIN_CELLS, *gen.cells]
    cell = draw(st.sampled_from(cells))
    layer: dict[str, Any] = {"cell": cell, "hidden": hidden}
    layer["input"] = inputs[0] if len(inputs) == 1 and draw(st.booleans()) else list(inputs)
    if forward:
        if draw(st.booleans()):
            layer["direction"] = "forward"
    elif draw(st.booleans()):
        layer["direction"] = draw(st.sampled_from(DIRECTIONS))
    if draw(st.booleans()):
        layer["merge"] = draw(st.sampled_from(MERGES))
    if draw(st.booleans()):
        layer["depth"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        layer["residual"] = draw(st.booleans())
    if layer.get("depth", 1) > 1 and draw(st.booleans()):
        layer["dropout"] = draw(st.sampled_from([0.0, 0.1, 0.5]))
    params = gen.cells[cell].params if cell in gen.cells else BUILTIN_CELLS[cell][1]
    if params and draw(st.integers(0, 3)) == 0:
        chosen = draw(st.lists(st.sampled_from(params), min_size=1, max_size=2, unique=True))
        layer["param_init"] = {p: draw(st.sampled_from([0.0, 1.0, -0.5])) for p in chosen}
    return layer


def _sequence_input(draw: Any, gen: Generated, name: str, names: Any) -> str:
    """Add a sequence input; return the node that carries it as vectors."""
    kind = draw(st.sampled_from(["vector", "tokens", "embedding layer"]))
    spec: dict[str, Any]
    if kind == "vector":
        spec = {"size": draw(SIZES)}
        gen.widths[name] = spec["size"]
    else:
        spec = {"vocab": draw(VOCABS)}
        if kind == "tokens":
            spec["embed"] = draw(SIZES)
        gen.widths[name] = spec.get("embed")
    if draw(st.integers(0, 3)) == 0:
        spec["sequence"] = True
    gen.spec["inputs"][name] = spec
    if kind != "embedding layer":
        return name
    layer = next(names)
    gen.layers[layer] = {"embedding": draw(SIZES), "input": name}
    gen.widths[layer] = gen.layers[layer]["embedding"]
    return layer


@st.composite
def valid_specs(
    draw: Any,
    *,
    user_cell: bool = False,
    decoder: bool = False,
    attention: bool = False,
    feedback: bool = False,
    static: bool = False,
) -> Generated:
    """A random valid spec; the flags force a feature to be present."""
    taken: set[str] = set()

    def fresh_names() -> Any:
        while True:
            name = draw(NAMES)
            if name in taken or name in BUILTIN_CELLS:
                name = f"{name}_{len(taken)}"
            taken.add(name)
            yield name

    names = fresh_names()
    spec: dict[str, Any] = {"rnnc": 1, "name": next(names)}
    if draw(st.integers(0, 3)) == 0:
        spec["description"] = draw(
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
        )
    gen = Generated(spec)
    n_cells = draw(st.integers(1 if user_cell else 0, 2))
    if n_cells:
        spec["cells"] = {}
        for _ in range(n_cells):
            name = next(names)
            gen.cells[name] = draw(user_cells())
            spec["cells"][name] = gen.cells[name].spec
    spec["inputs"] = {}
    spec["layers"] = {}

    want_decoder = decoder or feedback or draw(st.booleans())
    want_static = static or draw(st.booleans())
    n_sequences = draw(st.integers(1, 3 - want_decoder - want_static))
    sources = [_sequence_input(draw, gen, next(names), names) for _ in range(n_sequences)]
    if want_static:
        gen.static = next(names)
        if draw(st.booleans()):
            spec["inputs"][gen.static] = {"size": draw(SIZES), "sequence": False}
        else:
            spec["inputs"][gen.static] = {
                "vocab": draw(VOCABS),
                "embed": draw(SIZES),
                "sequence": False,
            }
        gen.widths[gen.static] = spec["inputs"][gen.static].get(
            "size", spec["inputs"][gen.static].get("embed")
        )
    static_used = False

    def init_and_memory(layer_name: str, with_init: bool, with_attention: bool) -> tuple[Any, Any]:
        earlier = [n for n in gen.recurrent() if n != layer_name]
        init_from = None
        if with_init:
            options = ([gen.static] if gen.static else []) + earlier
            init_from = draw(st.sampled_from(options)) if options else None
        memory = draw(st.sampled_from(sources)) if with_attention else None
        return init_from, memory

    def add_links(layer: dict[str, Any], init_from: str | None, memory: str | None) -> None:
        hidden = layer["hidden"]
        if init_from is not None:
            width = gen.widths[init_from]
            same = width == hidden
            bridge = draw(st.sampled_from([None, "none", "dense"])) if same else "dense"
            layer["init"] = (
                {"from": init_from} if bridge is None else {"from": init_from, "bridge": bridge}
            )
        if memory is not None:
            scores = ["additive", "general"] + (["dot"] if gen.widths[memory] == hidden else [])
            score = draw(st.sampled_from([None, *scores]))
            layer["attention"] = (
                {"memory": memory} if score is None else {"memory": memory, "score": score}
            )

    def pick_hidden(*linked: str | None) -> int:
        widths = [gen.widths[n] for n in linked if n is not None]
        return draw(st.one_of(SIZES, st.sampled_from(widths))) if widths else draw(SIZES)

    # The encoder side: a stack of recurrent layers, some with dense heads.
    for _ in range(draw(st.integers(1, 3))):
        name = next(names)
        chosen = draw(st.lists(st.sampled_from(sources), min_size=1, max_size=2, unique=True))
        with_init = draw(st.integers(0, 3)) == 0 or (
            gen.static is not None and not static_used and not want_decoder
        )
        with_attention = (attention and not want_decoder) or draw(st.integers(0, 4)) == 0
        init_from, memory = init_and_memory(name, with_init, with_attention)
        layer = _recurrent_layer(
            draw, gen, chosen, pick_hidden(init_from, memory), forward=memory is not None
        )
        add_links(layer, init_from, memory)
        static_used |= init_from is not None and init_from == gen.static
        gen.layers[name] = layer
        gen.widths[name] = _output_width(layer)
        sources.append(name)
        if draw(st.integers(0, 2)) == 0:
            head = next(names)
            gen.layers[head] = {"dense": draw(SIZES), "input": name}
            if draw(st.booleans()):
                gen.layers[head]["activation"] = draw(st.sampled_from(ACTIVATIONS))
            gen.widths[head] = gen.layers[head]["dense"]
            sources.append(head)
            if layer.get("direction", "forward") == "forward" and draw(st.integers(0, 2)) == 0:
                # Output-to-hidden recurrence (Goodfellow Fig. 10.6); causal only forward.
                layer["recurrent"] = [{"from": head, "delay": draw(st.integers(1, 3))}]
        if draw(st.integers(0, 4)) == 0:
            # An extra edge across time from one of the layer's own inputs.
            edge = {"from": draw(st.sampled_from(chosen))}
            if draw(st.booleans()):
                edge["delay"] = draw(st.integers(0, 3))
            layer.setdefault("recurrent", []).append(edge)
    final = sources[-1]

    # The decoder: over a token input of its own, maybe with init, attention, feedback.
    if want_decoder:
        target = next(names)
        vocab = draw(VOCABS)
        spec["inputs"][target] = {"vocab": vocab, "embed": draw(SIZES)}
        gen.widths[target] = spec["inputs"][target]["embed"]
        name = next(names)
        with_init = (gen.static is not None and not static_used) or draw(st.booleans())
        with_attention = attention or draw(st.booleans())
        with_feedback = feedback or draw(st.booleans())
        init_from, memory = init_and_memory(name, with_init, with_attention)
        layer = _recurrent_layer(
            draw,
            gen,
            [target],
            pick_hidden(init_from, memory),
            forward=memory is not None or with_feedback,
        )
        add_links(layer, init_from, memory)
        static_used |= init_from is not None and init_from == gen.static
        gen.layers[name] = layer
        gen.widths[name] = _output_width(layer)
        final = name
        if with_feedback or draw(st.booleans()):
            head = next(names)
            gen.layers[head] = {"dense": vocab, "input": name}
            gen.widths[head] = vocab
            final = head
            if with_feedback:
                layer["feedback"] = head
                if draw(st.booleans()):
                    layer["teacher_forcing"] = draw(st.sampled_from([0.0, 0.25, 1.0, 1]))
    if gen.static is not None and not static_used:
        first = gen.recurrent()[0]
        gen.layers[first]["init"] = {"from": gen.static, "bridge": "dense"}

    # Outputs: the final node, and maybe one more.
    spec["outputs"] = {}
    for source in [final, *draw(st.lists(st.sampled_from(list(gen.layers)), max_size=1))]:
        out: dict[str, Any] = {"from": source}
        choice = draw(st.integers(0, 3))
        if choice == 1:
            out["steps"] = draw(st.sampled_from(["all", "last"]))
        elif choice == 2 and source in gen.recurrent():
            out["state"] = draw(st.sampled_from(gen.states_of(source)))
        spec["outputs"][next(names)] = out
    return gen


def any_valid_specs() -> st.SearchStrategy[Generated]:
    """Valid specs of every shape the generator knows: plain stacks, user cells,
    encoder-decoders with attention, feedback with a static input."""
    return st.one_of(
        valid_specs(),
        valid_specs(user_cell=True),
        valid_specs(decoder=True, attention=True),
        valid_specs(feedback=True, static=True),
    )


def dump(spec: dict[str, Any]) -> str:
    """Block-style YAML, one scalar per line (so a key's line is easy to find)."""
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=False, width=1_000_000)


def errors_of(text: str) -> list[rnnc.Diagnostic]:
    """Every error of a spec text: from loading if it fails, else from the checks."""
    try:
        spec = rnnc.parse_spec(text, "spec.yaml")
    except rnnc.SpecError as exc:
        return list(exc.errors)
    return [d for d in rnnc.check(spec) if d.severity == "error"]


def cells_per_layer(spec: dict[str, Any], steps: int) -> dict[str, int]:
    out = {}
    for name, layer in spec["layers"].items():
        if "cell" in layer:
            directions = 2 if layer.get("direction") == "bidirectional" else 1
            out[name] = layer.get("depth", 1) * directions * steps
    return out


# --- 1. valid specs pass ---------------------------------------------------------------


@SPEC_SETTINGS
@given(valid_specs())
def test_valid_specs_load_check_and_unroll(gen: Generated) -> None:
    text = dump(gen.spec)
    spec = rnnc.parse_spec(text, "spec.yaml")
    errors = [d for d in rnnc.check(spec) if d.severity == "error"]
    assert not errors, "\n".join(d.format() for d in errors) + "\n\n" + text

    unrolled = rnnc.unroll(rnnc.build_graph(spec), STEPS)
    assert nx.is_directed_acyclic_graph(unrolled)
    counted: dict[str, int] = {}
    for _, data in unrolled.nodes(data=True):
        if data.get("kind") == "cell":
            counted[data["layer"]] = counted.get(data["layer"], 0) + 1
    assert counted == cells_per_layer(gen.spec, STEPS)


@SPEC_SETTINGS
@given(
    st.one_of(
        valid_specs(user_cell=True),
        valid_specs(decoder=True, attention=True),
        valid_specs(feedback=True, static=True),
    )
)
def test_valid_specs_with_each_feature_pass(gen: Generated) -> None:
    text = dump(gen.spec)
    errors = errors_of(text)
    assert not errors, "\n".join(d.format() for d in errors) + "\n\n" + text
    assert nx.is_directed_acyclic_graph(rnnc.unroll(rnnc.build_graph(rnnc.parse_spec(text)), STEPS))


# --- 2. mutated specs fail at the right path -------------------------------------------


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def lines_of(text: str, path: tuple[str | int, ...]) -> set[int]:
    """The 1-based lines where ``path`` is written in block-style YAML from ``dump``.

    A key with a scalar value: its line. A key with a nested mapping or list: its line
    and the line its value starts on. A list item: its line.
    """
    lines = text.split("\n")
    lo, hi = 0, len(lines)
    found = -1
    for part in path:
        block = next((_indent(lines[i]) for i in range(lo, hi) if lines[i].strip()), 0)
        if isinstance(part, int):
            items = [i for i in range(lo, hi) if lines[i].startswith(" " * block + "- ")]
            found = items[part]
            # The item's own lines, read as a block two columns further in.
            lines[found] = " " * (block + 2) + lines[found][block + 2 :]
            lo = end = found
            while end + 1 < hi and _indent(lines[end + 1]) > block:
                end += 1
            hi = end + 1
        else:
            key = re.escape(part)
            pattern = re.compile(rf"(?:{key}|'{key}'|\"{key}\"):(?: |$)")
            found = next(
                i
                for i in range(lo, hi)
                if _indent(lines[i]) == block and pattern.match(lines[i][block:])
            )
            lo = end = found + 1
            # A nested value: deeper lines, or list items at the key's own column.
            while end < hi and (
                _indent(lines[end]) > block or lines[end].startswith(" " * block + "- ")
            ):
                end += 1
            hi = end
    if isinstance(path[-1], int) or not lines[found].rstrip().endswith(":"):
        return {found + 1}
    return {found + 1, found + 2}


@dataclass
class Mutation:
    spec: dict[str, Any]
    path: tuple[str | int, ...]
    says: str | None = None  # a fragment the error message must contain
    # Other paths as right as ``path`` (a problem made of two keys).
    alternatives: tuple[tuple[str | int, ...], ...] = ()


def _inputs_of(layer: dict[str, Any]) -> list[str]:
    return [layer["input"]] if isinstance(layer["input"], str) else list(layer["input"])


def _misspell(draw: Any, word: str, taken: tuple[str, ...]) -> str:
    """One edit of ``word`` that is not another key of the same part."""
    edits = []
    for i in range(len(word)):
        edits.append(word[:i] + word[i + 1 :])  # a letter dropped
        edits.append(word[:i] + word[i] + word[i:])  # a letter doubled
        if i + 1 < len(word) and word[i] != word[i + 1]:
            edits.append(word[:i] + word[i + 1] + word[i] + word[i + 2 :])  # two swapped
    edits = [e for e in edits if e and e not in taken and _is_name(e)]
    return draw(st.sampled_from(sorted(set(edits))))


def _copy(gen: Generated) -> dict[str, Any]:
    return copy.deepcopy(gen.spec)


def _rename_key(mapping: dict[str, Any], old: str, new: str) -> None:
    items = list(mapping.items())
    mapping.clear()
    mapping.update((new if k == old else k, v) for k, v in items)


def _fresh(draw: Any, gen: Generated) -> str:
    return draw(NAMES.filter(lambda n: n not in gen.used_names() and n not in BUILTIN_CELLS))


def _pick(draw: Any, options: list[str]) -> str:
    return draw(st.sampled_from(sorted(options)))


Mutator = Callable[[Any, Generated], Mutation]
MUTATIONS: dict[str, tuple[dict[str, bool], Mutator]] = {}


def mutation(**needs: bool) -> Callable[[Mutator], Mutator]:
    def register(fn: Mutator) -> Mutator:
        MUTATIONS[fn.__name__] = (needs, fn)
        return fn

    return register


@mutation()
def hidden_not_positive(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    spec["layers"][layer]["hidden"] = draw(st.integers(-3, 0))
    return Mutation(spec, ("layers", layer, "hidden"))


@mutation()
def hidden_as_text(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    spec["layers"][layer]["hidden"] = str(spec["layers"][layer]["hidden"])
    return Mutation(spec, ("layers", layer, "hidden"))


@mutation()
def depth_out_of_range(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    spec["layers"][layer]["depth"] = draw(st.sampled_from([0, -1, 65, True, 2.0]))
    return Mutation(spec, ("layers", layer, "depth"))


@mutation()
def direction_unknown(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    spec["layers"][layer]["direction"] = draw(NAMES.filter(lambda n: n not in DIRECTIONS))
    return Mutation(spec, ("layers", layer, "direction"), "forward")


@mutation()
def merge_unknown(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    spec["layers"][layer]["merge"] = draw(st.sampled_from(["add", "max", "avg", "Concat", "stack"]))
    return Mutation(spec, ("layers", layer, "merge"), "concat")


@mutation()
def dropout_one(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    spec["layers"][layer]["dropout"] = draw(st.sampled_from([1.0, 1, 1.5, -0.1]))
    return Mutation(spec, ("layers", layer, "dropout"))


@mutation(feedback=True)
def teacher_forcing_above_one(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    layer = _pick(draw, [n for n in gen.recurrent() if "feedback" in gen.layers[n]])
    spec["layers"][layer]["teacher_forcing"] = draw(st.sampled_from([2, 1.5, -1]))
    return Mutation(spec, ("layers", layer, "teacher_forcing"))


@mutation()
def teacher_forcing_without_feedback(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    layer = _pick(draw, [n for n in gen.recurrent() if "feedback" not in gen.layers[n]])
    spec["layers"][layer]["teacher_forcing"] = 0.5
    return Mutation(spec, ("layers", layer, "teacher_forcing"), "feedback")


def _key_sites(gen: Generated) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(path of a key, the keys its mapping allows) for every key a user may misspell."""
    spec = gen.spec
    sites: list[tuple[tuple[str, ...], tuple[str, ...]]] = [((k,), TOP_KEYS) for k in spec]
    for name, inp in spec["inputs"].items():
        keys: tuple[str, ...] = TOKEN_KEYS if "vocab" in inp else VECTOR_KEYS
        sites += [(("inputs", name, k), keys) for k in inp]
    for name, layer in spec["layers"].items():
        keys = (
            RECURRENT_KEYS
            if "cell" in layer
            else DENSE_KEYS
            if "dense" in layer
            else EMBEDDING_KEYS
        )
        sites += [(("layers", name, k), keys) for k in layer]
        for part, part_keys in (("init", INIT_KEYS), ("attention", ATTENTION_KEYS)):
            sites += [(("layers", name, part, k), part_keys) for k in layer.get(part, {})]
    for name, out in spec["outputs"].items():
        sites += [(("outputs", name, k), OUTPUT_KEYS) for k in out]
    for name, cell in spec.get("cells", {}).items():
        sites += [(("cells", name, k), CELL_KEYS) for k in cell]
    return sites


# The keys that tell an input's or a layer's kind apart.
KIND_KEYS = ("size", "vocab", "cell", "dense", "embedding")


def _misspell_key(draw: Any, gen: Generated, kind_keys: bool) -> Mutation:
    spec = _copy(gen)
    sites = [(p, a) for p, a in _key_sites(gen) if (p[-1] in KIND_KEYS) == kind_keys]
    path, allowed = draw(st.sampled_from(sites))
    wrong = _misspell(draw, path[-1], allowed)
    parent = spec
    for part in path[:-1]:
        parent = parent[part]
    _rename_key(parent, path[-1], wrong)
    # The suggestion names the key that was misspelled, unless another is as close.
    ratios = sorted((difflib.SequenceMatcher(None, wrong, k).ratio(), k) for k in allowed)
    closest = ratios[-1][1] == path[-1] and ratios[-2][0] < ratios[-1][0]
    says = f"did you mean {path[-1]!r}" if closest else "did you mean"
    return Mutation(spec, (*path[:-1], wrong), says)


@mutation()
def key_misspelled(draw: Any, gen: Generated) -> Mutation:
    return _misspell_key(draw, gen, kind_keys=False)


@mutation()
def kind_key_misspelled(draw: Any, gen: Generated) -> Mutation:
    """A misspelled 'cell', 'dense', 'embedding', 'size' or 'vocab'."""
    return _misspell_key(draw, gen, kind_keys=True)


@mutation()
def key_unknown_at_top(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    key = draw(NAMES.filter(lambda n: n not in TOP_KEYS))
    spec[key] = draw(st.sampled_from([1, "x", [1, 2], None]))
    return Mutation(spec, (key,), "unknown key")


@mutation()
def key_unknown_in_layer(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, list(gen.layers))
    allowed = set(RECURRENT_KEYS + DENSE_KEYS + EMBEDDING_KEYS)
    key = draw(NAMES.filter(lambda n: n not in allowed))
    spec["layers"][layer][key] = 1
    return Mutation(spec, ("layers", layer, key), "unknown key")


def _reference_sites(gen: Generated) -> list[tuple[str | int, ...]]:
    sites: list[tuple[str | int, ...]] = []
    for name, layer in gen.layers.items():
        if isinstance(layer["input"], str):
            sites.append(("layers", name, "input"))
        else:
            sites += [("layers", name, "input", i) for i in range(len(layer["input"]))]
        if "init" in layer:
            sites.append(("layers", name, "init", "from"))
        if "attention" in layer:
            sites.append(("layers", name, "attention", "memory"))
        if "feedback" in layer:
            sites.append(("layers", name, "feedback"))
        sites += [
            ("layers", name, "recurrent", i, "from") for i in range(len(layer.get("recurrent", [])))
        ]
    sites += [("outputs", name, "from") for name in gen.spec["outputs"]]
    return sites


def _set(spec: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    parent: Any = spec
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value


@mutation()
def reference_missing(draw: Any, gen: Generated) -> Mutation:
    spec, path = _copy(gen), draw(st.sampled_from(_reference_sites(gen)))
    _set(spec, path, _fresh(draw, gen))
    return Mutation(spec, path, "unknown name")


@mutation()
def reference_is_keyword(draw: Any, gen: Generated) -> Mutation:
    spec, path = _copy(gen), draw(st.sampled_from(_reference_sites(gen)))
    word = draw(st.sampled_from(["class", "lambda", "None", "def", "yield"]))
    _set(spec, path, word)
    return Mutation(spec, path, repr(word))


@mutation()
def recurrent_delay_negative(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    edges = spec["layers"][layer].setdefault("recurrent", [])
    if not edges:
        edges.append({"from": _inputs_of(gen.layers[layer])[0]})
    i = draw(st.integers(0, len(edges) - 1))
    edges[i]["delay"] = draw(st.sampled_from([-1, -3, 1025]))
    return Mutation(spec, ("layers", layer, "recurrent", i, "delay"))


@mutation()
def cell_unknown(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    cell = _misspell(draw, draw(st.sampled_from(sorted(BUILTIN_CELLS))), tuple(BUILTIN_CELLS))
    spec["layers"][layer]["cell"] = cell
    return Mutation(spec, ("layers", layer, "cell"), "did you mean")


@mutation(user_cell=True)
def equation_with_power(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    cell = _pick(draw, list(gen.cells))
    equations = spec["cells"][cell]["equations"]
    target = _pick(draw, list(equations))
    equations[target] = f"({equations[target]}) ** 2"
    return Mutation(spec, ("cells", cell, "equations", target), "**")


@mutation(user_cell=True)
def equation_unknown_function(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    cell = _pick(draw, list(gen.cells))
    equations = spec["cells"][cell]["equations"]
    target = _pick(draw, list(equations))
    function = draw(st.sampled_from(["exp", "softmax", "sigmod", "tan"]))
    equations[target] = f"{function}({equations[target]})"
    return Mutation(spec, ("cells", cell, "equations", target), repr(function))


@mutation(attention=True)
def score_unknown(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    layer = _pick(draw, [n for n in gen.recurrent() if "attention" in gen.layers[n]])
    spec["layers"][layer]["attention"]["score"] = draw(st.sampled_from(["mlp", "Dot", "bahdanau"]))
    return Mutation(spec, ("layers", layer, "attention", "score"), "additive")


@mutation(attention=True)
def score_dot_size_mismatch(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    layer = _pick(draw, [n for n in gen.recurrent() if "attention" in gen.layers[n]])
    memory = gen.layers[layer]["attention"]["memory"]
    assert gen.widths[memory] is not None
    spec["layers"][layer]["attention"]["score"] = "dot"
    if gen.widths[memory] == gen.layers[layer]["hidden"]:
        spec["layers"][layer]["hidden"] += 1
        spec["layers"][layer].pop("init", None)
    return Mutation(spec, ("layers", layer, "attention", "score"), "dot")


@mutation(feedback=True)
def feedback_not_forward(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    layer = _pick(draw, [n for n in gen.recurrent() if "feedback" in gen.layers[n]])
    spec["layers"][layer]["direction"] = draw(st.sampled_from(["backward", "bidirectional"]))
    spec["layers"][layer].pop("attention", None)
    return Mutation(
        spec, ("layers", layer, "feedback"), alternatives=(("layers", layer, "direction"),)
    )


@mutation(attention=True)
def attention_not_forward(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    layer = _pick(draw, [n for n in gen.recurrent() if "attention" in gen.layers[n]])
    spec["layers"][layer]["direction"] = draw(st.sampled_from(["backward", "bidirectional"]))
    return Mutation(spec, ("layers", layer, "direction"), "forward")


@mutation(static=True)
def bridge_unknown(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    layer = _pick(draw, [n for n in gen.recurrent() if "init" in gen.layers[n]])
    spec["layers"][layer]["init"]["bridge"] = draw(st.sampled_from(["linear", "copy", "Dense"]))
    return Mutation(spec, ("layers", layer, "init", "bridge"), "dense")


@mutation()
def version_unknown(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    spec["rnnc"] = draw(st.sampled_from([0, 2, "1", 1.5]))
    return Mutation(spec, ("rnnc",))


@mutation()
def spec_name_invalid(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    spec["name"] = draw(st.sampled_from(["1abc", "my-model", "class", "two words", "", "__init__"]))
    return Mutation(spec, ("name",))


@mutation()
def layer_name_keyword(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, list(gen.layers))
    word = draw(st.sampled_from(["class", "for", "import", "True"]))
    _rename_key(spec["layers"], layer, word)
    return Mutation(spec, ("layers", word), repr(word))


@mutation()
def input_size_not_positive(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    name = _pick(draw, list(gen.spec["inputs"]))
    key = _pick(draw, [k for k in gen.spec["inputs"][name] if k != "sequence"])
    spec["inputs"][name][key] = 0
    return Mutation(spec, ("inputs", name, key))


@mutation()
def output_steps_unknown(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    name = _pick(draw, list(gen.spec["outputs"]))
    spec["outputs"][name].pop("state", None)
    spec["outputs"][name]["steps"] = draw(st.sampled_from(["first", "every", "Last"]))
    return Mutation(spec, ("outputs", name, "steps"), "last")


@mutation()
def output_state_unknown(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    name = _pick(draw, list(gen.spec["outputs"]))
    layer = _pick(draw, gen.recurrent())
    states = gen.states_of(layer)
    state = draw(st.sampled_from(["q", "cc", "hidden", "c", "m"]).filter(lambda s: s not in states))
    spec["outputs"][name] = {"from": layer, "state": state}
    return Mutation(spec, ("outputs", name, "state"), repr(state))


@mutation()
def param_init_unknown(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    params = gen.params_of(layer)
    param = draw(st.sampled_from(["b_x", "W_q", "bias", "p_z"]).filter(lambda p: p not in params))
    spec["layers"][layer].setdefault("param_init", {})[param] = 1.0
    return Mutation(spec, ("layers", layer, "param_init", param), repr(param))


@mutation(decoder=True)
def token_input_not_embedded(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    sites = []
    for site in _reference_sites(gen):
        if site[0] == "layers" and site[2] == "input":
            source = gen.layers[str(site[1])]["input"]
            source = source if isinstance(source, str) else source[site[3]]
            if source in gen.spec["inputs"] and "embed" in gen.spec["inputs"][source]:
                sites.append((site, source))
    site, source = draw(st.sampled_from(sites))
    del spec["inputs"][source]["embed"]
    return Mutation(spec, site, "embed")


@mutation(static=True)
def recurrent_input_not_a_sequence(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    spec["layers"][layer]["input"] = gen.static
    spec["layers"][layer].pop("feedback", None)
    spec["layers"][layer].pop("teacher_forcing", None)
    return Mutation(spec, ("layers", layer, "input"), "sequence")


@mutation()
def layer_named_like_input(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    name = _pick(draw, list(gen.spec["inputs"]))
    spec["layers"][name] = {"dense": 3, "input": _pick(draw, gen.recurrent())}
    return Mutation(spec, ("layers", name), repr(name))


@st.composite
def mutated_specs(draw: Any, name: str) -> tuple[str, Mutation]:
    needs, mutate = MUTATIONS[name]
    result = mutate(draw, draw(valid_specs(**needs)))
    return dump(result.spec), result


@mutation(static=True)
def attention_memory_not_a_sequence(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    spec["layers"][layer]["attention"] = {"memory": gen.static}
    spec["layers"][layer]["direction"] = "forward"
    return Mutation(spec, ("layers", layer, "attention", "memory"), "sequence")


@mutation()
def init_from_a_sequence(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    sequences = [n for n, inp in gen.spec["inputs"].items() if inp.get("sequence", True)]
    source = _pick(draw, sequences)
    spec["layers"][layer]["init"] = {"from": source, "bridge": "dense"}
    return Mutation(spec, ("layers", layer, "init", "from"), "sequence")


@mutation(static=True)
def init_without_bridge_size_mismatch(draw: Any, gen: Generated) -> Mutation:
    spec, layer = _copy(gen), _pick(draw, gen.recurrent())
    assert gen.static is not None
    width = gen.widths[gen.static]
    assert width is not None
    spec["layers"][layer]["init"] = {"from": gen.static, "bridge": "none"}
    spec["layers"][layer]["hidden"] = width + draw(st.integers(1, 3))
    spec["layers"][layer].pop("attention", None)
    init = ("layers", layer, "init")
    return Mutation(spec, init, "dense", alternatives=((*init, "bridge"), (*init, "from")))


@mutation(feedback=True)
def feedback_size_mismatch(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    layer = _pick(draw, [n for n in gen.recurrent() if "feedback" in gen.layers[n]])
    head = gen.layers[layer]["feedback"]
    spec["layers"][head]["dense"] += draw(st.integers(1, 3))
    return Mutation(spec, ("layers", layer, "feedback"), alternatives=(("layers", head, "dense"),))


@mutation()
def output_from_token_ids(draw: Any, gen: Generated) -> Mutation:
    spec = _copy(gen)
    name = _pick(draw, list(gen.spec["inputs"]))
    spec["inputs"][name] = {"vocab": 7}
    out = _pick(draw, list(gen.spec["outputs"]))
    spec["outputs"][out] = {"from": name}
    return Mutation(spec, ("outputs", out, "from"), "token")


@mutation(user_cell=True)
def cell_state_listed_twice(draw: Any, gen: Generated) -> Mutation:
    spec, cell = _copy(gen), _pick(draw, list(gen.cells))
    states = spec["cells"][cell]["state"]
    twice = draw(st.sampled_from(states))
    states.insert(draw(st.integers(states.index(twice) + 1, len(states))), twice)
    second = ("cells", cell, "state", len(states) - 1 - states[::-1].index(twice))
    return Mutation(spec, ("cells", cell, "state"), "twice", alternatives=(second,))


@mutation(user_cell=True)
def cell_state_never_assigned(draw: Any, gen: Generated) -> Mutation:
    spec, cell = _copy(gen), _pick(draw, list(gen.cells))
    spec["cells"][cell]["state"].append(draw(st.sampled_from(["q", "n_", "state2"])))
    return Mutation(spec, ("cells", cell, "state"), "never assigned")


@mutation(user_cell=True)
def equation_uses_a_later_value(draw: Any, gen: Generated) -> Mutation:
    spec, cell = _copy(gen), _pick(draw, list(gen.cells))
    equations = spec["cells"][cell]["equations"]
    reordered = {"early": "sigmoid(late)", **equations, "late": "tanh(W_late @ x)"}
    equations.clear()
    equations.update(reordered)
    return Mutation(spec, ("cells", cell, "equations", "early"), "'late'")


_PLACEHOLDER = re.compile(r"\{\w+(?:![rsa])?\}")


@MUTATION_SETTINGS
@pytest.mark.parametrize("name", sorted(MUTATIONS))
@given(data=st.data())
def test_mutated_specs_fail_at_the_right_path(name: str, data: st.DataObject) -> None:
    text, change = data.draw(mutated_specs(name))
    errors = errors_of(text)
    report = "\n".join(d.format() for d in errors) + "\n\n" + text
    assert errors, f"the mutation was accepted\n\n{text}"
    for d in errors:
        assert not _PLACEHOLDER.search(d.message), f"unformatted message: {d.message}"
    at_path = [d for d in errors if d.path in (change.path, *change.alternatives)]
    assert at_path, f"no error at {change.path}:\n{report}"
    located = [
        d for d in at_path if d.location is not None and d.location.line in lines_of(text, d.path)
    ]
    assert located, f"an error at {change.path} but not on the line it is written on:\n{report}"
    for d in located:
        assert d.location is not None
        assert 1 <= d.location.col <= len(text.split("\n")[d.location.line - 1]) + 1
    if change.says is not None:
        assert any(change.says in d.message for d in located), (
            f"no error at {change.path} says {change.says!r}:\n{report}"
        )


# --- 3. arbitrary text never produces a traceback --------------------------------------

YAML_TOKENS = (
    "rnnc: 1",
    "rnnc: 2",
    "name: m",
    "inputs:",
    "layers:",
    "outputs:",
    "cells:",
    "x: {size: 3}",
    "t: {vocab: 5, embed: 2}",
    "l: {cell: lstm, hidden: 4, input: x}",
    "o: {from: l}",
    "cell: gru",
    "hidden: 0",
    "input: [x, x]",
    "init: {from: l, bridge: dense}",
    "attention: {memory: l, score: dot}",
    "feedback: l",
    "state: [h]",
    "equations:",
    "h: tanh(W @ [x, h] + b)",
    "h: h ** 2",
    "{",
    "}",
    "[",
    "]",
    ": ",
    ":",
    ",",
    "- ",
    "-",
    "&a ",
    "*a",
    "&a [*a]",
    "<<: *a",
    "!!python/object:os.system",
    "!!python/name:os.system",
    "!!binary aGk=",
    "!!set {a}",
    "!!omap [a: 1]",
    "!custom x",
    "? ",
    "---",
    "...",
    "%YAML 1.1",
    "%TAG ! tag:x,2000:",
    "|",
    ">-",
    "'",
    '"',
    "\\",
    "#",
    "\t",
    "  ",
    "\n",
    "\r\n",
    "\x00",
    "\ufeff",
    "~",
    "null",
    "yes",
    "1e999",
    ".nan",
    "-.inf",
    "0x1F",
    "2001-12-14",
    "9" * 40,
    "é",
    "\U0001f600",
)

yaml_fragments = st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=4), max_size=40).map(
    "".join
)
deep_nesting = st.builds(
    lambda n, opener, closer, leaf: opener * n + leaf + closer * n,
    st.integers(1, 3000),
    st.sampled_from(["[", "{a: ", "- ", "{", "[a, "]),
    st.sampled_from(["]", "}", "", "]]"]),
    st.sampled_from(["", "1", "x", "*a", "&a x"]),
)
indented_nesting = st.integers(1, 200).map(
    lambda n: "".join(f"{' ' * i}k{i}:\n" for i in range(n)) + " " * n + "v\n"
)


@st.composite
def corrupted_specs(draw: Any) -> str:
    """A valid spec with a few random edits: lines dropped, doubled, re-indented or spliced."""
    lines = dump(draw(valid_specs()).spec).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.integers(0, 4))
        if edit == 0:
            del lines[i]
        elif edit == 1:
            lines.insert(i, lines[i])
        elif edit == 2:
            lines[i] = draw(st.sampled_from(["", " ", "  ", "\t"])) + lines[i].strip()
        elif edit == 3:
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.sampled_from(YAML_TOKENS)) + lines[i][at:]
        else:
            key, _, _ = lines[i].partition(":")
            lines[i] = f"{key}: {draw(st.sampled_from(YAML_TOKENS))}"
        if not lines:
            break
    return "\n".join(lines)


EQUATION_TOKENS = (
    "x",
    "h",
    "c",
    "W",
    "b",
    "W_i",
    "__class__",
    "__import__",
    "sigmoid",
    "tanh",
    "relu",
    "exp",
    "lambda",
    "(",
    ")",
    "[",
    "]",
    ",",
    " ",
    "@",
    "+",
    "-",
    "*",
    "**",
    "/",
    "%",
    "~",
    "not ",
    " if ",
    " else ",
    ":=",
    ".",
    "'s'",
    "f'{x}'",
    "1",
    "0.5",
    "1e999",
    "1j",
    "True",
    "None",
    "...",
    "9" * 400,
    "0x" + "f" * 300,
    "\t",
    "\n",
    "\x00",
    "é",
)
EQUATION_LEAVES = (
    "x",
    "h",
    "c",
    "W",
    "b",
    "sigmoid",
    "__x__",
    "0",
    "1",
    "0.5",
    "1e999",
    "9" * 400,
    "True",
    "None",
    "'s'",
    "1j",
)
equation_trees = st.recursive(
    st.sampled_from(EQUATION_LEAVES),
    lambda inner: st.one_of(
        st.builds(
            "{} {} {}".format,
            inner,
            st.sampled_from(["+", "-", "*", "@", "**", "/", "<", "and", "if h else"]),
            inner,
        ),
        inner.map("({})".format),
        inner.map("-{}".format),
        inner.map("~{}".format),
        st.builds(
            "{}({})".format,
            st.sampled_from([*FUNCTIONS, "exp", "W", "h.T"]),
            st.lists(inner, max_size=2).map(", ".join),
        ),
        st.lists(inner, max_size=3).map(lambda parts: "[" + ", ".join(parts) + "]"),
        inner.map("{}[0]".format),
    ),
    max_leaves=12,
)
number_text = st.one_of(
    st.integers(-(10**500), 10**500).map(str),
    st.floats().map(repr),
    st.sampled_from(["1e999", "1.5e-400", "0x" + "f" * 300, "0b101", "0o17", "1_000", "1j"]),
)
equation_text = st.one_of(
    equation_trees,
    st.builds("{} * {}".format, number_text, st.sampled_from(["h", "tanh(W @ [x, h])"])),
    st.text(max_size=200),
    st.lists(st.sampled_from(EQUATION_TOKENS), max_size=60).map("".join),
    st.builds(
        lambda n, op, leaf: op * n + leaf + ")" * n * (op.endswith("(")),
        st.integers(1, 1200),
        st.sampled_from(["-", "(", "tanh(", "[", "W @ ", "h + ", "h * "]),
        st.sampled_from(["x", "h", "1", "[x, h]"]),
    ),
)


@st.composite
def fuzzed_equations(draw: Any) -> str:
    """A valid spec with one of its cell equations replaced by arbitrary text."""
    gen = draw(valid_specs(user_cell=True))
    cell = draw(st.sampled_from(sorted(gen.cells)))
    equations = gen.spec["cells"][cell]["equations"]
    equations[draw(st.sampled_from(sorted(equations)))] = draw(equation_text)
    return dump(gen.spec)


any_text = st.one_of(
    st.text(),
    st.binary().map(lambda raw: raw.decode("utf-8", errors="replace")),
    yaml_fragments,
    deep_nesting,
    indented_nesting,
    corrupted_specs(),
    fuzzed_equations(),
)


def check_text(text: str) -> None:
    """parse_spec then check: only SpecError may come out."""
    try:
        spec = rnnc.parse_spec(text, "fuzz.yaml")
    except rnnc.SpecError as exc:
        assert exc.diagnostics, "a SpecError without diagnostics"
        for d in exc.diagnostics:
            assert isinstance(d.format(), str)
        return
    for d in rnnc.check(spec):
        assert isinstance(d.format(), str)


@TEXT_SETTINGS
@given(any_text)
def test_arbitrary_text_only_raises_spec_error(text: str) -> None:
    check_text(text)


def run_check(spec_file: Path, raw: bytes) -> tuple[int, str]:
    """``rnnc check`` on a file holding ``raw``, in this process: exit code and output."""
    spec_file.write_bytes(raw)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", str(spec_file)])
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file every example overwrites (Hypothesis runs examples one at a time)."""
    return tmp_path_factory.mktemp("fuzz") / "spec.yaml"


@TEXT_SETTINGS
@given(raw=st.one_of(any_text.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary()))
def test_cli_check_on_arbitrary_files_exits_cleanly(spec_file: Path, raw: bytes) -> None:
    code, output = run_check(spec_file, raw)
    assert code in (0, 1), output
    assert "Traceback" not in output
    assert "internal error" not in output


@SPEC_SETTINGS
@given(gen=valid_specs())
def test_cli_check_accepts_valid_specs(spec_file: Path, gen: Generated) -> None:
    code, output = run_check(spec_file, dump(gen.spec).encode("utf-8"))
    assert code == 0, output
    assert "Traceback" not in output


@TEXT_SETTINGS
@given(equation_text)
def test_arbitrary_equations_give_a_cell_or_errors(text: str) -> None:
    cell, problems = rnnc.parse_cell("fuzz", ["h"], {"h": text})
    if cell is None:
        assert problems
        assert all(isinstance(p.message, str) and p.message for p in problems)
    else:
        assert isinstance(cell, rnnc.Cell)
        assert not problems
