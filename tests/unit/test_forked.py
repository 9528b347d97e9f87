"""bastion/workers/forked.py's process handle with real forked children (no exec)."""

from __future__ import annotations

import os
import signal
import time

from sshtunnel_mgr.bastion.workers import forked


def _child_that(exit_code: int | None) -> int:
    pid = os.fork()
    if pid == 0:
        if exit_code is None:
            time.sleep(60)  # until killed (bounded: the test kills it at once)
            os._exit(1)
        os._exit(exit_code)
    return pid


async def test_returncode_is_the_exit_status() -> None:
    handle = forked.ForkedWorker(_child_that(3))
    assert await handle.wait() == 3
    assert handle.returncode == 3
    handle.kill()  # ended: nothing to signal, no error


async def test_kill_goes_through_the_pidfd_and_reads_as_minus_the_signal() -> None:
    handle = forked.ForkedWorker(_child_that(None))
    assert handle.returncode is None
    handle.kill()
    assert await handle.wait() == -signal.SIGKILL


async def test_a_worker_child_with_bad_arguments_exits_with_their_status() -> None:
    """The whole path: ``fork_worker`` forks inside a running loop, the child leaves the
    parent's loop and descriptors behind, runs ``worker.main`` (argparse refuses: 2) and
    leaves through ``os._exit``; the parent's loop goes on."""
    handle = forked.fork_worker(["--no-such-option"], [], "sshtun-test")
    assert await handle.wait() == 2
