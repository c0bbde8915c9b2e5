"""rnnc.runtime.files and rnnc.runtime.registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnc.errors import RnncError
from rnnc.runtime.files import write_atomic
from rnnc.runtime.registry import available_backends, load_backend


def test_write_atomic_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    write_atomic(target, "new text")
    assert target.read_text() == "new text"
    write_atomic(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_atomic_leaves_nothing_behind_on_failure(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_unknown_backend_names_what_is_installed() -> None:
    names = available_backends()
    assert names == sorted(names)
    with pytest.raises(RnncError, match="unknown backend 'nope'"):
        load_backend("nope")
