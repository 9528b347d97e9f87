"""Worker processes forked from the supervisor, sharing its imported modules' memory.

A worker started with ``exec`` imports asyncssh, cryptography and the config models anew:
about 27 MiB of private heap per worker before its first client (measured: a worker at
N=0 held 34 MiB of private anonymous memory, a bare interpreter 6). The supervisor imports
the worker's modules once (``preload``) and forks each worker from itself, so those pages
are shared copy-on-write by every worker (and a restarted one). ``gc.freeze()`` just before
the fork keeps the child's collector from writing into them (Instagram's recipe); the
parent unfreezes at once.

The child leaves the parent's event loop behind: it resets the signal wakeup fd and the
parent's Python signal handlers, closes every descriptor but stdout, stderr and the ones it
was given (the parent's epoll, sockets and other workers' control lines among them), reads
stdin from /dev/null, names itself (``ps -o comm``, ``top``), runs ``worker.main(argv)`` in
a new loop (asyncio sees the new PID and lets it start one) and leaves with ``os._exit`` (no
parent cleanup runs twice). The parent waits on a pidfd (no child-watcher thread);
``returncode`` follows ``asyncio.subprocess``: the exit status, or minus the signal that
killed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sys
import traceback
from collections.abc import Sequence

FAILED = 70  # EX_SOFTWARE: the child raised before the worker's main could answer
LOST = 255  # the exit status of a child that something else reaped
PR_SET_NAME = 15


def preload() -> None:
    """Import what a worker runs, here, before the first fork."""
    from sshtunnel_mgr.bastion.workers import worker  # noqa: F401


class ForkedWorker:
    """The parent's handle on one forked worker (what the supervisor used of
    ``asyncio.subprocess.Process``: ``pid``, ``returncode``, ``wait``, ``kill``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(pid)
        self._loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        """The pidfd is readable: the child has ended (a zombie until this waitpid)."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: its status is lost
            pid, status = self.pid, -1
        if pid == 0:  # not ended after all
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self.returncode = LOST if status == -1 else os.waitstatus_to_exitcode(status)
        if not self._done.done():
            self._done.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    def kill(self) -> None:
        """SIGKILL through the pidfd (never a PID the kernel has handed on)."""
        if self.returncode is None and self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)


def fork_worker(argv: Sequence[str], keep_fds: Sequence[int], name: str) -> ForkedWorker:
    """Fork a worker that runs ``worker.main(argv)`` with ``keep_fds`` (and 1, 2) open."""
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    try:
        pid = os.fork()
    except OSError:
        gc.unfreeze()
        raise
    if pid == 0:
        _child(list(argv), keep_fds, name)  # never returns
    gc.unfreeze()
    return ForkedWorker(pid)


def _child(argv: list[str], keep_fds: Sequence[int], name: str) -> None:
    code = FAILED
    try:
        signal.set_wakeup_fd(-1)
        for sig in signal.valid_signals():
            with contextlib.suppress(OSError, ValueError, TypeError):
                if callable(signal.getsignal(sig)):
                    signal.signal(sig, signal.SIG_DFL)
        _close_all_but({1, 2, *keep_fds})
        null = os.open(os.devnull, os.O_RDONLY)
        if null != 0:
            os.dup2(null, 0)
            os.close(null)
        _set_name(name)
        from sshtunnel_mgr.bastion.workers.worker import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else FAILED
    except BaseException:  # the child must reach os._exit whatever happens
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _close_all_but(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, 2**31 - 1)  # close_range(2) on Linux: one call, not a loop


def _set_name(name: str) -> None:
    """``/proc/self/comm`` (15 bytes): what ``ps -o comm`` and ``top`` show."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
