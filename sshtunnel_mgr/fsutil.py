"""Atomic file writes with the right mode from the first byte (no half-written or
world-readable window)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
import time
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


class LockTimeout(TimeoutError):
    """The lock was not free within the time given (or the waiter gave up)."""


LOCK_POLL = 0.05  # seconds between tries of a lock that has a timeout


def _wait_for_lock(fd: int, timeout: float | None, cancel: threading.Event | None) -> None:
    """``flock`` has no timeout: with one, retry a non-blocking lock until it is free, the
    deadline passes or ``cancel`` is set (meant for a worker thread; never the event loop)."""
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    pause = cancel or threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if pause.is_set():
            raise LockTimeout("gave up waiting for the lock")
        if time.monotonic() >= deadline:
            raise LockTimeout(f"still locked by another process after {timeout:g} s")
        pause.wait(LOCK_POLL)


@contextlib.contextmanager
def locked(
    path: Path, *, timeout: float | None = None, cancel: threading.Event | None = None
) -> Iterator[None]:
    """Hold an exclusive lock for editing ``path`` (a ``.NAME.lock`` file beside it), so
    the bastion and ``sshtun keys`` never interleave read-modify-write cycles. Without a
    ``timeout`` it waits as long as it takes; with one it raises ``LockTimeout``."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _wait_for_lock(fd, timeout, cancel)
        yield
    finally:
        os.close(fd)  # releases the lock


def edit_atomic(
    path: Path,
    edit: Callable[[str], str],
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Read ``path``, apply ``edit`` to its text, write the result atomically with the same
    mode, all under ``locked(path)``. Unchanged text is not rewritten. Blocking: the
    bastion runs it in a worker thread (``timeout``/``cancel`` as for ``locked``)."""
    path = Path(path)
    with locked(path, timeout=timeout, cancel=cancel):
        text = path.read_text(encoding="utf-8")
        new = edit(text)
        if new != text:
            write_atomic(path, new.encode("utf-8"), path.stat().st_mode & 0o777)
