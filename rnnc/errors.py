"""Diagnostics and the exceptions that carry them.

Every stage of rnnc reports problems as :class:`Diagnostic` values: a severity, the
path of the spec key it concerns, a message that says what is wrong, what fits and
what was found, and (once a source map is known) the file, line and column.
Stages collect every diagnostic they find before raising, so a user sees all the
problems of a spec at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

Path = tuple[str | int, ...]
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Location:
    """A 1-based line and column in a file."""

    line: int
    col: int


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a spec, with where it is and what would fit."""

    message: str
    path: Path = ()
    severity: Severity = "error"
    file: str | None = None
    location: Location | None = None
    # Extra lines shown under the message (an equation with a caret, a cycle path).
    detail: tuple[str, ...] = ()
    # Graph nodes the problem concerns, so a drawing can mark them.
    nodes: tuple[str, ...] = ()
    # Point at the key of ``path`` (a name that is wrong) rather than at its value.
    at_key: bool = False

    @property
    def dotted_path(self) -> str:
        return format_path(self.path)

    @property
    def line(self) -> int | None:
        return self.location.line if self.location else None

    @property
    def col(self) -> int | None:
        return self.location.col if self.location else None

    def at(self, file: str | None, location: Location | None) -> Diagnostic:
        return replace(self, file=file, location=location)

    def format(self) -> str:
        """``FILE:LINE:COL: path.to.key: message``, then any detail lines."""
        where = self.file or "<spec>"
        if self.location is not None:
            where += f":{self.location.line}:{self.location.col}"
        head = f"{where}: "
        if self.severity == "warning":
            head += "warning: "
        if self.path:
            head += f"{self.dotted_path}: "
        lines = [head + self.message]
        lines.extend("    " + line for line in self.detail)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def format_path(path: Path) -> str:
    """``("layers", "enc", "input", 1)`` -> ``layers.enc.input[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix, or the empty string when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def a_or_an(word: str) -> str:
    """``'an input'``, ``'a dense'``: the word with its indefinite article."""
    return ("an " if word[:1] in "aeiou" else "a ") + word


def one_of(choices: Iterable[str], last: str = "or") -> str:
    """``'a', 'b' or 'c'`` (sorted) for messages that list what fits."""
    items = [repr(c) for c in sorted(choices)]
    if not items:
        return "nothing"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + f" {last} " + items[-1]


class RnncError(Exception):
    """Base class of every error rnnc raises on purpose."""


class SpecError(RnncError):
    """A spec (or its file) is wrong; carries every diagnostic found."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__(self.report())

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    def report(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)
