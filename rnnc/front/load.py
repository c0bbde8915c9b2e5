"""Reading spec files: bytes -> text -> YAML node tree -> plain data plus a source map.

Only YAML's safe subset is accepted, and less than that: one document, string keys
written once, no Python or custom tags, no merge keys, a handful of aliases. The
source map remembers where every key and value of the document starts, so any later
stage can point at ``FILE:LINE:COL`` for a path such as ``layers.decoder.init.from``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from rnnc.errors import Diagnostic, Location, Path, SpecError

MAX_FILE_BYTES = 1 << 20
MAX_ALIASES = 32
MAX_NODES = 100_000
MAX_DEPTH = 64

_YAML = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_YAML + t for t in ("null", "bool", "int", "float", "str")}
_COLLECTION_TAGS = {_YAML + "map", _YAML + "seq"}


@dataclass(frozen=True)
class Span:
    """Where a value starts, and how its scalar was written (for columns inside it)."""

    start: Location
    style: str | None = None  # None: plain scalar; "'" or '"': quoted; "|" ">": block


@dataclass
class SourceMap:
    """Where each path of a loaded document was written."""

    file: str
    keys: dict[Path, Location] = field(default_factory=dict)
    values: dict[Path, Span] = field(default_factory=dict)

    def locate(self, path: Path, *, key: bool = False) -> Location | None:
        """The location of ``path`` (its key with ``key=True``), else its nearest parent's."""
        for end in range(len(path), -1, -1):
            prefix = tuple(path[:end])
            if key and end == len(path) and prefix in self.keys:
                return self.keys[prefix]
            if prefix in self.values:
                return self.values[prefix].start
            if prefix in self.keys:
                return self.keys[prefix]
        return None

    def locate_in_scalar(self, path: Path, offset: int) -> Location | None:
        """The location of character ``offset`` inside the one-line scalar at ``path``."""
        span = self.values.get(tuple(path))
        if span is None:
            return self.locate(path)
        if span.style in (None, "'", '"'):
            shift = 0 if span.style is None else 1
            return Location(span.start.line, span.start.col + shift + offset)
        # A block scalar starts on the next line; its indentation is not known here.
        return span.start

    def attach(self, diagnostics: list[Diagnostic]) -> list[Diagnostic]:
        """Fill in file and location of diagnostics that have none yet."""
        return [
            d if d.location is not None else d.at(self.file, self.locate(d.path, key=d.at_key))
            for d in diagnostics
        ]


@dataclass(frozen=True)
class Document:
    """A loaded YAML document: plain Python data and where each part came from."""

    data: Any
    source: SourceMap
    text: str


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a spec file as UTF-8, refusing what is not a small regular text file."""
    name = os.fspath(path)

    def fail(message: str, location: Location | None = None) -> SpecError:
        return SpecError([Diagnostic(message, file=name, location=location)])

    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise fail("no such file") from None
    except OSError as exc:
        raise fail(f"cannot read the file: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise fail(f"expected a regular file, found {kind}")
    if info.st_size > MAX_FILE_BYTES:
        raise fail(f"the file is too large (expected at most 1 MiB, found {info.st_size:,} bytes)")
    try:
        with open(name, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read the file: {exc.strerror}") from None
    return decode(raw, name)


def decode(raw: bytes, file: str = "<string>") -> str:
    """Spec bytes as text: UTF-8 (a byte-order mark is allowed), at most 1 MiB."""
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError([Diagnostic("the file is too large (expected at most 1 MiB)", file=file)])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        message = (
            f"the file is not valid UTF-8 (byte 0x{raw[exc.start]:02x} cannot start or continue "
            "a character); save it as UTF-8"
        )
        raise SpecError([Diagnostic(message, file=file, location=Location(line, col))]) from None


def load_yaml(text: str, file: str = "<string>") -> Document:
    """Parse one YAML document of plain data, with a source map; raise SpecError."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise SpecError([Diagnostic("the text is too large (expected at most 1 MiB)", file=file)])
    source = SourceMap(file)
    node, alias_marks = _compose(text, file)
    if node is None or (
        isinstance(node, yaml.ScalarNode) and node.tag == _YAML + "null" and node.value in ("", "~")
    ):
        raise SpecError(
            [
                Diagnostic(
                    "the file is empty (expected a spec: a mapping with 'rnnc: 1')",
                    file=file,
                    location=Location(1, 1),
                )
            ]
        )
    builder = _Builder(source, alias_marks)
    data = builder.build(node, ())
    if builder.problems:
        raise SpecError(builder.problems)
    return Document(data, source, text)


def load_file(path: str | os.PathLike[str]) -> Document:
    return load_yaml(read_text(path), os.fspath(path))


def _location(mark: Any) -> Location:
    return Location(mark.line + 1, mark.column + 1)


class _TooManyAliasesError(Exception):
    def __init__(self, mark: Any):
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """A safe loader that also bounds the number of aliases (no "billion laughs")."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.alias_count = 0
        # Where each alias was written: (id of its parent node, index or id of key node).
        self.alias_marks: dict[tuple[int, int], Any] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            mark = self.peek_event().start_mark
            if self.alias_count > MAX_ALIASES:
                raise _TooManyAliasesError(mark)
            self.alias_marks[(id(parent), _index_id(index))] = mark
        return super().compose_node(parent, index)


def _index_id(index: Any) -> int:
    return index if isinstance(index, int) and not isinstance(index, bool) else id(index)


def _compose(text: str, file: str) -> tuple[yaml.Node | None, dict[tuple[int, int], Any]]:
    def fail(message: str, mark: Any = None) -> SpecError:
        location = _location(mark) if mark is not None else None
        return SpecError([Diagnostic(message, file=file, location=location)])

    loader = None
    try:
        loader = _Loader(text)  # checks for unprintable characters
        if not loader.check_node():
            return None, {}
        node = loader.get_node()
        if loader.check_node():
            raise fail(
                "the file holds more than one YAML document (expected one spec; remove the '---')",
                loader.peek_event().start_mark,
            )
        return node, loader.alias_marks
    except _TooManyAliasesError as exc:
        raise fail(
            f"too many aliases (expected at most {MAX_ALIASES} uses of '*anchor')", exc.mark
        ) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise SpecError(
            [
                Diagnostic(
                    f"character U+{code:04X} is not allowed in YAML text",
                    file=file,
                    location=Location(line, col),
                )
            ]
        ) from None
    except yaml.MarkedYAMLError as exc:
        message = exc.problem or exc.context or "invalid YAML"
        if "'\\t'" in message:  # PyYAML's words for a tab where a token should start
            message = "a tab: YAML is indented with spaces only (replace the tab with spaces)"
        context = (exc.context or "").removeprefix("while parsing ").removeprefix("while scanning ")
        if exc.problem and context and exc.context_mark is not None:
            start = _location(exc.context_mark)
            message += f" (in {context} that starts at line {start.line}, column {start.col})"
        raise fail(f"invalid YAML: {message}", exc.problem_mark or exc.context_mark) from None
    except yaml.YAMLError as exc:
        raise fail(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise fail(f"the YAML is nested too deeply (expected at most {MAX_DEPTH} levels)") from None
    finally:
        if loader is not None:
            loader.dispose()


class _Builder:
    """Turns a node tree into plain data, recording locations and every problem."""

    def __init__(self, source: SourceMap, alias_marks: dict[tuple[int, int], Any]):
        self.source = source
        self.alias_marks = alias_marks
        self.problems: list[Diagnostic] = []
        self.visited = 0
        self.active: set[int] = set()
        self.constructor = yaml.SafeLoader("")

    def problem(self, message: str, path: Path, mark: Any) -> None:
        self.problems.append(
            Diagnostic(message, path=path, file=self.source.file, location=_location(mark))
        )

    def build(self, node: yaml.Node, path: Path, mark: Any = None) -> Any:
        """Plain data for ``node``; ``mark`` is where it was written if that was an alias."""
        mark = mark or node.start_mark
        self.visited += 1
        if self.visited > MAX_NODES:
            if self.visited == MAX_NODES + 1:
                self.problem(f"the document is too large (over {MAX_NODES:,} values)", path, mark)
            return None
        if len(path) > MAX_DEPTH:
            self.problem(f"nested too deeply (expected at most {MAX_DEPTH} levels)", path, mark)
            return None
        if id(node) in self.active:
            self.problem(
                "an alias refers to a value that contains it (recursive alias)", path, mark
            )
            return None
        style = getattr(node, "style", None) if isinstance(node, yaml.ScalarNode) else None
        self.source.values.setdefault(path, Span(_location(mark), style))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        self.active.add(id(node))
        try:
            if node.tag not in _COLLECTION_TAGS:
                self.refuse_tag(node.tag, path, mark)
                return None
            if isinstance(node, yaml.SequenceNode):
                return [
                    self.build(item, (*path, i), self.alias_marks.get((id(node), i)))
                    for i, item in enumerate(node.value)
                ]
            assert isinstance(node, yaml.MappingNode)
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag in _PLAIN_TAGS:
            return self.constructor.construct_object(node, deep=True)
        implicit = self.constructor.resolve(yaml.ScalarNode, node.value, (True, False))
        if node.tag == implicit:
            # A plain scalar YAML reads as a date or similar: keep the text.
            return node.value
        self.refuse_tag(node.tag, path, node.start_mark)
        return None

    def refuse_tag(self, tag: str, path: Path, mark: Any) -> None:
        written = "!!" + tag.removeprefix(_YAML) if tag.startswith(_YAML) else tag
        self.problem(
            f"tag {written!r} is not allowed (expected plain YAML data; rnnc never builds "
            "Python objects)",
            path,
            mark,
        )

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        first_seen: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _YAML + "merge":
                self.problem(
                    "merge keys ('<<') are not supported: write the keys out",
                    path,
                    key_node.start_mark,
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(
                    "keys must be plain strings (found a collection as a key)",
                    path,
                    key_node.start_mark,
                )
                continue
            key = self.scalar(key_node, path)
            if not isinstance(key, str):
                key = key_node.value  # 'on:', '1:' and the like: the key as written
            if key in first_seen:
                first = _location(first_seen[key])
                if path and path[-1] == "equations":
                    what = (
                        f"equation {key!r} is assigned twice (each name is assigned at most once)"
                    )
                else:
                    what = f"duplicate key {key!r}"
                self.problem(
                    f"{what}; first at line {first.line}, column {first.col}",
                    (*path, key),
                    key_node.start_mark,
                )
                continue
            first_seen[key] = key_node.start_mark
            self.source.keys[(*path, key)] = _location(key_node.start_mark)
            alias = self.alias_marks.get((id(node), id(key_node)))
            out[key] = self.build(value_node, (*path, key), alias)
        return out


def read_package_text(name: str) -> str:
    """Text of a data file shipped inside the rnnc package."""
    return (FsPath(__file__).parent / name).read_text(encoding="utf-8")
