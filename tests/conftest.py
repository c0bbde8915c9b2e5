"""Shared fixtures: the gallery, spec text helpers and an in-process CLI runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from rnnc.tools.cli import main
from tests.helpers import spec_text

ROOT = Path(__file__).resolve().parent.parent
GALLERY = sorted((ROOT / "specs").glob("*.yaml"))


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``rnnc ARGS...`` in this process; return exit code, stdout and stderr."""

    def run(*args: str) -> Result:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors and --help
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write dedented spec text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(spec_text(text), encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True, scope="session")
def _c_step_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The torch backend's compiled C steps go to a folder of this run's own (unless
    RNNC_CACHE says where): tests neither depend on nor fill a user's cache."""
    import os

    if "RNNC_CACHE" not in os.environ:
        os.environ["RNNC_CACHE"] = str(tmp_path_factory.mktemp("rnnc-cache"))
