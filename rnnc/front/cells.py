"""The cell library: built-in cells (``cells.yaml``) and the cells a spec defines.

Built-in cells are written in the same equation language users write, and go
through the same loader, schema and parser, so the language is exercised by every
model rnnc compiles.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from rnnc.errors import Diagnostic, Path
from rnnc.front.equations import Cell, EquationError, parse_cell
from rnnc.front.load import SourceMap, load_yaml, read_package_text
from rnnc.front.spec import CellSpec

LIBRARY_FILE = "cells.yaml"


@functools.cache
def builtin_cells() -> Mapping[str, Cell]:
    """Every built-in cell by name, in library order."""
    document = load_yaml(read_package_text(LIBRARY_FILE), LIBRARY_FILE)
    cells: dict[str, Cell] = {}
    for name, raw in document.data.items():
        spec = CellSpec.model_validate(raw)
        cell, problems = parse_cell(name, spec.state, spec.equations, spec.output)
        if cell is None:
            raise RuntimeError(f"built-in cell {name!r} is broken: {problems[0]}")
        cells[name] = cell
    return cells


def parse_user_cells(
    cells: Mapping[str, CellSpec], source: SourceMap | None
) -> tuple[dict[str, Cell], list[Diagnostic]]:
    """Parse the ``cells:`` of a spec; problems come back as located diagnostics."""
    parsed: dict[str, Cell] = {}
    diagnostics: list[Diagnostic] = []
    builtins = builtin_cells()
    for name, spec in cells.items():
        if name in builtins:
            diagnostics.append(
                Diagnostic(
                    f"{name!r} is a built-in cell; give your cell another name",
                    ("cells", name),
                    at_key=True,
                )
            )
            continue
        cell, problems = parse_cell(name, spec.state, spec.equations, spec.output)
        diagnostics += [equation_diagnostic(("cells", name), p, source) for p in problems]
        if cell is not None:
            parsed[name] = cell
    return parsed, diagnostics


def equation_diagnostic(
    cell_path: Path, problem: EquationError, source: SourceMap | None
) -> Diagnostic:
    """A diagnostic pointing into the equation (column included) with a caret line."""
    if problem.equation is None:
        path: Path = (*cell_path, problem.field)
        return Diagnostic(problem.message, path)
    path = (*cell_path, "equations", problem.equation)
    if problem.col is None:  # about the name assigned, not the expression
        return Diagnostic(problem.message, path, at_key=True)
    detail: tuple[str, ...] = ()
    location = None
    if problem.col is not None and problem.text.strip():
        text, col = _window(problem.text.strip(), _stripped_col(problem))
        prefix = f"{problem.equation}: "
        detail = (prefix + text, " " * (len(prefix) + col) + "^")
        if source is not None:
            location = source.locate_in_scalar(path, problem.col)
    file = source.file if source is not None else None
    return Diagnostic(problem.message, path, file=file, location=location, detail=detail)


def _window(text: str, col: int, width: int = 72) -> tuple[str, int]:
    """At most ``width`` characters of ``text`` around column ``col``."""
    if len(text) <= width:
        return text, col
    start = max(0, min(col - width // 2, len(text) - width))
    cut = text[start : start + width]
    if start > 0:
        cut, col = "..." + cut[3:], col - start
    else:
        col -= start
    if start + width < len(text):
        cut = cut[:-3] + "..."
    return cut, col


def _stripped_col(problem: EquationError) -> int:
    lead = len(problem.text) - len(problem.text.lstrip())
    return max(0, (problem.col or 0) - lead)
