"""``--profile``: a py-spy look at the sshtun bastion and agent during a transfer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from bench_tunnel.common import DIRECTIONS
from bench_tunnel.sides import Side
from bench_tunnel.throughput import transfer


# Profiling (optional) -----------------------------------------------------------------------
async def profile(side: Side, nbytes: int, out_dir: Path, native: bool) -> dict[str, Any]:
    """py-spy the sshtun bastion and agent during one download and one upload."""
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    assert side.agent is not None
    results: dict[str, Any] = {}
    spies = {}
    for role, pid in (("bastion", side.bastion.pid), ("agent", side.agent.pid)):
        raw = out_dir / f"pyspy-{role}.txt"
        argv = [pyspy, "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(raw)]
        # --native (C frames, e.g. OpenSSL) needs to pause the process for each sample.
        argv += ["--native"] if native else ["--nonblocking"]
        spies[role] = (await side.env.procs.spawn(argv, out_dir / f"pyspy-{role}.log"), raw)
    await asyncio.sleep(1.0)
    try:
        for direction in DIRECTIONS:
            await transfer(side, direction, nbytes, timeout=300)
    finally:
        for proc, _raw in spies.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        for proc, _raw in spies.values():
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                await side.env.procs.stop(proc)
            if proc in side.env.procs.live:
                side.env.procs.live.remove(proc)
    for role, (_proc, raw) in spies.items():
        results[role] = summarize_pyspy(raw)
        if "error" in results[role]:
            results[role]["error"] += ": " + (out_dir / f"pyspy-{role}.log").read_text()[-500:]
    return results


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    tail = "/".join(parts[-2:]) if parts else path
    return f"{name} ({tail})" if where else name


IDLE_MARKERS = ("epoll_wait", "acquire_lock", "SimpleQueue_get", "select (", "poll (", "futex")


def _is_idle(stack: list[str]) -> bool:
    """A thread waiting (event loop in epoll, a worker thread on a lock): not CPU."""
    return any(m in stack[-1] or m in " ".join(stack[-3:]) for m in IDLE_MARKERS)


def _bucket(stack: list[str]) -> str:
    """Coarse attribution of one on-CPU sample, by ordered rules on its frames."""
    leaf = stack[-1]
    funcs = [f.split(" (")[0] for f in stack]
    for outer, inner in itertools.pairwise(funcs):
        if outer == inner == "SSHConnection.send_packet":
            # send_packet calling itself: the MSG_IGNORE asyncssh sends before every packet
            return "asyncssh MSG_IGNORE before each packet (build, encrypt, send)"
    if leaf.startswith(("send ", "sendmsg ", "sendto ", "recv ", "recvfrom ", "write ", "read ")):
        return "socket syscalls (kernel loopback TCP, copies, wake-ups)"
    if leaf.startswith("getrandom") or any("os_urandom" in f for f in stack):
        return "os.urandom (packet padding)"
    if any("crypto/cipher.py" in f or "_rust.abi3.so" in f or "libcrypto" in f for f in stack):
        return "cipher (cryptography / OpenSSL)"
    if "sshtunnel_mgr/" in leaf:
        return "sshtun code"
    if any("logging/" in f for f in stack):
        return "logging"
    if any("asyncssh/" in f for f in stack):
        return "asyncssh (Python)"
    if any("asyncio/" in f for f in stack):
        return "asyncio event loop"
    return "other"


def summarize_pyspy(raw: Path) -> dict[str, Any]:
    if not raw.exists():
        return {"error": f"{raw} not written"}
    self_time: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            f
            for f in stack_text.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        if _is_idle(frames):
            idle += count
            continue
        total += count
        names = [_frame_name(f) for f in frames]
        self_time[names[-1]] += count
        for n in set(names):
            incl[n] += count
        buckets[_bucket(frames)] += count
    if not total:
        return {"error": "no samples"}

    def top(c: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(n)]

    return {
        "samples": total,
        "idle_samples_excluded": idle,
        "raw_file": str(raw),
        "buckets_pct": top(buckets, 20),
        "top_self_pct": top(self_time, 15),
        "top_inclusive_pct": top(incl, 25),
    }


def profile_report(prof: dict[str, Any]) -> str:
    if isinstance(prof.get("error"), str):  # py-spy missing: nothing was sampled
        return f"py-spy: {prof['error']}"
    out = []
    for role, data in prof.items():
        if "error" in data:
            out.append(f"py-spy {role}: {data['error']}")
            continue
        out.append(
            f"py-spy, sshtun {role} during one download + one upload "
            f"({data['samples']} on-CPU samples):"
        )
        out.append("  by kind:")
        out.extend(f"    {v:5.1f}%  {k}" for k, v in data["buckets_pct"])
        out.append("  top self time:")
        out.extend(f"    {v:5.1f}%  {k}" for k, v in data["top_self_pct"][:12])
    return "\n".join(out)
