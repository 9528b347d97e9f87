"""Processes, read from /proc: trees, memory (RSS/PSS), CPU seconds; the subreaper and the
watch on other processes' CPU (a disturbed run is measured again)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_tunnel.common import CLK_TCK, log


# /proc helpers -------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid ..." -- comm may contain spaces; split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    kids = children_map()
    out: list[int] = []
    todo = list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree(pid: int, with_children: bool) -> list[int]:
    return [pid, *descendants(pid)] if with_children else [pid]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def cpu_seconds(pid: int, with_children: bool) -> float:
    """utime+stime of the process (and, for a tree, of its live descendants plus every
    reaped one, through cutime/cstime)."""
    total = 0
    for p in tree(pid, with_children):
        f = _stat_fields(p)
        if f is None:
            continue
        # after "pid (comm) ": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
        total += int(f[11]) + int(f[12])
        if with_children:
            total += int(f[13]) + int(f[14])
    return total / CLK_TCK


@dataclass
class Mem:
    rss_kib: int
    pss_kib: int
    processes: int


def memory(pid: int, with_children: bool) -> Mem:
    pids = tree(pid, with_children)
    return Mem(sum(rss_kib(p) for p in pids), sum(pss_kib(p) for p in pids), len(pids))


# Processes ----------------------------------------------------------------------------
class Procs:
    """Every child the benchmark starts; each is stopped by its PID (and, for an sshd,
    the per-connection processes it forked, also by PID)."""

    def __init__(self, cwd: Path) -> None:
        self.live: list[asyncio.subprocess.Process] = []
        self.cwd = cwd

    async def spawn(
        self, argv: Sequence[str], logfile: Path, env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        with open(logfile, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, **(env or {})},
                cwd=self.cwd,
            )
        self.live.append(proc)
        LAUNCHED.add(proc.pid)
        return proc

    async def stop(self, proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
        kids = descendants(proc.pid)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        for kid in kids:  # e.g. an sshd's per-connection processes outlive the listener
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        if proc in self.live:
            self.live.remove(proc)

    async def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            await self.stop(proc)


def _cpu_line() -> tuple[int, int, int]:
    """(process time, irq+softirq, steal) clock ticks over all CPUs since boot (/proc/stat).

    Interrupt time is kept apart: the kernel accounts the loopback TCP work of the runs
    themselves there (not to any process), so it says nothing about other processes.
    """
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    return user + nice + system, irq + softirq, steal


# PIDs of the children this benchmark starts itself (asyncio waits for those).
LAUNCHED: set[int] = set()


def become_subreaper() -> bool:
    """Orphaned descendants (ProxyJump's ``ssh -W``, which outlives the ``ssh`` that started
    it) are re-parented to this process instead of init, so their CPU time stays countable."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_orphans() -> None:
    """Reap exited orphans re-parented to us (never a child asyncio is waiting for). The
    tree's CPU total does not change: a zombie's time moves into our cutime."""
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in LAUNCHED:
            continue
        f = _stat_fields(int(pid))
        if f is not None and f[1] == me and f[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(pid), os.WNOHANG)


class CpuWatch:
    """How much CPU other processes (not started by this benchmark) used meanwhile.

    This machine may be shared (someone running the test suite takes one of the two cores).
    Other = the CPUs' process time (/proc/stat user+nice+system) minus our own: this process
    and all its descendants, exited ones included (reaped: through cutime; orphans: we are
    their subreaper, see ``become_subreaper``).
    """

    def __init__(self) -> None:
        self.foreign = 0.0
        self.steal = 0.0
        self.irq = 0.0

    async def __aenter__(self) -> CpuWatch:
        reap_orphans()
        self.t0 = time.monotonic()
        self.busy0, self.irq0, self.steal0 = _cpu_line()
        self.own0 = cpu_seconds(os.getpid(), True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        own = cpu_seconds(os.getpid(), True) - self.own0
        busy, irq, steal = _cpu_line()
        capacity = (time.monotonic() - self.t0) * (os.cpu_count() or 1)
        self.foreign = max(0.0, (busy - self.busy0) / CLK_TCK - own) / capacity
        self.steal = (steal - self.steal0) / CLK_TCK / capacity
        self.irq = (irq - self.irq0) / CLK_TCK / capacity


def kill_tree(pid: int) -> None:
    """SIGKILL every descendant of ``pid`` (the home sshd's leftover sessions)."""
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


async def finish(procs: Procs, work: Path, keep: bool) -> None:
    """The end of every benchmark run: stop each process it started, by PID, and remove
    its work dir unless ``keep``."""
    await procs.stop_all()
    if keep:
        log(f"kept work dir {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
