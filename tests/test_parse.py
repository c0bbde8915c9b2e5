"""rnnc.front.spec and rnnc.front.parse: the schema and how its errors read."""

from __future__ import annotations

import json

import pytest

import rnnc
from rnnc.errors import Location
from rnnc.front.spec import (
    DenseLayer,
    EmbeddingLayer,
    RecurrentLayer,
    Spec,
    TokenInput,
    VectorInput,
)
from tests.helpers import spec_text

GOOD = """
rnnc: 1
name: good
inputs:
  x: {size: 4}
layers:
  rnn: {cell: lstm, hidden: 8, input: x}
  out: {dense: 3, input: rnn}
outputs:
  y: {from: out}
"""


def errors_of(text: str) -> list[rnnc.Diagnostic]:
    with pytest.raises(rnnc.SpecError) as exc:
        rnnc.parse_spec(spec_text(text), "s.yaml")
    return list(exc.value.diagnostics)


def with_layer(layer: str) -> str:
    return spec_text(GOOD).replace("  rnn: {cell: lstm, hidden: 8, input: x}", "  rnn: " + layer)


def test_kinds_are_told_apart_by_their_key() -> None:
    spec = rnnc.parse_spec(
        spec_text(
            """
            rnnc: 1
            name: kinds
            inputs:
              v: {size: 4}
              t: {vocab: 10}
            layers:
              e: {embedding: 5, input: t}
              r: {cell: gru, hidden: 6, input: [v, e]}
              d: {dense: 2, input: r}
            outputs:
              y: {from: d}
            """
        )
    )
    assert isinstance(spec.inputs["v"], VectorInput)
    assert isinstance(spec.inputs["t"], TokenInput)
    assert isinstance(spec.layers["e"], EmbeddingLayer)
    assert isinstance(spec.layers["r"], RecurrentLayer)
    assert isinstance(spec.layers["d"], DenseLayer)
    assert spec.layers["r"].inputs == ("v", "e")
    assert spec.file == "<string>"


def test_defaults() -> None:
    layer = rnnc.parse_spec(spec_text(GOOD)).layers["rnn"]
    assert isinstance(layer, RecurrentLayer)
    assert (layer.direction, layer.merge, layer.depth, layer.residual, layer.dropout) == (
        "forward",
        "concat",
        1,
        False,
        0.0,
    )
    assert layer.init is None and layer.attention is None and layer.feedback is None


def test_misspelt_key_suggests_the_right_one_at_the_key() -> None:
    missing, unknown = errors_of(with_layer("{cell: lstm, hiden: 8, input: x}"))
    assert unknown.path == ("layers", "rnn", "hiden")
    assert "unknown key 'hiden' (did you mean 'hidden'?)" in unknown.message
    assert unknown.location == Location(6, 21)
    # The missing 'hidden' is reported in the same run, at the layer, in file order.
    assert missing.path == ("layers", "rnn")
    assert missing.message.startswith("missing key 'hidden'")
    assert missing.location == Location(6, 8)


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        ("3", "layers.rnn.input", "expected a name, a list of names or {from: NAME, ...}, found 3"),
        ("[x, 3]", "layers.rnn.input[1]", "expected a name or {from: NAME, ...}, found 3"),
        ("[x, {from: x, pool: x}]", "layers.rnn.input[1].pool", "expected 'max' or 'mean'"),
        ("{from: x, bad: 1}", "layers.rnn.input.bad", "unknown key 'bad'"),
        ("{from: x, state: h, pool: max}", "layers.rnn.input", "give only one of"),
        ("[x, class]", "layers.rnn.input[1]", "keyword"),
        ("'no way'", "layers.rnn.input", "ASCII letters"),
    ],
)
def test_name_or_list_of_names(value: str, path: str, words: str) -> None:
    (d,) = errors_of(with_layer(f"{{cell: lstm, hidden: 8, input: {value}}}"))
    assert d.dotted_path == path and words in d.message


def test_every_schema_error_is_reported_at_once() -> None:
    found = errors_of(with_layer("{cell: lstm, hidden: 0, input: x, depth: 65, direction: up}"))
    assert {d.path for d in found} == {
        ("layers", "rnn", "hidden"),
        ("layers", "rnn", "depth"),
        ("layers", "rnn", "direction"),
    }


@pytest.mark.parametrize(
    ("layer", "path", "words"),
    [
        ("{cell: lstm, hidden: 0, input: x}", "hidden", "expected an integer >= 1, found 0"),
        (
            "{cell: lstm, hidden: 65537, input: x}",
            "hidden",
            "expected an integer <= 65536, found 65537",
        ),
        ("{cell: lstm, hidden: '8', input: x}", "hidden", "expected an integer, found '8'"),
        ("{cell: lstm, hidden: 8.5, input: x}", "hidden", "expected an integer, found 8.5"),
        ("{cell: lstm, hidden: 8, input: x, depth: 0}", "depth", ">= 1"),
        (
            "{cell: lstm, hidden: 8, input: x, residual: 'yes'}",
            "residual",
            "expected true or false",
        ),
        ("{cell: lstm, hidden: 8, input: x, dropout: 1.0}", "dropout", "< 1.0"),
        ("{cell: lstm, hidden: 8, input: x, dropout: .nan}", "dropout", "finite"),
        (
            "{cell: lstm, hidden: 8, input: x, direction: bidirection}",
            "direction",
            "did you mean 'bidirectional'",
        ),
        (
            "{cell: lstm, hidden: 8, input: x, merge: add}",
            "merge",
            "expected 'concat', 'mean', 'mul' or 'sum'",
        ),
        ("{cell: lstm, hidden: 8, input: []}", "input", "at least 1"),
        ("{cell: lstm, hidden: 8, input: x, teacher_forcing: 1.5}", "teacher_forcing", "<= 1.0"),
        ("{cell: lstm, hidden: 8, input: x, param_init: {b_f: .inf}}", "param_init.b_f", "finite"),
        (
            "{cell: lstm, hidden: 8, input: x, recurrent: [{from: rnn, delay: -1}]}",
            "recurrent[0].delay",
            ">= 0",
        ),
        (
            "{cell: lstm, hidden: 8, input: x, attention: {memory: x, score: additiv}}",
            "attention.score",
            "did you mean 'additive'",
        ),
        (
            "{cell: lstm, hidden: 8, input: x, init: {from: x, bridge: linear}}",
            "init.bridge",
            "'dense' or 'none'",
        ),
        ("{cell: lstm, input: x}", "", "missing key 'hidden'"),
    ],
)
def test_layer_values(layer: str, path: str, words: str) -> None:
    found = errors_of(with_layer(layer))
    expected = "layers.rnn" + (f".{path}" if path else "")
    assert any(d.dotted_path == expected and words in d.message for d in found), [
        d.format() for d in found
    ]
    assert all(d.location is not None and d.file == "s.yaml" for d in found)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("class", "is a Python keyword"),
        ("__init__", "reserved"),
        ("2fast", "ASCII letters"),
        ("naïve", "ASCII letters"),
        ("a-b", "ASCII letters"),
        ("x" * 65, "at most 64 characters"),
    ],
)
def test_names_are_identifiers(name: str, words: str) -> None:
    text = spec_text(GOOD).replace("  out: {dense", f"  '{name}': {{dense")
    found = errors_of(text)
    assert any(words in d.message and d.path[:2] == ("layers", name) for d in found), [
        d.format() for d in found
    ]


def test_layer_without_a_kind_key() -> None:
    (d,) = errors_of(with_layer("{hidden: 8, input: x}"))
    assert d.path == ("layers", "rnn")
    assert "a layer needs 'cell' (recurrent), 'dense' or 'embedding'" in d.message


def test_input_without_a_kind_key_and_non_mapping() -> None:
    text = spec_text(GOOD).replace("  x: {size: 4}", "  x: {width: 4}\n  z: 3")
    found = {d.dotted_path: d.message for d in errors_of(text)}
    assert "an input needs 'size'" in found["inputs.x"]
    assert found["inputs.z"] == "expected a mapping, found 3"


def test_output_selects_steps_or_state_not_both() -> None:
    text = spec_text(GOOD).replace("y: {from: out}", "y: {from: rnn, steps: last, state: h}")
    (d,) = errors_of(text)
    assert d.path == ("outputs", "y") and "give only one of" in d.message


def test_version_and_top_level() -> None:
    found = errors_of(spec_text(GOOD).replace("rnnc: 1", "rnnc: 2") + "extra: 1\n")
    messages = {d.dotted_path: d.message for d in found}
    assert messages["rnnc"] == "expected 1, found 2"
    assert messages["extra"].startswith("unknown key 'extra'")


def test_a_spec_must_be_a_mapping() -> None:
    (d,) = errors_of("- 1\n- 2\n")
    assert "expected a mapping of spec keys" in d.message and d.location == Location(1, 1)


def test_cells_state_must_be_unique() -> None:
    text = spec_text(GOOD) + "cells:\n  c: {state: [h, h], equations: {h: tanh(W @ x)}}\n"
    (d,) = errors_of(text)
    assert d.path == ("cells", "c", "state") and "listed twice" in d.message


def test_json_schema_describes_every_key() -> None:
    schema = Spec.model_json_schema(by_alias=True)
    json.dumps(schema)
    assert set(schema["properties"]) == {
        "rnnc",
        "name",
        "description",
        "inputs",
        "layers",
        "outputs",
        "cells",
        "generation",
    }
    layer = schema["$defs"]["RecurrentLayer"]
    assert layer["additionalProperties"] is False
    assert {
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
    } == set(layer["properties"])
    assert layer["properties"]["hidden"]["maximum"] == 65536
    assert "from" in schema["$defs"]["Init"]["properties"]


def test_soft_keywords_are_names_but_yaml_booleans_are_not() -> None:
    text = spec_text(GOOD).replace(
        "  out: {dense: 3, input: rnn}", "  match: {dense: 3, input: rnn}"
    )
    text = text.replace("y: {from: out}", "y: {from: match}")
    assert rnnc.check(rnnc.parse_spec(text)) == []
    (d,) = errors_of(with_layer("{cell: lstm, hidden: 8, input: [x, on]}"))
    assert d.dotted_path == "layers.rnn.input[1]" and "quote the name" in d.message


def test_names_are_quoted_in_messages() -> None:
    found = errors_of(spec_text(GOOD).replace("  out: {dense", "  class: {dense"))
    assert any(d.message == "'class' is a Python keyword; choose another name" for d in found)
