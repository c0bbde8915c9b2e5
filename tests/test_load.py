"""rnnc.front.load: the safe YAML subset, file checks and the source map."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rnnc.errors import Location, SpecError
from rnnc.front.load import MAX_ALIASES, MAX_FILE_BYTES, load_file, load_yaml, read_text


def only_error(exc: pytest.ExceptionInfo[SpecError]) -> str:
    assert len(exc.value.diagnostics) == 1, exc.value.report()
    return exc.value.diagnostics[0].format()


def test_source_map_points_at_keys_and_values() -> None:
    doc = load_yaml("a:\n  b: [1, 2]\n  c: {d: x}\n", "f.yaml")
    assert doc.data == {"a": {"b": [1, 2], "c": {"d": "x"}}}
    assert doc.source.keys[("a", "b")] == Location(2, 3)
    assert doc.source.values[("a", "b")].start == Location(2, 6)
    assert doc.source.values[("a", "b", 1)].start == Location(2, 10)
    assert doc.source.keys[("a", "c", "d")] == Location(3, 7)
    # A path that does not exist falls back to its nearest parent.
    assert doc.source.locate(("a", "c", "zzz")) == Location(3, 6)
    assert doc.source.locate(("a", "b"), key=True) == Location(2, 3)


def test_columns_inside_scalars_account_for_quotes() -> None:
    doc = load_yaml("e: 'tanh(x)'\nf: tanh(x)\n")
    assert doc.source.locate_in_scalar(("e",), 5) == Location(1, 4 + 1 + 5)
    assert doc.source.locate_in_scalar(("f",), 5) == Location(2, 4 + 5)


def test_duplicate_key_says_where_the_first_one_was() -> None:
    with pytest.raises(SpecError) as exc:
        load_yaml("a: 1\nb: 2\na: 3\n", "f.yaml")
    assert only_error(exc) == "f.yaml:3:1: a: duplicate key 'a'; first at line 1, column 1"


def test_every_duplicate_is_reported() -> None:
    with pytest.raises(SpecError) as exc:
        load_yaml("a: 1\na: 2\nb: {c: 1, c: 2}\n")
    assert [d.path for d in exc.value.diagnostics] == [("a",), ("b", "c")]


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['true']\n",
        "a: !!python/name:os.system\n",
        "a: !custom 3\n",
        "!!set {a, b}\n",
        "a: !!binary aGVsbG8=\n",
    ],
)
def test_tags_are_refused(text: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_yaml(text)
    assert "is not allowed" in exc.value.report()


def test_plain_scalars_that_yaml_reads_as_dates_stay_text() -> None:
    assert load_yaml("a: 2001-12-14\n").data == {"a": "2001-12-14"}


def test_a_few_aliases_are_fine_but_not_a_billion_laughs() -> None:
    ok = "x: &v 1\n" + "".join(f"k{i}: *v\n" for i in range(MAX_ALIASES))
    assert load_yaml(ok).data["k0"] == 1
    laughs = 'a: &a ["lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
    laughs += "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    with pytest.raises(SpecError) as exc:
        load_yaml(laughs)
    assert "too many aliases" in only_error(exc)


def test_recursive_alias() -> None:
    with pytest.raises(SpecError) as exc:
        load_yaml("a: &a [1, *a]\n")
    assert "recursive alias" in exc.value.report()


def test_merge_keys_are_refused() -> None:
    with pytest.raises(SpecError) as exc:
        load_yaml("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n")
    assert "merge keys" in only_error(exc)


def test_one_document_only() -> None:
    with pytest.raises(SpecError) as exc:
        load_yaml("a: 1\n---\nb: 2\n", "f.yaml")
    message = only_error(exc)
    assert message.startswith("f.yaml:2:1: ")
    assert "more than one YAML document" in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty(text: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_yaml(text, "f.yaml")
    assert "the file is empty" in only_error(exc)


def test_syntax_errors_are_located() -> None:
    with pytest.raises(SpecError) as exc:
        load_yaml("a: [1, 2\nb: 3\n", "f.yaml")
    message = only_error(exc)
    assert message.startswith("f.yaml:2:")
    assert "invalid YAML" in message


def test_deep_nesting_is_refused_without_a_crash() -> None:
    with pytest.raises(SpecError) as exc:
        load_yaml("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in exc.value.report()


def test_control_characters_are_refused() -> None:
    with pytest.raises(SpecError) as exc:
        load_yaml("a: 1\nb: \x00\n", "f.yaml")
    assert only_error(exc).startswith("f.yaml:2:4: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        read_text(tmp_path / "nope.yaml")
    assert "no such file" in only_error(exc)


def test_directory_is_not_a_spec(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        read_text(tmp_path)
    assert "expected a regular file, found a directory" in only_error(exc)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError) as exc:
        read_text(fifo)  # would block forever if it were opened
    assert "not a regular file" in only_error(exc)


def test_too_large(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * MAX_FILE_BYTES + b"\n")
    with pytest.raises(SpecError) as exc:
        read_text(big)
    assert "too large" in only_error(exc)


def test_invalid_utf8_is_located(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"rnnc: 1\nname: caf\xe9\n")
    with pytest.raises(SpecError) as exc:
        read_text(bad)
    message = only_error(exc)
    assert message.startswith(f"{bad}:2:10: ")
    assert "not valid UTF-8" in message


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_file(path).data == {"a": 1}
