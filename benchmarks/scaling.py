"""What idle_agents.py, parallel_streams.py and handshakes.py share: the sshtun bastion
with a chosen access file and ``workers``, a process tree's memory and CPU read from /proc
(every worker and the supervisor, or sshd's listener and every per-connection child), a
10 Hz sampler of the tree's cores, strict client configs for ``ssh -J``, the summary
numbers, and the shell of a main that compares setups (``measured``).

Helpers from bench_tunnel (processes, /proc), scene.py (banner wait) and tests/harness.py
(keys, configs) are reused, not copied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench_tunnel import (
    HOST_STAR,
    Mem,
    Procs,
    become_subreaper,
    cancellable,
    cpu_seconds,
    environment,
    log,
    memory,
)
from bench_tunnel.common import CLK_TCK
from scene import wait_banner

from tests.harness import SSHTUN, USER, Keys, agent_config, bastion_config, write_toml


# The bastion ------------------------------------------------------------------------------
def workers_supported() -> bool:
    """Does the sshtun under test have ``[bastion] workers``?"""
    from sshtunnel_mgr.core.config import BastionConfig

    return "workers" in BastionConfig.model_fields


def check_workers(values: Sequence[int]) -> str | None:
    """Why these ``--workers`` values cannot be measured here (None: they can)."""
    if any(w != 1 for w in values) and not workers_supported():
        return "this sshtun has no [bastion] workers key: only --workers 1 can be measured"
    return None


@dataclass
class Bastion:
    """A running ``sshtun bastion`` (its supervisor's PID; workers are its children)."""

    proc: asyncio.subprocess.Process
    port: int
    dir: Path
    config: Path
    workers: int

    def mem(self) -> Mem:
        return memory(self.proc.pid, True)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid, True)


async def start_bastion(
    procs: Procs,
    keys: Keys,
    d: Path,
    port: int,
    access_text: str,
    workers: int,
    limits: dict[str, Any] | None = None,
) -> Bastion:
    """``sshtun bastion`` on 127.0.0.1:port with this access file; ``workers`` is written
    to the config only when the code under test has the key (else it must be 1)."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    access = d / "access"
    access.write_text(access_text)
    access.chmod(0o600)
    kw: dict[str, Any] = {"admin_socket": d / "bastion.sock"}
    if workers_supported():
        kw["workers"] = workers
    elif workers != 1:
        raise RuntimeError("this sshtun has no [bastion] workers key")
    cfg = write_toml(
        d / "bastion.toml", "bastion", bastion_config(keys, access, port, limits=limits, **kw)
    )
    proc = await procs.spawn([*SSHTUN, "bastion", "--config", str(cfg)], d / "bastion.log")
    await wait_banner(port, proc=proc, timeout=120)
    return Bastion(proc, port, d, cfg, workers)


async def start_agent(
    procs: Procs, keys: Keys, d: Path, port: int, tunnels: Sequence[tuple[str, int, str]], i: int
) -> asyncio.subprocess.Process:
    """A real ``sshtun up`` publishing ``tunnels`` on the bastion at 127.0.0.1:port."""
    acfg = write_toml(
        d / f"agent{i}.toml",
        "agent",
        agent_config(keys, port, tunnels, admin_socket=d / f"agent{i}.sock"),
    )
    return await procs.spawn([*SSHTUN, "up", "--config", str(acfg)], d / f"agent{i}.log")


def client_config(
    d: Path,
    keys: Keys,
    home_pub: str,
    bastion_pub: str,
    port: int,
    source: str,
    routes: dict[str, tuple[str, int]],
    jump_user: str = "sshtun",
    cipher: str | None = None,
) -> Path:
    """A strict ``ssh -J`` config: ``Host bastion`` (from ``source``), one Host block per
    alias -> (host, port) through it, pinned known_hosts (host patterns such as ``idle-*``
    are allowed there, as in OpenSSH)."""
    known = d / f"known_hosts-{port}"
    lines = [f"[127.0.0.1]:{port} {bastion_pub}"]
    blocks = [
        f"Host bastion\n  HostName 127.0.0.1\n  Port {port}\n  User {jump_user}\n"
        f"  BindAddress {source}\n"
    ]
    for alias, (host, hport) in routes.items():
        lines.append(f"{host} {home_pub}" if hport == 22 else f"[{host}]:{hport} {home_pub}")
        hostname = f"  HostName {host}\n" if "*" not in alias else ""
        blocks.append(
            f"Host {alias}\n{hostname}  Port {hport}\n  User {USER}\n  ProxyJump bastion\n"
        )
    known.write_text("\n".join(lines) + "\n")
    cfg = d / f"client-{port}-{source}.ssh_config"
    extra = f"  Ciphers {cipher}\n" if cipher else ""
    cfg.write_text(
        "\n".join(blocks)
        + "\n"
        + HOST_STAR.format(known=known, identity=keys.client.path, extra=extra).replace(
            "ConnectTimeout 10", "ConnectTimeout 60"
        )
    )
    return cfg


# /proc ------------------------------------------------------------------------------------
def raise_nofile(need: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE (soft to the hard limit; the hard limit too when it is below
    ``need`` and we may) for this process and every child it starts; returns the limits."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need, need
        except (ValueError, OSError):
            log(f"RLIMIT_NOFILE hard limit {hard} < {need} and cannot be raised (not root?)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _own_cpu(pid: int) -> tuple[tuple[int, int], float] | None:
    """((pid, start time), utime+stime in seconds) of one process, without its children."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    f = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state=0 ... starttime=19
    return (pid, int(f[19])), (int(f[11]) + int(f[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    """A process's children from /proc/PID/task/TID/children (no scan of all of /proc,
    which takes longer than a sample period on a busy machine)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                out += [
                    int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
                ]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


@dataclass
class CoreSampler:
    """The cores a process tree uses, sampled every ``period`` s: the peak over one period
    and over a 1 s moving window, and the mean over the run.

    The mean comes from the tree's totals at the start and the end (every live process, and
    the ones reaped meanwhile through cutime/cstime). The peaks come from each process's
    own utime+stime between two samples (a process that appeared counts whole, one that
    exited loses its last partial period): summing the tree with cutime at every sample
    would count a per-connection sshd twice, or not at all, when it exits between the scan
    of /proc and the read of its parent. The kernel counts 10 ms ticks: at 10 Hz one sample
    resolves 0.1 core."""

    pids: Sequence[int]
    period: float = 0.1
    samples: list[tuple[float, dict[tuple[int, int], float]]] = field(default_factory=list)
    totals: list[tuple[float, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def _total(self) -> None:
        self.totals.append((time.monotonic(), sum(cpu_seconds(p, True) for p in self.pids)))

    def _sample(self) -> None:
        own: dict[tuple[int, int], float] = {}
        todo = list(self.pids)
        while todo:
            pid = todo.pop()
            got = _own_cpu(pid)
            if got is not None:
                own[got[0]] = got[1]
            todo.extend(_children(pid))
        self.samples.append((time.monotonic(), own))

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.period)

    async def __aenter__(self) -> CoreSampler:
        self._total()
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.wait([self._task])  # never swallows a cancellation of our caller
        self._sample()
        self._total()

    def _rates(self, span: int) -> list[float]:
        """Cores over every ``span`` consecutive periods (the CPU of each period summed)."""
        s = self.samples
        cpu = [
            sum(c - s[i][1].get(key, 0.0) for key, c in s[i + 1][1].items())
            for i in range(len(s) - 1)
        ]
        return [
            sum(cpu[i : i + span]) / (s[i + span][0] - s[i][0])
            for i in range(len(s) - span)
            if s[i + span][0] > s[i][0]
        ]

    def summary(self) -> dict[str, float]:
        if len(self.samples) < 2 or len(self.totals) < 2:
            return {"mean": float("nan"), "peak": float("nan"), "peak_1s": float("nan")}
        (t0, c0), (t1, c1) = self.totals[0], self.totals[-1]
        one = self._rates(1)
        window = max(1, round(1.0 / self.period))
        sec = self._rates(window) or one
        return {
            "mean": (c1 - c0) / (t1 - t0) if t1 > t0 else float("nan"),
            "peak": max(one) if one else float("nan"),
            "peak_1s": max(sec) if sec else float("nan"),
            "cpu_seconds": c1 - c0,
        }


# Numbers ----------------------------------------------------------------------------------
def med(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]  # NaN out
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float], digits: int = 1, scale: float = 1.0) -> str:
    """The median (min-max) of the runs, never the best alone."""
    xs = [x * scale for x in xs if x == x]
    if not xs:
        return "-"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


# A main that compares setups --------------------------------------------------------------
S = TypeVar("S")


def measured(
    name: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, list[S]]],
    report: Callable[[list[S], argparse.Namespace, dict[str, Any]], None],
    runs_of: Callable[[S], tuple[str, Any]],
) -> tuple[int, list[S]]:
    """Check ``--workers``, prepare the machine (file limit, /run/sshd, subreaper), run the
    setups, print their table with the load before and after, write ``--json``: the exit
    status (2: cannot measure, 130: interrupted) and the setups."""
    why = check_workers(args.workers)
    if why:
        print(f"{name}: {why}", file=sys.stderr)
        return 2, []
    raise_nofile(4096)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    become_subreaper()
    env = environment()
    load_before = loadavg()
    started = time.time()
    try:
        setups = asyncio.run(cancellable(run(args)))
    except asyncio.CancelledError:
        print(f"{name}: interrupted; every process it started is stopped", file=sys.stderr)
        return 130, []
    report(setups, args, env)
    print(
        f"load average (1/5/15 min) before {load_before}, after {loadavg()}; "
        f"took {time.time() - started:.0f}s"
    )
    if args.json:
        runs = dict(runs_of(s) for s in setups)
        args.json.write_text(json.dumps({"environment": env, "runs": runs}, indent=1) + "\n")
    return 0, setups
