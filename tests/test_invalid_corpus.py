"""The invalid-spec corpus: every mistake a user can make, with what rnnc must say.

Each file in ``tests/invalid/`` is a small spec with one mistake (two ``multi_*``
files hold several) and starts with one header line per diagnostic it requires::

    # expect: LINE:COL: dotted.path: a substring of the message

LINE and COL are 1-based and count the header lines; the path is empty for
file-level errors (``# expect: 1:1: : the file is empty``). The expectations say
what a user should see, decided before looking at rnnc's output; a failure here is
a defect in rnnc, not a reason to change the expectation.

Files, directories and sizes that cannot be committed as a YAML file (over 1 MiB,
a directory, a missing path, zero bytes) are made in ``tmp_path`` below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import rnnc
from rnnc.errors import Location
from rnnc.tools.cli import main

CORPUS = Path(__file__).resolve().parent / "invalid"
FILES = sorted(CORPUS.glob("*.yaml"))
MULTI = ("multi_schema_errors.yaml", "multi_graph_errors.yaml")
EXPECT = re.compile(r"# expect: (?P<line>\d+):(?P<col>\d+): (?P<path>\S*): (?P<text>.+)")


@dataclass(frozen=True)
class Expected:
    """One diagnostic a corpus file requires."""

    line: int
    col: int
    path: str
    text: str

    def prefix(self, file: str) -> str:
        """How its CLI line starts: ``FILE:LINE:COL: path: `` (no path part when empty)."""
        head = f"{file}:{self.line}:{self.col}: "
        return head + f"{self.path}: " if self.path else head

    def __str__(self) -> str:
        return f"{self.line}:{self.col}: {self.path}: {self.text}"


def expectations(path: Path) -> list[Expected]:
    """The ``# expect:`` lines at the top of a corpus file."""
    # Bytes, not text: one file is deliberately not valid UTF-8 (after its header).
    text = path.read_bytes().decode("utf-8", errors="replace")
    found = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# expect:"):
            match = EXPECT.fullmatch(line)
            assert match, f"{path.name}: malformed header line {line!r}"
            found.append(
                Expected(int(match["line"]), int(match["col"]), match["path"], match["text"])
            )
    return found


def run_check(path: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``rnnc check PATH`` in this process: exit code and everything printed."""
    code = main(["check", path])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def api_diagnostics(path: Path, loader: str) -> list[rnnc.Diagnostic]:
    """Diagnostics through the Python API: parsing raises, or ``rnnc.check`` reports."""
    try:
        if loader == "load_spec":
            spec = rnnc.load_spec(path)
        else:  # bytes, so the file that is not UTF-8 is checked this way too
            spec = rnnc.parse_spec(path.read_bytes(), str(path))
    except rnnc.SpecError as exc:
        assert isinstance(exc, rnnc.RnncError)
        assert exc.errors, "a SpecError must carry at least one error"
        return list(exc.diagnostics)
    return rnnc.check(spec)


def missing_lines(expected: Sequence[Expected], output: str, file: str) -> list[str]:
    lines = output.splitlines()
    return [
        str(e)
        for e in expected
        if not any(line.startswith(e.prefix(file)) and e.text in line for line in lines)
    ]


def missing_diagnostics(
    expected: Sequence[Expected], diagnostics: Sequence[rnnc.Diagnostic], file: str
) -> list[str]:
    def matches(e: Expected, d: rnnc.Diagnostic) -> bool:
        return (
            d.severity == "error"
            and d.file == file
            and d.location == Location(e.line, e.col)
            and d.dotted_path == e.path
            and e.text in d.message
        )

    return [str(e) for e in expected if not any(matches(e, d) for d in diagnostics)]


def test_corpus_is_well_formed() -> None:
    assert len(FILES) >= 45
    for path in FILES:
        expected = expectations(path)
        assert expected, f"{path.name} has no '# expect:' line"
        lines = path.read_bytes().count(b"\n") + 1
        for e in expected:
            assert 1 <= e.line <= lines, f"{path.name}: line {e.line} is past the end"
    assert {p.name for p in FILES} >= set(MULTI)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_cli_reports_every_expected_error(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_check(str(path), capsys)
    assert "Traceback" not in output
    assert "internal error" not in output
    assert code == 1, output
    missing = missing_lines(expectations(path), output, str(path))
    assert not missing, "not reported:\n  " + "\n  ".join(missing) + "\noutput:\n" + output


API_CASES = [(loader, p) for loader in ("load_spec", "parse_spec") for p in FILES]


@pytest.mark.parametrize(("loader", "path"), API_CASES, ids=lambda c: getattr(c, "stem", c))
def test_api_reports_every_expected_error(path: Path, loader: str) -> None:
    diagnostics = api_diagnostics(path, loader)
    missing = missing_diagnostics(expectations(path), diagnostics, str(path))
    found = "\n".join(d.format() for d in diagnostics)
    assert not missing, "not reported:\n  " + "\n  ".join(missing) + "\nfound:\n" + found


@pytest.mark.parametrize("name", MULTI)
def test_every_error_is_reported_at_once(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = CORPUS / name
    expected = expectations(path)
    assert len({e.path for e in expected}) >= 3, "needs three or more independent mistakes"
    code, output = run_check(str(path), capsys)
    assert code == 1
    assert not missing_lines(expected, output, str(path)), output
    summary = re.search(rf"^{re.escape(str(path))}: (\d+) errors?", output, re.MULTILINE)
    assert summary and int(summary[1]) >= len(expected), output
    if name == "multi_graph_errors.yaml":
        # The schema is fine: the graph checks find every mistake in one pass.
        errors = [d for d in rnnc.check(rnnc.load_spec(path)) if d.severity == "error"]
    else:
        with pytest.raises(rnnc.SpecError) as exc:
            rnnc.load_spec(path)
        errors = list(exc.value.errors)
    assert len(errors) >= len(expected)


def test_invalid_utf8_file_is_committed_as_bytes() -> None:
    raw = (CORPUS / "yaml_invalid_utf8.yaml").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")


# --- files the corpus cannot hold -------------------------------------------------------


def _too_large(tmp_path: Path) -> Path:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"rnnc: 1\n" + b"# padding\n" * ((1 << 20) // 10 + 1))
    return path


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "specs.yaml"
    path.mkdir()
    return path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "no_such_spec.yaml"


def _zero_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "empty.yaml"
    path.write_bytes(b"")
    return path


NOT_A_SPEC_FILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "over_1_mib": (_too_large, "too large (expected at most 1 MiB"),
    "directory": (_directory, "expected a regular file, found a directory"),
    "missing": (_missing, "no such file"),
    "zero_bytes": (_zero_bytes, "the file is empty"),
}


@pytest.mark.parametrize("case", NOT_A_SPEC_FILE)
def test_files_that_are_not_specs(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, text = NOT_A_SPEC_FILE[case]
    path = make(tmp_path)
    code, output = run_check(str(path), capsys)
    assert "Traceback" not in output
    assert code == 1, output
    assert any(line.startswith(f"{path}:") and text in line for line in output.splitlines()), output
    with pytest.raises(rnnc.SpecError) as exc:
        rnnc.load_spec(path)
    assert any(d.file == str(path) and text in d.message for d in exc.value.errors)
