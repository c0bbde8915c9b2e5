"""Writing files so that nothing half-written is ever left on disk."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees half of it.

    A regular file (or a new one) is written to a temporary file beside it, then
    renamed into place. A symlink is followed: its target is replaced that way, and the
    link stays a link. Anything else that exists at ``path`` (a FIFO, a device such as
    ``/dev/null``) is written in place, as a shell's ``>`` would: renaming over it would
    replace the system's file with a regular one.
    """
    target = os.path.realpath(os.fspath(path))
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        with open(target, "wb") as handle:
            handle.write(payload)
        return
    folder = os.path.dirname(target)
    fd, temporary = tempfile.mkstemp(prefix=".rnnc-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def overwritten_input(
    output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]
) -> str | None:
    """The input that writing ``output`` would replace, if any: the same file under any
    spelling of its path, through links too (None when ``output`` is no input)."""
    for candidate in inputs:
        if candidate is None:
            continue
        try:
            if os.path.samefile(output, candidate):
                return os.fspath(candidate)
        except OSError:  # either does not exist (yet): they cannot be one file
            if os.path.realpath(output) == os.path.realpath(candidate):
                return os.fspath(candidate)
    return None
