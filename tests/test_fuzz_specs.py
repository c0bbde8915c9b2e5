"""Mutation fuzzing of the gallery specs (hypothesis).

Each example takes a gallery spec (as written, with its comments and flow mappings,
or re-dumped in block style) and edits it one to four times:

- bytes: a bit flipped, bytes inserted or deleted (so also invalid UTF-8);
- lines: deleted, duplicated, swapped, re-indented, or a YAML fragment put in;
- values in the text: a number made negative, zero, huge, a float or a string; a name
  made a keyword, a dunder, a built-in cell's name or an unknown name;
- keys and values in the data: a key renamed, dropped or added, a value replaced;
- cell equations (the gallery's user cells, and built-in cells grafted into every
  spec as user cells): operators, function names and numbers replaced, attribute
  access, lambdas, strings, calls and deep nesting put in.

The property: ``rnnc.parse_spec`` then ``rnnc.check`` and ``rnnc.analyze`` give a
spec or raise ``rnnc.SpecError``, never another exception; every diagnostic, raised
or returned, names the file and a line of the text; each example takes under a
second. A spec that checks without errors compiles on the NumPy backend (float64) or
raises ``rnnc.RnncError`` -- unless its parameters hold more than
``MAX_COMPILED_VALUES`` numbers: those are only checked (compiling used to allocate the
parameters, and ``hidden: 65536`` asked for tens of gigabytes; it no longer does, but a
return of that would take the machine's memory instead of failing a test).

The run is bounded like tests/test_properties.py: ``EXAMPLES`` per test, the same ones
every run; ``RNNC_HYPOTHESIS_EXAMPLES=N`` runs N per test and explores new ones.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import re
import time
from collections.abc import Sequence
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import rnnc
from rnnc.front.load import read_package_text
from rnnc.runtime.params import count, param_shapes
from tests.conftest import GALLERY
from tests.test_properties import (
    EQUATION_TOKENS,
    EXPLORE,
    FUNCTIONS,
    YAML_TOKENS,
    _settings,
    dump,
    equation_text,
)

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ["RNNC_HYPOTHESIS_EXAMPLES"]) if EXPLORE else 200
FUZZ_SETTINGS = _settings(EXAMPLES)

# A generous bound: parse, check and analyze of a gallery-sized spec take ~10 ms. On a
# machine busy with other work a slow example may cross it; it is wall-clock time.
SECONDS_PER_EXAMPLE = 1.0
# Larger specs are not compiled (see the module docstring).
MAX_COMPILED_VALUES = 10_000_000
FILE = "fuzz.yaml"

# --- the bases: every gallery spec as written and in block style -------------------------

TEXTS = {path.stem: path.read_text(encoding="utf-8") for path in GALLERY}
DATA = {name: yaml.safe_load(text) for name, text in TEXTS.items()}
BASES = sorted(
    [*TEXTS.items(), *((f"{name} (block style)", dump(data)) for name, data in DATA.items())]
)
BUILTIN_CELLS = yaml.safe_load(read_package_text("cells.yaml"))

# --- pools of replacements -----------------------------------------------------------------

NUMBERS = (
    "-1",
    "0",
    "-0",
    "1",
    "2",
    "64",
    "65",
    "65536",
    "65537",
    "1000000",
    "1000001",
    "4294967296",
    "9" * 40,
    "-" + "9" * 40,
    "1.0",
    "0.5",
    "-0.5",
    "1.5",
    "1e308",
    "-1e308",
    "1e309",
    "1e-320",
    ".nan",
    ".inf",
    "-.inf",
    "0x10",
    "0o17",
    "1_000",
    "'3'",
    '"3"',
    "three",
    "true",
    "null",
    "~",
    "[]",
    "{}",
    "[1, 2]",
)
NAMES = (
    *("class", "lambda", "None", "True", "def", "import", "match", "_"),
    *("__init__", "__class__", "__import__", "a" * 64, "a" * 65, "x", "h", "c"),
    *("lstm", "gru", "rnn", "tanh", "sigmoid", "W", "b_f", "unknown", "nope_1"),
    *("é", "1a", "a-b", "a.b", "", "''", "yes", "no", "on", "off"),
)
KEYS = (
    *("rnnc", "name", "inputs", "layers", "outputs", "cells", "description"),
    *("size", "vocab", "embed", "sequence", "cell", "hidden", "input", "dense", "embedding"),
    *("direction", "merge", "depth", "residual", "dropout", "init", "param_init"),
    *("attention", "feedback", "teacher_forcing", "recurrent", "activation", "from"),
    *("steps", "state", "bridge", "memory", "score", "delay", "equations", "output"),
    *("unknown", "Hidden", "hiden", "x", "class", "__class__", "1", "true", "null", ""),
)
VALUES: tuple[Any, ...] = (
    *(-1, 0, 1, 2, 3, 64, 65, 1024, 1025, 65536, 65537, 10**6, 10**6 + 1, 2**63, 10**400),
    *(0.0, -0.0, 0.5, 1.0, 1.5, -1e6, 1e6 + 1, 1e308, float("inf"), float("-inf"), float("nan")),
    *("", "x", "lstm", "gru", "class", "None", "__init__", "a" * 65, "é", "1", "3"),
    *("forward", "backward", "bidirectional", "concat", "dense", "additive", "dot", "all"),
    *(True, False, None, [], {}, ["x"], ["x", "x"], [1], {"from": "x"}, {"a": {"b": []}}),
)
INTERESTING_BYTES = (
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xe2\x80",
    b"\xef\xbb\xbf",
    b"\t",
    b"\r",
    b"\n",
    b"\x85",
    b":",
    b"-",
    b"[",
    b"{",
    b"&a ",
    b"*a",
    b"!!",
    b"'",
    b'"',
    b"#",
    b"%",
    b"|",
)

# Scalars written in the text, outside comments: names and numbers.
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|-?[0-9][0-9.e+-]*")
_COMMENT = re.compile(r"(^|\s)#.*$", re.M)


def _tokens(text: str) -> list[re.Match[str]]:
    comments = [(m.start(), m.end()) for m in _COMMENT.finditer(text)]
    return [m for m in _TOKEN.finditer(text) if not any(a <= m.start() < b for a, b in comments)]


EDITS = st.sampled_from([1, 1, 1, 2, 3, 4])  # edits per example: mostly one


def _positions(draw: Any) -> random.Random:
    """Where to edit: uniform over the text (Hypothesis's own integers favour the start,
    and a spec's first line is its version)."""
    return random.Random(draw(st.integers(0, 2**32 - 1)))


# --- text edits ----------------------------------------------------------------------------


def _byte_edit(draw: Any, rng: random.Random, raw: bytes) -> bytes:
    at = rng.randint(0, len(raw))
    kind = draw(st.sampled_from(["flip", "insert", "delete"]))
    if kind == "flip" and at < len(raw):
        bit = 1 << rng.randrange(8)
        return raw[:at] + bytes([raw[at] ^ bit]) + raw[at + 1 :]
    if kind == "insert":
        new = draw(st.sampled_from(INTERESTING_BYTES) | st.binary(min_size=1, max_size=4))
        return raw[:at] + new + raw[at:]
    return raw[:at] + raw[at + rng.randint(1, 8) :]


def _line_edit(draw: Any, rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    kind = draw(st.sampled_from(["delete", "duplicate", "swap", "indent", "fragment"]))
    if kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, lines[i])
    elif kind == "swap":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "indent":
        indent = draw(st.sampled_from(["", " ", "   ", "    ", "        ", "\t", " \t"]))
        lines[i] = indent + lines[i].lstrip()
    else:
        lines.insert(i, draw(st.sampled_from(YAML_TOKENS)))
    return "\n".join(lines)


def _value_edit(draw: Any, rng: random.Random, text: str) -> str:
    tokens = _tokens(text)
    if not tokens:
        return text
    token = rng.choice(tokens)
    pool = NUMBERS if token.group()[0] in "-0123456789" else NAMES
    written = sorted({t.group() for t in tokens})  # another name of this spec: a new link
    new = draw(st.sampled_from(pool) | st.sampled_from(written) | st.sampled_from(NUMBERS + NAMES))
    return text[: token.start()] + new + text[token.end() :]


@st.composite
def text_mutants(draw: Any) -> tuple[str, str | bytes]:
    """A gallery spec with one to four byte, line or value edits (bytes: maybe not UTF-8)."""
    name, text = draw(st.sampled_from(BASES))
    rng = _positions(draw)
    edited: str | bytes = text
    for _ in range(draw(EDITS)):
        kind = draw(st.sampled_from(["byte", "line", "value", "value"]))
        if kind == "byte":
            raw = edited if isinstance(edited, bytes) else edited.encode("utf-8")
            edited = _byte_edit(draw, rng, raw)
            continue
        if isinstance(edited, bytes):
            edited = edited.decode("utf-8", errors="replace")
        edit = _line_edit if kind == "line" else _value_edit
        edited = edit(draw, rng, edited)
    return name, edited


# --- data edits ----------------------------------------------------------------------------

KeyPath = tuple[Any, ...]


def _paths(data: Any, path: KeyPath = ()) -> list[KeyPath]:
    """Every path of a key or list item in ``data``."""
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = list(enumerate(data))
    else:
        return []
    out = []
    for key, value in items:
        out.append((*path, key))
        out += _paths(value, (*path, key))
    return out


def _at(data: Any, path: KeyPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _names_of(data: Any) -> list[str]:
    """The names a spec defines (inputs, layers, outputs, cells)."""
    parts = [data.get(part) for part in ("inputs", "layers", "outputs", "cells")]
    return sorted({str(name) for part in parts if isinstance(part, dict) for name in part})


def _feature(rng: random.Random, names: list[str]) -> dict[str, Any]:
    """A recurrent layer's option, linking to a name of the spec."""
    other = rng.choice(names)
    return rng.choice(
        [
            {"attention": {"memory": other, "score": rng.choice(["dot", "general", "additive"])}},
            {"init": {"from": other, "bridge": rng.choice(["none", "dense"])}},
            {"feedback": other, "teacher_forcing": rng.choice([0.0, 0.5, 1.0])},
            {"recurrent": [{"from": other, "delay": rng.choice([0, 1, 2, 1024])}]},
            {"input": [other, *rng.sample(names, min(2, len(names)))]},
            {"direction": rng.choice(["backward", "bidirectional"])},
            {"merge": rng.choice(["sum", "mean", "mul"]), "direction": "bidirectional"},
            {"depth": rng.choice([2, 3, 64]), "residual": True, "dropout": 0.5},
            {"param_init": {rng.choice(["b", "b_f", "W", "nope"]): rng.choice([1.0, -1e6, 1e7])}},
        ]
    )


DEEP_EDITS = ["link", "number", "feature"]


def _data_edit(draw: Any, rng: random.Random, data: Any) -> None:
    paths = _paths(data)
    if not paths or not isinstance(data, dict):
        return
    # Edits that keep the schema (links, numbers, features) twice as often: they reach
    # the graph checks and the compiler.
    kind = draw(st.sampled_from(["rename", "drop", "add", "value", "wrap", *DEEP_EDITS * 2]))
    names = _names_of(data) or ["x"]
    if kind == "link":  # a reference to another name: new edges, cycles, kinds
        paths = [p for p in paths if _at(data, p) in names] or paths
    elif kind == "number":
        paths = [p for p in paths if type(_at(data, p)) is int] or paths
    elif kind == "feature":
        layers = data.get("layers")
        layers = layers if isinstance(layers, dict) else {}
        recurrent = [
            n for n, layer in layers.items() if isinstance(layer, dict) and "cell" in layer
        ]
        if recurrent:
            layers[rng.choice(recurrent)].update(_feature(rng, names))
            return
    path = rng.choice(paths)
    parent, key = _at(data, path[:-1]), path[-1]
    value = parent[key]
    if kind == "rename" and isinstance(parent, dict):
        parent[draw(st.sampled_from(KEYS))] = parent.pop(key)
    elif kind == "drop":
        del parent[key]
    elif kind == "add" and isinstance(parent, dict):
        parent[draw(st.sampled_from(KEYS))] = copy.deepcopy(draw(st.sampled_from(VALUES)))
    elif kind == "wrap":
        parent[key] = draw(st.sampled_from([[value], {"from": value}, str(value)]))
    elif kind == "link":
        parent[key] = rng.choice(names)
    elif kind == "number" and type(value) is int:
        parent[key] = draw(st.sampled_from([value - 1, value + 1, -value, 2 * value, value * 1000]))
    else:  # a copy: the pool's lists and dicts must not be edited in place
        parent[key] = copy.deepcopy(draw(st.sampled_from(VALUES)))


@st.composite
def data_mutants(draw: Any) -> tuple[str, str]:
    """A gallery spec with one to four keys renamed, dropped or added, or values replaced."""
    name = draw(st.sampled_from(sorted(DATA)))
    data = yaml.safe_load(TEXTS[name])
    rng = _positions(draw)
    for _ in range(draw(EDITS)):
        _data_edit(draw, rng, data)
    return name, dump(data)


# --- equation edits ----------------------------------------------------------------------

OPERATORS = ("+", "-", "*", "@")
NEW_OPERATORS = (
    *OPERATORS,
    *("**", "/", "//", "%", "<<", "&", "|", "^", "<", "==", " and ", " or ", " if h else "),
    *(",", ":=", ".", " ", "", "@@", "+-", "*-", "--"),
)
NEW_FUNCTIONS = (
    *FUNCTIONS,
    *("exp", "eval", "exec", "__import__", "print", "open", "getattr", "Tanh", "W", "x", "h"),
    *("tanh.__call__", "(lambda a: a)", "np.tanh", "math.exp", "sigmoid(tanh)", "1"),
)
NEW_NUMBERS = (
    *("0", "1", "2", "0.5", "-1", "1e308", "1e309", "-1e308", "1e-320", "9" * 400),
    *("0x" + "f" * 30, "0b1", "1j", "1_0", "1.", ".5", "nan", "inf", "float('inf')"),
)
SUFFIXES = (
    *(".T", ".__class__", ".shape", "[0]", "[1:]", "()", "(x)", ".__class__.__bases__[0]"),
    *(" if h else x", " for h in x", "'s'", "!", "@", "..."),
)
REPLACEMENTS = (
    *("(lambda: h)()", "lambda h: h", "'h'", '"x"', "f'{h}'", "b'x'", "[]", "()", "{}"),
    *("[x, h]", "[x, [h, x]]", "x", "h", "c", "W @ x", "None", "True", "...", "__import__"),
    *("h[0]", "*h", "not h", "~h", "h if h else h", "[h for h in x]", "{h: x}", "(h, x)"),
)


def _equation_edit(draw: Any, rng: random.Random, text: str) -> str:
    kind = draw(
        st.sampled_from(
            ["operator", "function", "number", "suffix", "replace", "nest", "token", "whole"]
        )
    )
    if kind == "whole":
        return draw(equation_text)
    if kind == "nest":
        n = draw(st.sampled_from([1, 2, 23, 24, 25, 100, 400]))
        opener = draw(st.sampled_from(["(", "tanh(", "[", "-", "W @ ", "h * ", "1 - "]))
        closer = {"(": ")", "tanh(": ")", "[": "]"}.get(opener, "")
        return opener * n + text + closer * n
    if kind == "token":
        at = rng.randint(0, len(text))
        return text[:at] + draw(st.sampled_from(EQUATION_TOKENS)) + text[at:]
    patterns = {
        "operator": r"[-+*@]",
        "function": r"\b(?:" + "|".join(FUNCTIONS) + r")\b",
        "number": r"\b[0-9][0-9.]*\b",
        "suffix": r"\b[A-Za-z_]\w*\b",
        "replace": r"\b[A-Za-z_]\w*\b",
    }
    matches = list(re.finditer(patterns[kind], text))
    if not matches:  # no number here: put one in front
        return f"{draw(st.sampled_from(NEW_NUMBERS))} * {text}"
    m = rng.choice(matches)
    pool = {
        "operator": NEW_OPERATORS,
        "function": NEW_FUNCTIONS,
        "number": NEW_NUMBERS,
        "replace": REPLACEMENTS,
    }
    if kind == "suffix":
        new = m.group() + draw(st.sampled_from(SUFFIXES))
    else:
        new = draw(st.sampled_from(pool[kind]))
    return text[: m.start()] + new + text[m.end() :]


def _graft(rng: random.Random, data: dict[str, Any]) -> None:
    """Make one recurrent layer use a copy of a built-in cell, written under ``cells:``."""
    layers = [name for name, layer in data["layers"].items() if "cell" in layer]
    layer = data["layers"][rng.choice(layers)]
    builtin = layer["cell"]
    if builtin not in BUILTIN_CELLS:
        return  # already a user cell
    data.setdefault("cells", {})[f"my_{builtin}"] = copy.deepcopy(BUILTIN_CELLS[builtin])
    layer["cell"] = f"my_{builtin}"


@st.composite
def equation_mutants(draw: Any) -> tuple[str, str]:
    """A gallery spec with a user cell (its own, or a built-in one copied) whose
    equations are edited one to four times."""
    name = draw(st.sampled_from(sorted(DATA)))
    data = yaml.safe_load(TEXTS[name])
    rng = _positions(draw)
    if "cells" not in data or draw(st.booleans()):
        _graft(rng, data)
    cells = data["cells"]
    for _ in range(draw(EDITS)):
        cell = cells[rng.choice(sorted(cells))]
        equations = cell["equations"]
        target = rng.choice(list(equations))
        if rng.random() < 0.1:  # the name assigned, not the expression
            new = draw(st.sampled_from([*NAMES, *KEYS[:5]]))
            equations = {new if k == target else k: v for k, v in equations.items()}
            cell["equations"] = equations
        else:
            equations[target] = _equation_edit(draw, rng, str(equations[target]))
    return name, dump(data)


# --- the property ----------------------------------------------------------------------------


def _assert_located(diagnostics: Sequence[rnnc.Diagnostic], text: str | bytes) -> None:
    """Every diagnostic names the file, a line of the text and a column."""
    lines = (text.count(b"\n") if isinstance(text, bytes) else text.count("\n")) + 1
    for d in diagnostics:
        assert d.file == FILE, d.format()
        assert d.line is not None and 1 <= d.line <= lines, d.format()
        assert d.col is not None and d.col >= 1, d.format()
        assert d.message, d.format()


def check_and_compile(text: str | bytes) -> None:
    """The property of the module docstring, for one spec text."""
    start = time.perf_counter()
    analysis = None
    try:
        spec = rnnc.parse_spec(text, FILE)
    except rnnc.SpecError as exc:
        assert exc.errors, exc.report()
        _assert_located(exc.diagnostics, text)
    else:
        diagnostics = rnnc.check(spec)
        analysis = rnnc.analyze(spec)
        assert list(analysis.diagnostics) == diagnostics
        _assert_located(diagnostics, text)
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS_PER_EXAMPLE, f"parse and check took {elapsed:.2f} s"
    if analysis is None or not analysis.ok:
        return
    if count(param_shapes(analysis)) > MAX_COMPILED_VALUES:
        return  # compiling allocates the parameters: too large to try here
    with contextlib.suppress(rnnc.RnncError):  # a refusal is fine; nothing else is
        rnnc.compile(analysis, backend="numpy", dtype="float64")


@FUZZ_SETTINGS
@given(text_mutants())
def test_text_edits_give_located_errors_or_compile(mutant: tuple[str, str | bytes]) -> None:
    check_and_compile(mutant[1])


@FUZZ_SETTINGS
@given(data_mutants())
def test_key_and_value_edits_give_located_errors_or_compile(mutant: tuple[str, str]) -> None:
    check_and_compile(mutant[1])


@FUZZ_SETTINGS
@given(equation_mutants())
def test_equation_edits_give_located_errors_or_compile(mutant: tuple[str, str]) -> None:
    check_and_compile(mutant[1])


def test_the_bases_are_valid_specs() -> None:
    """Every base parses and checks without errors: a mutant's errors come from its edits."""
    assert len(BASES) == 2 * len(GALLERY) > 0
    for name, text in BASES:
        assert rnnc.analyze(rnnc.parse_spec(text, FILE)).ok, name
