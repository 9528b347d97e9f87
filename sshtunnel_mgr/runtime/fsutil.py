"""Atomic file writes with the right mode from the first byte (no half-written or
world-readable window)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def write_atomic(
    path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, rename.
    ``owner`` (uid, gid) is given to the new file before its first byte (root only)."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
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
    fd = _open_lock(lock)
    try:
        _share_with_owner(fd, path)
        _wait_for_lock(fd, timeout, cancel)
        yield
    finally:
        os.close(fd)  # releases the lock


def _share_with_owner(fd: int, path: Path) -> None:
    """Root locking a file that another user owns (the bastion's access file in the
    state directory systemd gives its dynamic user): the lock file gets that owner too,
    or the next lock by the owner fails with Permission denied (a root-made lock file,
    0600, measured under the shipped unit). Repairs such a lock file left earlier."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_uid != 0 and os.fstat(fd).st_uid != st.st_uid:
        os.fchown(fd, st.st_uid, st.st_gid)


def _open_lock(lock: Path) -> int:
    """Open (or create, 0600) a lock file without following a symbolic link: one planted
    there must not make us create or open a file elsewhere."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(lock, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP,
                f"lock file {lock} is a symbolic link; refusing to follow it (remove it)",
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"lock file {lock} is not a regular file (remove it)")
    return fd


def edit_atomic(
    path: Path,
    edit: Callable[[str], str],
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    mode: int | None = None,
    verify: Callable[[Path, os.stat_result], None] | None = None,
) -> None:
    """Read ``path``, apply ``edit`` to its text, write the result atomically with
    ``mode`` (default: the same mode) and the same owner, all under ``locked(path)``.
    ``verify`` sees the file's ``fstat`` before it is read and may raise to refuse it.
    Unchanged text is not rewritten. Blocking: the bastion runs it in a worker thread
    (``timeout``/``cancel`` as for ``locked``)."""
    path = Path(path)
    with locked(path, timeout=timeout, cancel=cancel):
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            if verify is not None:
                verify(path, st)
            text = handle.read().decode("utf-8")
        new = edit(text)
        if new != text:
            keep = (st.st_uid, st.st_gid) if os.geteuid() == 0 and st.st_uid != 0 else None
            write_atomic(
                path, new.encode("utf-8"), st.st_mode & 0o777 if mode is None else mode, keep
            )
