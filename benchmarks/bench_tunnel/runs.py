"""One timed run: wait for a quiet machine, measure, measure again if disturbed; the
``ssh`` client processes it launches."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench_tunnel.common import log
from bench_tunnel.procs import LAUNCHED, CpuWatch
from bench_tunnel.sides import Env, Run, Side
from tests.harness import (
    SSH,
)


async def wait_quiet(env: Env, limit: float = 30.0) -> float:
    """Wait (at most ``limit`` s) until other processes use under max_foreign of the CPUs."""
    deadline = time.monotonic() + limit
    while True:
        async with CpuWatch() as watch:
            await asyncio.sleep(0.5)
        if watch.foreign <= env.max_foreign or time.monotonic() > deadline:
            return watch.foreign


async def guarded(env: Env, label: str, measure: Callable[[], Awaitable[Run]]) -> Run:
    """Run one measurement; if other processes took more than max_foreign of the CPUs
    meanwhile, wait for the machine to be quiet and measure again (at most env.retries)."""
    for attempt in range(1, env.retries + 2):
        async with CpuWatch() as watch:
            run = await measure()
        run.foreign, run.steal, run.irq, run.attempts = (
            watch.foreign,
            watch.steal,
            watch.irq,
            attempt,
        )
        env.runs += 1
        if watch.foreign <= env.max_foreign:
            return run
        env.disturbed += 1
        if attempt <= env.retries:
            log(f"{label}: other processes used {watch.foreign:.0%} of the CPUs; measuring again")
            await wait_quiet(env)
    log(f"{label}: still disturbed after {env.retries} retries; keeping it (flagged)")
    env.kept_disturbed += 1
    return run


async def ssh_cmd(side: Side, *args: str, **kw: Any) -> asyncio.subprocess.Process:
    assert SSH is not None and side.client_cfg is not None
    return await launch(SSH, "-F", str(side.client_cfg), *args, **kw)


async def launch(*argv: str, **kw: Any) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(*argv, **kw)
    LAUNCHED.add(proc.pid)
    return proc


@dataclass
class ClientRun:
    returncode: int | None  # None: killed after the timeout
    seconds: float  # until the ssh process itself exited
    stderr: str


async def run_client(*argv: str, timeout: float) -> ClientRun:
    """Run one client command (``ssh … true``) and time it until *that process* exits.

    Its stderr goes to a file, not a pipe read to EOF: with ProxyJump, OpenSSH's ``ssh``
    starts ``ssh -W`` as a ProxyCommand, sends it SIGHUP on exit and does not wait for it;
    that orphan inherits stderr and may outlive its parent (on a loaded machine, or if
    SIGHUP is ignored it waits for the jump channel to close). Reading a pipe to EOF
    therefore waited for the orphan, not for ``ssh``, and the kill after the timeout hit a
    PID that had already exited and been reaped (``ProcessLookupError``). Only the PID
    started here is killed, and only if it is still running."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = await launch(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            returncode = None
        else:
            returncode = proc.returncode
        elapsed = time.perf_counter() - t0
        err.seek(0)
        text = err.read().decode(errors="replace")
    return ClientRun(returncode, elapsed, text)
