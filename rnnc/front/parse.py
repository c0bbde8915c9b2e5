"""Text -> :class:`~rnnc.front.spec.Spec`, with Pydantic's errors told in rnnc's words.

Each Pydantic error becomes a :class:`~rnnc.errors.Diagnostic` that says where
(``FILE:LINE:COL``), which key (``layers.decoder.direction``), what fits and what was
found, and suggests the closest known key or value.
"""

from __future__ import annotations

import os
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from rnnc.errors import Diagnostic, Path, SpecError, did_you_mean, one_of
from rnnc.front.load import Document, decode, load_file, load_yaml
from rnnc.front.spec import Spec, strip_union_tags


def parse_spec(text: str | bytes, file: str = "<string>") -> Spec:
    """Parse YAML text (or UTF-8 bytes) into a Spec; raise SpecError with every problem."""
    if isinstance(text, bytes):
        text = decode(text, file)
    return spec_from_document(load_yaml(text, file))


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read and parse a spec file; raise SpecError with every problem found."""
    return spec_from_document(load_file(path))


def spec_from_document(document: Document) -> Spec:
    data = document.data
    source = document.source
    if not isinstance(data, dict):
        raise SpecError(
            source.attach(
                [
                    Diagnostic(
                        f"expected a mapping of spec keys (rnnc, name, inputs, layers, outputs), found {_found(data)}"
                    )
                ]
            )
        )
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        located = []
        for error in _one_branch_per_union(exc.errors(), data):
            diagnostic = _diagnostic(error)
            on_key = diagnostic.at_key or "[key]" in error["loc"]
            located.append(diagnostic.at(source.file, source.locate(diagnostic.path, key=on_key)))
        located.sort(key=lambda d: (d.location.line, d.location.col) if d.location else (0, 0))
        raise SpecError(_unique(located)) from None
    spec._source = source
    return spec


def _is_branch(loc: tuple[Any, ...], i: int) -> bool:
    """Pydantic labels the branches of a plain union in the location: 'list[...]',
    'function-after[check_identifier(), str]' (a name), '...Selection]' (a mapping).
    A layer's ``input`` is the one union; a key a user wrote may hold '[' too."""
    part, before = loc[i], loc[i - 1] if i else None
    if not isinstance(part, str) or "[" not in part:
        return False
    listed = isinstance(before, int) and i >= 2 and str(loc[i - 2]).startswith("list[")
    return before == "input" or listed


def _fits(branch: str, value: Any) -> bool:
    if branch.startswith("list["):
        return isinstance(value, list)
    if branch.endswith("str]"):
        return isinstance(value, str)
    return isinstance(value, dict)


def _value_at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _one_branch_per_union(errors: list[Any], data: Any) -> list[Any]:
    """Keep the errors of the union branches that match what was written.

    ``input: x``, ``input: {from: enc, state: h}`` or ``input: [x, ...]`` is a name, a
    mapping or a list of either; an error in one form should not also be reported as
    a failure of the others. A value of none of the forms gets one message.
    """
    kept = []
    explained: set[tuple[Any, ...]] = set()
    listed = {  # where a list is one of the forms
        tuple(p for j, p in enumerate(e["loc"][:i]) if not _is_branch(e["loc"], j))
        for e in errors
        for i, part in enumerate(e["loc"])
        if _is_branch(e["loc"], i) and part.startswith("list[")
    }
    for error in errors:
        loc = tuple(error["loc"])
        path: list[Any] = []
        for i, part in enumerate(loc):
            if not _is_branch(loc, i):
                path.append(part)
                continue
            value = _value_at(data, strip_union_tags(tuple(path)))
            if _fits(part, value):
                continue
            if not isinstance(value, (list, str, dict)) and tuple(path) not in explained:
                explained.add(tuple(path))
                forms = "a name, a list of names" if tuple(path) in listed else "a name"
                message = f"expected {forms} or {{from: NAME, ...}}, found {_found(value)}"
                message += _boolean_hint(value)
                kept.append({"type": "names", "loc": tuple(path), "msg": message, "input": value})
            break
        else:
            kept.append({**error, "loc": tuple(path)})
    return kept


def _boolean_hint(value: Any) -> str:
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote the name)"
    return ""


def _unique(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[Path, str]] = set()
    out = []
    for d in diagnostics:
        if (d.path, d.message) not in seen:
            seen.add((d.path, d.message))
            out.append(d)
    return out


def _found(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    return repr(value)


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "finite_number": "a finite number",
}
_KIND_KEYS = {"input_kind": ("size", "vocab"), "layer_kind": ("cell", "dense", "embedding")}
_BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}


def schema_diagnostics(exc: ValidationError) -> list[Diagnostic]:
    """Pydantic's errors as rnnc words them (for models validated outside a spec, such as
    generate's options)."""
    return [_diagnostic(error) for error in exc.errors()]


def _diagnostic(error: Any) -> Diagnostic:
    kind = error["type"]
    loc = tuple(error["loc"])
    path = tuple(p for p in strip_union_tags(loc) if p != "[key]")
    found = error.get("input")
    ctx = error.get("ctx") or {}

    if kind == "missing":
        parent = _model_at(loc[:-1])
        needed = _required_keys(parent) if parent else []
        hint = (
            f" (a {_label(parent)} needs {one_of(needed).replace(' or ', ' and ')})"
            if len(needed) > 1
            else ""
        )
        return Diagnostic(f"missing key {path[-1]!r}{hint}", path[:-1])
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = _keys(parent) if parent else []
        key = str(path[-1])
        return Diagnostic(
            f"unknown key {key!r}{did_you_mean(key, allowed)}; expected one of {one_of(allowed)}",
            path,
            at_key=True,
        )
    if kind in ("input_kind", "layer_kind"):
        if not isinstance(found, dict):
            return Diagnostic(f"expected a mapping, found {_found(found)}", path)
        kinds = _KIND_KEYS[kind]
        for key in map(str, found):
            hint = did_you_mean(key, kinds)
            if hint:
                return Diagnostic(f"{error['msg']}{hint}", (*path, key), at_key=True)
        keys = ", ".join(repr(str(k)) for k in found) or "none"
        return Diagnostic(f"{error['msg']} (found keys {keys})", path)
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        if not expected:  # numbers, such as the version in 'rnnc: 1'
            return Diagnostic(f"expected {ctx.get('expected')}, found {_found(found)}", path)
        hint = did_you_mean(found, expected) if isinstance(found, str) else ""
        return Diagnostic(f"expected {one_of(expected)}, found {_found(found)}{hint}", path)
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        noun = (
            "an integer" if isinstance(bound, int) and not isinstance(found, float) else "a number"
        )
        return Diagnostic(f"expected {noun} {_BOUNDS[kind]} {bound}, found {_found(found)}", path)
    if kind in ("too_short", "too_long"):
        what = "a list" if isinstance(found, list) else "a mapping"
        limit = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        relation = "at least" if kind == "too_short" else "at most"
        entries = "entry" if limit == 1 else "entries"
        actual = len(found) if isinstance(found, (list, dict)) else ctx.get("actual_length")
        return Diagnostic(
            f"expected {what} with {relation} {limit} {entries}, found {actual}", path
        )
    if kind == "string_too_long":
        return Diagnostic(f"expected at most {ctx.get('max_length')} characters", path)
    if kind in _EXPECTED:
        hint = _boolean_hint(found) if kind == "string_type" else ""
        return Diagnostic(f"expected {_EXPECTED[kind]}, found {_found(found)}{hint}", path)
    if kind == "union_tag_invalid" or kind.startswith("union"):
        return Diagnostic(error["msg"], path)
    # Our own PydanticCustomErrors already read as rnnc messages.
    return Diagnostic(error["msg"], path)


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _variants(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return list(typing.get_args(tp))
    return [tp]


def _tag_of(tp: Any) -> str | None:
    if typing.get_origin(tp) is typing.Annotated:
        for meta in typing.get_args(tp)[1:]:
            if type(meta).__name__ == "Tag":
                return str(meta.tag)
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class Pydantic validated at ``loc`` (a location with union tags)."""
    tp: Any = Spec
    for part in loc:
        options = _variants(tp)
        tagged = [v for v in options if _tag_of(v) == part]
        if tagged:
            tp = tagged[0]
            continue
        models = [
            _unwrap(v)
            for v in options
            if isinstance(_unwrap(v), type) and issubclass(_unwrap(v), BaseModel)
        ]
        containers = [_unwrap(v) for v in options if typing.get_origin(_unwrap(v)) in (dict, list)]
        if models and isinstance(part, str):
            field = _field(models[0], part)
            if field is None:
                return None
            tp = field
        elif containers:
            container = containers[0]
            args = typing.get_args(container)
            tp = args[-1] if typing.get_origin(container) is dict else args[0]
        else:
            return None
    final = [_unwrap(v) for v in _variants(tp)]
    models = [v for v in final if isinstance(v, type) and issubclass(v, BaseModel)]
    return models[0] if models else None


def _field(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info.annotation
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _required_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items() if info.is_required()]


def _label(model: type[BaseModel] | None) -> str:
    words = re.sub(r"(?<!^)([A-Z])", r" \1", model.__name__ if model else "value").lower()
    return {"spec": "spec", "cell spec": "cell"}.get(words, words)
