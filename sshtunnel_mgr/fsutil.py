"""Atomic file writes with the right mode from the first byte (no half-written or
world-readable window)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, rename."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for editing ``path`` (a ``.NAME.lock`` file beside it), so
    the bastion and ``sshtun keys`` never interleave read-modify-write cycles."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def edit_atomic(path: Path, edit: Callable[[str], str]) -> None:
    """Read ``path``, apply ``edit`` to its text, write the result atomically with the same
    mode, all under ``locked(path)``. Unchanged text is not rewritten."""
    path = Path(path)
    with locked(path):
        text = path.read_text(encoding="utf-8")
        new = edit(text)
        if new != text:
            write_atomic(path, new.encode("utf-8"), path.stat().st_mode & 0o777)
