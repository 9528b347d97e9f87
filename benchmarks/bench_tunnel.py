#!/usr/bin/env python3
"""sshtun bastion vs OpenSSH's sshd as the bastion, on the ``ssh -J`` path.

Two setups share the same keys, the same home sshd (a throwaway OpenSSH sshd on loopback),
the same client configuration (cipher, key exchange) and the same measurements:

  sshtun   client ``ssh -J`` -> ``sshtun bastion`` (own process) <- ``sshtun up`` (own process)
           routes by name: ``homebox:22``
  OpenSSH  client ``ssh -J`` -> OpenSSH ``sshd`` (AllowTcpForwarding yes) <- ``ssh -N -R``
           routes by ``127.0.0.1:P`` only (never by name: sshd would resolve it through DNS)

Measured, with interleaved rounds and medians:
  1. bulk throughput of one stream each way, per cipher (aes128-gcm, chacha20-poly1305),
     MiB/s of wall time for the whole ``ssh`` command (nothing subtracted);
  2. set-up time of ``ssh -J ... homebox true``;
  3. the bastion's memory per idle agent connection (200 by default), RSS delta / count.

Plus, for explanation: CPU seconds per GiB spent by the bastion and by the agent during the
bulk transfers, and (``--profile``) a py-spy look at the sshtun bastion and agent.

Run ``python benchmarks/bench_tunnel.py --help``; see benchmarks/README.md. Everything stays on
127.0.0.1; every process the script starts is stopped by its PID when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]


def _prepare_source(argv: Sequence[str]) -> tuple[Path, str]:
    """Where sshtunnel_mgr (and tests.harness) are imported from, for this process and for
    every sshtun process it starts: the working tree, or with ``--ref REV`` that git revision
    exported to a temporary directory (so that edits in progress do not change the code
    under test halfway through a run)."""
    ref = None
    for i, arg in enumerate(argv):
        if arg == "--ref" and i + 1 < len(argv):
            ref = argv[i + 1]
        elif arg.startswith("--ref="):
            ref = arg.split("=", 1)[1]
    if ref is None:
        return ROOT, "working tree"
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest = Path(tempfile.mkdtemp(prefix=f"sshtun-src-{sha[:10]}-"))
    atexit.register(shutil.rmtree, dest, True)
    archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest, f"git {ref} ({sha[:10]})"


def _run_as_benchmark() -> bool:
    """This file is the script being run, or another script in benchmarks/ imports it (and
    then ``--ref`` on its command line applies to it too)."""
    main = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    return __name__ == "__main__" or (main is not None and main.parent == ROOT / "benchmarks")


SRC, SRC_LABEL = _prepare_source(sys.argv[1:] if _run_as_benchmark() else [])
sys.path.insert(0, str(SRC))
# Children (python -m sshtunnel_mgr ...) import from the same place; they run in the work dir
# so that the current directory never shadows it.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(SRC), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

import asyncssh  # noqa: E402

import sshtunnel_mgr  # noqa: E402
from tests.harness import (  # noqa: E402
    SSH,
    SSHD,
    SSHTUN,
    USER,
    Keys,
    agent_config,
    bastion_config,
    bastion_pub,
    free_port,
    home_sshd,
    pub_of,
    write_ssh_config,
    write_toml,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com")
SETUPS = ("sshtun", "openssh")
DIRECTIONS = ("upload", "download")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Aims (sshtun relative to OpenSSH as the bastion, or absolute).
AIM_THROUGHPUT_RATIO = 0.8  # sshtun >= 0.8x OpenSSH, each way, aes128-gcm
AIM_SETUP_RATIO = 0.8  # sshtun set-up time <= 0.8x OpenSSH
AIM_IDLE_KIB = 64.0  # sshtun bastion memory per idle agent connection


def short(cipher: str) -> str:
    return cipher.split("@")[0]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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


async def wait_log(
    proc: asyncio.subprocess.Process,
    logfile: Path,
    marker: str,
    timeout: float = 20,
    fail: Sequence[str] = (),
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = logfile.read_text(errors="replace") if logfile.exists() else ""
        if marker in text:
            return
        if any(f in text for f in fail):
            raise RuntimeError(f"{logfile}: failed before {marker!r}:\n" + text[-3000:])
        if proc.returncode is not None:
            raise RuntimeError(
                f"{logfile.name}: exited {proc.returncode} before {marker!r}:\n" + text[-3000:]
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{logfile.name}: no {marker!r} in {timeout}s:\n" + text[-3000:])
        await asyncio.sleep(0.05)


# The two setups --------------------------------------------------------------------------
HOST_STAR = (
    "Host *\n  BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {known}\n"
    "  GlobalKnownHostsFile /dev/null\n  IdentitiesOnly yes\n  IdentityFile {identity}\n"
    "  ConnectTimeout 10\n  ServerAliveInterval 5\n  LogLevel ERROR\n{extra}"
)


def algo_opts(cipher: str, kex: str | None) -> str:
    return f"  Ciphers {cipher}\n" + (f"  KexAlgorithms {kex}\n" if kex else "")


# Run the sshtun agent with its cipher list narrowed to one cipher, so that the agent hop
# uses the same cipher as the client's hops (the agent has no cipher setting; without this
# it always negotiates aes128-gcm, the first in sshtunnel_mgr.core.policy). Nothing else changes:
# this is ``python -m sshtunnel_mgr up --config FILE``.
AGENT_SHIM = (
    "import sys; import sshtunnel_mgr.core.policy as p; "
    "p.ENCRYPTION_ALGS = tuple(sys.argv.pop(1).split(',')); "
    "from sshtunnel_mgr.cli.main import run; run()"
)


@dataclass
class Env:
    work: Path
    keys: Keys
    home_port: int
    procs: Procs
    kex: str | None
    max_foreign: float = 0.05
    retries: int = 3
    runs: int = 0
    disturbed: int = 0
    kept_disturbed: int = 0


@dataclass
class Side:
    """One running setup: a bastion process and (per cipher) an agent and client config."""

    kind: str  # "sshtun" | "openssh"
    env: Env
    port: int
    bastion: asyncio.subprocess.Process
    fwd_port: int = 0  # OpenSSH: the 127.0.0.1:P the reference agent's -R binds
    agent: asyncio.subprocess.Process | None = None
    client_cfg: Path | None = None
    host: str = ""
    cipher: str = ""

    @property
    def tree(self) -> bool:
        return self.kind == "openssh"

    def bastion_mem(self) -> Mem:
        return memory(self.bastion.pid, self.tree)

    def bastion_cpu(self) -> float:
        return cpu_seconds(self.bastion.pid, self.tree)

    def agent_cpu(self) -> float:
        assert self.agent is not None
        return cpu_seconds(self.agent.pid, False)

    def dir(self, name: str) -> Path:
        d = self.env.work / f"{self.kind}-{self.port}" / name
        d.mkdir(parents=True, exist_ok=True)
        return d


async def start_sshtun_bastion(env: Env) -> Side:
    port = free_port()
    side_dir = env.work / f"sshtun-{port}"
    side_dir.mkdir(parents=True)
    access = side_dir / "access"
    access.write_text(
        f'permitlisten="homebox:22,idle-*:22" {env.keys.agent.public_line}\n'
        f'permitopen="homebox:22" {env.keys.client.public_line}\n'
    )
    # Like the reference's MaxStartups 1000: 200 idle agents of one key, 16 connecting at once.
    limits = {
        "max_connections_per_key": 2000,
        "max_startups_per_source": 1000,
        "max_startups": "1000:30:2000",
    }
    config = bastion_config(env.keys, access, port, limits=limits)
    cfg = write_toml(side_dir / "bastion.toml", "bastion", config)
    logfile = side_dir / "bastion.log"
    proc = await env.procs.spawn([*SSHTUN, "bastion", "--config", str(cfg)], logfile)
    await wait_log(proc, logfile, "listening on")
    return Side("sshtun", env, port, proc)


def ref_sshd_config(
    env: Env, port: int, side_dir: Path, max_startups: str | None = "1000:30:2000"
) -> Path:
    """The reference bastion's sshd_config; ``max_startups=None`` keeps OpenSSH's default
    (10:30:100), as the attack benchmark does."""
    auth = side_dir / "authorized_keys"
    auth.write_text(f"{env.keys.agent.public_line}\n{env.keys.client.public_line}\n")
    cfg = side_dir / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {env.keys.bastion_host.path}\n"
        f"PidFile {side_dir / 'sshd.pid'}\nAuthorizedKeysFile {auth}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "AuthenticationMethods publickey\nUsePAM no\nStrictModes no\nUseDNS no\n"
        "PermitRootLogin prohibit-password\nLogLevel INFO\n"
        f"AllowUsers {USER}\nAllowTcpForwarding yes\nGatewayPorts no\n"
        "X11Forwarding no\nAllowAgentForwarding no\nPermitTTY no\n"
        + (f"MaxStartups {max_startups}\n" if max_startups else "")
        + "MaxSessions 1000\nClientAliveInterval 15\n"
    )
    assert SSHD is not None
    check = subprocess.run([SSHD, "-t", "-f", str(cfg)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"reference sshd config: {check.stderr}")
    return cfg


async def start_ref_bastion(env: Env) -> Side:
    assert SSHD is not None
    port = free_port()
    side_dir = env.work / f"openssh-{port}"
    side_dir.mkdir(parents=True)
    cfg = ref_sshd_config(env, port, side_dir)
    logfile = side_dir / "sshd.log"
    proc = await env.procs.spawn([SSHD, "-D", "-e", "-f", str(cfg)], logfile)
    await wait_log(proc, logfile, "Server listening")
    return Side("openssh", env, port, proc)


async def start_agent(side: Side, cipher: str) -> None:
    """Start this side's agent for ``cipher`` and write the client's ssh config for it."""
    env, keys = side.env, side.env.keys
    d = side.dir(short(cipher))
    if side.kind == "sshtun":
        acfg = write_toml(
            d / "agent.toml",
            "agent",
            agent_config(keys, side.port, [("homebox", 22, f"127.0.0.1:{env.home_port}")]),
        )
        logfile = d / "agent.log"
        argv = [sys.executable, "-c", AGENT_SHIM, cipher, "up", "--config", str(acfg)]
        side.agent = await env.procs.spawn(argv, logfile)
        await wait_log(
            side.agent, logfile, "published bastion=", fail=("publish refused", "could not")
        )
        side.client_cfg = write_ssh_config(
            d / "client", keys, side.port, extra_opts=algo_opts(cipher, env.kex)
        )
        side.host = "homebox"
    else:
        assert SSH is not None
        side.fwd_port = side.fwd_port or free_port()
        known = d / "known_hosts"
        known.write_text(
            f"[127.0.0.1]:{side.port} {bastion_pub(keys)}\n"
            f"[127.0.0.1]:{side.fwd_port} {pub_of(keys.home_host)}\n"
        )
        agent_cfg = d / "agent_ssh_config"
        agent_cfg.write_text(
            f"Host refbastion\n  HostName 127.0.0.1\n  Port {side.port}\n  User {USER}\n\n"
            + HOST_STAR.format(
                known=known,
                identity=keys.agent.path,
                extra=algo_opts(cipher, env.kex) + "  ExitOnForwardFailure yes\n",
            ).replace("ServerAliveInterval 5", "ServerAliveInterval 15")
        )
        logfile = d / "agent.log"
        argv = [
            SSH,
            "-v",
            "-F",
            str(agent_cfg),
            "-N",
            "-R",
            f"127.0.0.1:{side.fwd_port}:127.0.0.1:{env.home_port}",
            "refbastion",
        ]
        side.agent = await env.procs.spawn(argv, logfile)
        await wait_log(side.agent, logfile, "remote forward success")
        client = d / "client"
        client.mkdir(exist_ok=True)
        side.client_cfg = client / "ssh_config"
        side.client_cfg.write_text(
            f"Host refbastion\n  HostName 127.0.0.1\n  Port {side.port}\n  User {USER}\n\n"
            f"Host refhome\n  HostName 127.0.0.1\n  Port {side.fwd_port}\n  User {USER}\n"
            "  ProxyJump refbastion\n\n"
            + HOST_STAR.format(
                known=known, identity=keys.client.path, extra=algo_opts(cipher, env.kex)
            )
        )
        side.host = "refhome"
    side.cipher = cipher


async def stop_agent(side: Side) -> None:
    if side.agent is not None:
        await side.env.procs.stop(side.agent)
        side.agent = None


# Measurements -------------------------------------------------------------------------
@dataclass
class Run:
    seconds: float
    bastion_cpu: float = 0.0
    agent_cpu: float = 0.0
    foreign: float = 0.0  # share of all CPUs used by processes the benchmark did not start
    steal: float = 0.0  # share of all CPUs the hypervisor took (steal time)
    irq: float = 0.0  # share of all CPUs in interrupts (mostly this run's loopback TCP)
    attempts: int = 1


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


async def transfer(side: Side, direction: str, nbytes: int, timeout: float) -> Run:
    """One bulk stream through the tunnel; wall time of the whole ssh command."""
    cpu0 = (side.bastion_cpu(), side.agent_cpu())
    r, w = os.pipe()
    procs: list[asyncio.subprocess.Process] = []
    t0 = time.perf_counter()
    try:
        if direction == "upload":
            # head -c N /dev/zero | ssh HOST 'wc -c'   (wc -c: cat > /dev/null that counts)
            feeder = await launch(
                "head", "-c", str(nbytes), "/dev/zero", stdin=subprocess.DEVNULL, stdout=w
            )
            procs.append(feeder)
            ssh = await ssh_cmd(
                side, side.host, "wc -c", stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            procs.append(ssh)
            os.close(r)
            os.close(w)
            r = w = -1
            work: Awaitable[Any] = asyncio.gather(ssh.communicate(), feeder.wait())
        else:
            # ssh HOST 'head -c N /dev/zero' | wc -c
            ssh = await ssh_cmd(
                side,
                side.host,
                f"head -c {nbytes} /dev/zero",
                stdin=subprocess.DEVNULL,
                stdout=w,
                stderr=subprocess.PIPE,
            )
            procs.append(ssh)
            counter = await launch("wc", "-c", stdin=r, stdout=subprocess.PIPE)
            procs.append(counter)
            os.close(r)
            os.close(w)
            r = w = -1
            assert ssh.stderr is not None

            async def both() -> tuple[tuple[bytes, bytes], None]:
                assert ssh.stderr is not None
                (out, _), err, _ = await asyncio.gather(
                    counter.communicate(), ssh.stderr.read(), ssh.wait()
                )
                return (out, err), None

            work = both()
        try:
            (out, err), _ = await asyncio.wait_for(work, timeout)
        except TimeoutError:
            raise RuntimeError(f"{side.kind} {direction} took longer than {timeout}s") from None
        elapsed = time.perf_counter() - t0
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                await p.wait()
    words = out.split()
    got = int(words[0]) if words and words[0].isdigit() else -1
    if ssh.returncode != 0 or got != nbytes:
        raise RuntimeError(
            f"{side.kind} {direction}: ssh exit {ssh.returncode}, {got} of {nbytes} bytes: "
            f"{err.decode(errors='replace')[-2000:]}"
        )
    await asyncio.sleep(0.3)  # let the bastion's per-connection processes exit and be reaped
    return Run(elapsed, side.bastion_cpu() - cpu0[0], side.agent_cpu() - cpu0[1])


async def setup_run(side: Side | None, direct_cfg: Path) -> Run:
    """One timed ``ssh HOST true`` (side None: straight to the home sshd, no bastion), and
    the CPU the bastion spent on it."""
    if side is None:
        return Run(await ssh_true(direct_cfg, "directhome", "direct"))
    cpu0 = side.bastion_cpu()
    elapsed = await setup_once(side)
    await asyncio.sleep(0.2)  # let the bastion's per-connection processes exit and be reaped
    return Run(elapsed, bastion_cpu=side.bastion_cpu() - cpu0)


async def setup_once(side: Side, timeout: float = 30) -> float:
    assert side.client_cfg is not None
    return await ssh_true(side.client_cfg, side.host, side.kind, timeout)


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


async def ssh_true(cfg: Path, host: str, label: str, timeout: float = 30) -> float:
    assert SSH is not None
    run = await run_client(SSH, "-F", str(cfg), host, "true", timeout=timeout)
    if run.returncode is None:
        raise RuntimeError(f"{label}: ssh true did not exit within {timeout}s: {run.stderr}")
    if run.returncode != 0:
        raise RuntimeError(f"{label}: ssh true failed: {run.stderr}")
    return run.seconds


def write_direct_config(env: Env, cipher: str) -> Path:
    """The same client config, straight to the home sshd: the part of ``ssh -J`` that does
    not depend on the bastion."""
    d = env.work / "direct"
    d.mkdir(parents=True, exist_ok=True)
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{env.home_port} {pub_of(env.keys.home_host)}\n")
    cfg = d / "ssh_config"
    cfg.write_text(
        f"Host directhome\n  HostName 127.0.0.1\n  Port {env.home_port}\n  User {USER}\n\n"
        + HOST_STAR.format(
            known=known, identity=env.keys.client.path, extra=algo_opts(cipher, env.kex)
        )
    )
    return cfg


async def negotiated_ciphers(side: Side) -> list[str]:
    """Ciphers the client's two hops negotiated (from ``ssh -v``; -J passes -v on)."""
    proc = await ssh_cmd(
        side,
        "-v",
        side.host,
        "true",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    found = []
    for line in err.decode(errors="replace").splitlines():
        if "kex: server->client cipher:" in line or "kex: client->server cipher:" in line:
            found.append(line.split("cipher:")[1].split()[0])
    return found


def agent_hop_cipher(side: Side) -> str:
    """The cipher of the agent's own connection to the bastion, where it can be seen."""
    if side.kind == "openssh" and side.agent is not None:
        logfile = side.dir(short(side.cipher)) / "agent.log"
        for line in logfile.read_text(errors="replace").splitlines():
            if "kex: server->client cipher:" in line:
                return line.split("cipher:")[1].split()[0]
        return "?"
    return f"{side.cipher} (policy narrowed for the agent process)"


# Idle agent connections (memory) ------------------------------------------------------------
async def open_idle(
    side: Side, count: int, concurrency: int, timeout: float
) -> tuple[list[asyncssh.SSHClientConnection], float]:
    """``count`` agent connections, each publishing one forward, held open and idle."""
    keys = side.env.keys
    client_key = asyncssh.read_private_key(str(keys.agent.path))
    host_key = asyncssh.import_public_key(bastion_pub(keys))
    user = "sshtun" if side.kind == "sshtun" else USER
    sem = asyncio.Semaphore(concurrency)
    conns: list[asyncssh.SSHClientConnection] = []

    async def one(i: int) -> None:
        async with sem:
            conn = await asyncssh.connect(
                "127.0.0.1",
                side.port,
                username=user,
                client_keys=[client_key],
                known_hosts=([host_key], [], []),
                config=None,
                agent_path=None,
                password=None,
                kbdint_auth=False,
                gss_auth=False,
                host_based_auth=False,
                preferred_auth="publickey",
                encryption_algs=["aes128-gcm@openssh.com"],
                kex_algs=["curve25519-sha256"],
            )
            conns.append(conn)
            if side.kind == "sshtun":
                await conn.forward_remote_port(f"idle-{i}", 22, "127.0.0.1", 9)
                return
            for _attempt in range(5):  # a port taken meanwhile: pick another
                try:
                    await conn.forward_remote_port("127.0.0.1", free_port(), "127.0.0.1", 9)
                    return
                except asyncssh.ChannelListenError:
                    continue
            raise RuntimeError("could not find a free port for an idle forward")

    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), timeout)
    except BaseException:
        await close_idle(conns)
        raise
    return conns, time.perf_counter() - t0


async def close_idle(conns: list[asyncssh.SSHClientConnection]) -> None:
    for conn in conns:
        conn.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True), 20
        )


async def sample_mem(side: Side, n: int = 3, gap: float = 0.3) -> Mem:
    samples = []
    for _ in range(n):
        samples.append(side.bastion_mem())
        await asyncio.sleep(gap)
    samples.sort(key=lambda m: m.rss_kib)
    return samples[len(samples) // 2]


async def memory_round(env: Env, kind: str, count: int, concurrency: int) -> dict[str, Any]:
    side = await (start_sshtun_bastion(env) if kind == "sshtun" else start_ref_bastion(env))
    try:
        await start_agent(side, CIPHERS[0])  # the homebox agent: part of the idle baseline
        await setup_once(side)  # warm the routing path once
        await asyncio.sleep(1.0)
        base = await sample_mem(side)
        conns, took = await open_idle(side, count, concurrency, timeout=180)
        try:
            await asyncio.sleep(2.0)
            loaded = await sample_mem(side)
            await setup_once(side)  # the bastion still routes with all of them connected
        finally:
            await close_idle(conns)
        return {
            "idle_rss_kib": base.rss_kib,
            "loaded_rss_kib": loaded.rss_kib,
            "idle_pss_kib": base.pss_kib,
            "loaded_pss_kib": loaded.pss_kib,
            "idle_processes": base.processes,
            "loaded_processes": loaded.processes,
            "per_conn_rss_kib": (loaded.rss_kib - base.rss_kib) / count,
            "per_conn_pss_kib": (loaded.pss_kib - base.pss_kib) / count,
            "connect_seconds": took,
        }
    finally:
        await stop_agent(side)
        await env.procs.stop(side.bastion)


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


# Orchestration ------------------------------------------------------------------------------
def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pow2_mib(x_mib: float, lo: int, hi: int) -> int:
    x = max(lo, min(hi, x_mib))
    return int(min(hi, max(lo, 2 ** round(math.log2(x)))))


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sshtun-bench-"))
    procs = Procs(work)
    keys = Keys.create(work / "keys")
    res: dict[str, Any] = {"config": {}, "throughput": {}, "setup": {}, "memory": {}}
    try:
        async with home_sshd(keys, work / "home") as home:
            LAUNCHED.add(home.proc.pid)
            env = Env(work, keys, home.port, procs, args.kex, args.max_foreign, args.retries)
            sides = {
                "sshtun": await start_sshtun_bastion(env),
                "openssh": await start_ref_bastion(env),
            }
            log(
                f"home sshd :{home.port}, sshtun bastion :{sides['sshtun'].port} "
                f"(pid {sides['sshtun'].bastion.pid}), OpenSSH bastion :{sides['openssh'].port} "
                f"(pid {sides['openssh'].bastion.pid}); work dir {work}"
            )
            for ci, cipher in enumerate(args.ciphers):
                for side in sides.values():
                    await start_agent(side, cipher)
                check = {}
                for name, side in sides.items():
                    client_hops = await negotiated_ciphers(side)
                    check[name] = {"client_hops": client_hops, "agent_hop": agent_hop_cipher(side)}
                    if not client_hops or any(c != cipher for c in client_hops):
                        raise RuntimeError(f"{name}: negotiated {client_hops}, wanted {cipher}")
                res["config"].setdefault("negotiated", {})[short(cipher)] = check
                log(f"{short(cipher)}: negotiated {check}")

                if ci == 0 and args.setup_runs:
                    res["setup"] = await setup_phase(env, sides, args)
                if ci == 0 and args.idle and args.mem_rounds:
                    res["memory"] = await memory_phase(env, args)

                res["throughput"][short(cipher)] = await throughput_phase(sides, cipher, args)

                if ci == 0 and args.profile:
                    n = res["throughput"][short(cipher)]["bytes"]
                    log(f"py-spy on the sshtun bastion and agent ({n // MiB} MiB each way)")
                    res["profile"] = await profile(sides["sshtun"], n, work, args.native)
                for side in sides.values():
                    await stop_agent(side)
            for side in sides.values():
                await procs.stop(side.bastion)
            res["config"]["disturbance"] = {
                "max_foreign": env.max_foreign,
                "measurements": env.runs,
                "disturbed": env.disturbed,
                "kept_disturbed": env.kept_disturbed,
            }
            for pid in descendants(home.proc.pid):  # the home sshd's leftover sessions
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    finally:
        await procs.stop_all()
        if args.keep:
            log(f"kept work dir {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return res


async def setup_phase(env: Env, sides: dict[str, Side], args: argparse.Namespace) -> dict[str, Any]:
    log(f"set-up time: {args.setup_runs} runs each, interleaved (+2 warm-up), and direct")
    direct_cfg = write_direct_config(env, args.ciphers[0])
    targets: dict[str, Side | None] = {**sides, "direct": None}
    runs: dict[str, list[Run]] = {k: [] for k in targets}
    for i in range(args.setup_runs + 2):
        order = list(targets) if i % 2 == 0 else list(reversed(targets))
        for name in order:
            measure = partial(setup_run, targets[name], direct_cfg)
            if i < 2:
                await measure()
                continue
            runs[name].append(await guarded(env, f"set-up {name}", measure))
    return {
        k: {
            "median_ms": 1000 * med([r.seconds for r in v]),
            "runs_ms": [1000 * r.seconds for r in v],
            "bastion_cpu_ms": 1000 * med([r.bastion_cpu for r in v]),
            "foreign_cpu_share": [round(r.foreign, 3) for r in v],
        }
        for k, v in runs.items()
    }


async def memory_phase(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"count": args.idle, "rounds": {k: [] for k in SETUPS}}
    for r in range(args.mem_rounds):
        order = SETUPS if r % 2 == 0 else tuple(reversed(SETUPS))
        for kind in order:
            log(f"memory round {r + 1}/{args.mem_rounds}: {kind}, {args.idle} idle agents")
            rr = await memory_round(env, kind, args.idle, args.concurrency)
            log(
                f"  {kind}: idle {rr['idle_rss_kib']} KiB -> {rr['loaded_rss_kib']} KiB RSS; "
                f"{rr['per_conn_rss_kib']:.1f} KiB/conn (PSS {rr['per_conn_pss_kib']:.1f}); "
                f"connected in {rr['connect_seconds']:.1f}s"
            )
            out["rounds"][kind].append(rr)
    for kind in SETUPS:
        rounds = out["rounds"][kind]
        out[kind] = {
            key: med([x[key] for x in rounds])
            for key in (
                "idle_rss_kib",
                "loaded_rss_kib",
                "per_conn_rss_kib",
                "per_conn_pss_kib",
                "idle_pss_kib",
                "loaded_pss_kib",
                "connect_seconds",
            )
        }
    return out


async def throughput_phase(
    sides: dict[str, Side], cipher: str, args: argparse.Namespace
) -> dict[str, Any]:
    c = short(cipher)
    # Calibrate: one probe each way per side (also a warm-up), then pick N so that the faster
    # setup takes about --target seconds; the same N for both setups and both directions.
    probe = args.probe_mib * MiB
    rates = []
    for name, side in sides.items():
        for direction in DIRECTIONS:
            run = await transfer(side, direction, probe, timeout=120)
            rates.append(args.probe_mib / run.seconds)
            log(f"{c} probe {name} {direction}: {args.probe_mib / run.seconds:.0f} MiB/s")
    n_mib = args.size_mib or pow2_mib(args.target * max(rates), args.min_mib, args.max_mib)
    nbytes = n_mib * MiB
    log(f"{c}: {args.rounds} rounds x {len(DIRECTIONS)} directions x {n_mib} MiB, interleaved")
    runs: dict[str, dict[str, list[Run]]] = {k: {d: [] for d in DIRECTIONS} for k in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        directions = DIRECTIONS if r % 2 == 0 else tuple(reversed(DIRECTIONS))
        for direction in directions:
            for name in order:
                side = sides[name]
                run = await guarded(
                    side.env,
                    f"{c} {name} {direction}",
                    partial(transfer, side, direction, nbytes, args.timeout),
                )
                runs[name][direction].append(run)
                log(
                    f"{c} round {r + 1} {name:7s} {direction:8s} {n_mib / run.seconds:7.1f} MiB/s "
                    f"(bastion cpu {run.bastion_cpu:.2f}s, agent cpu {run.agent_cpu:.2f}s, "
                    f"other processes {run.foreign:.0%}, steal {run.steal:.0%})"
                )
    out: dict[str, Any] = {"bytes": nbytes, "mib": n_mib}
    for name in sides:
        out[name] = {}
        for direction in DIRECTIONS:
            rs = runs[name][direction]
            mbps = [n_mib / x.seconds for x in rs]
            out[name][direction] = {
                "median_mib_s": med(mbps),
                "min_mib_s": min(mbps),
                "max_mib_s": max(mbps),
                "runs_mib_s": mbps,
                "bastion_cpu_s_per_gib": med([x.bastion_cpu / (nbytes / GiB) for x in rs]),
                "agent_cpu_s_per_gib": med([x.agent_cpu / (nbytes / GiB) for x in rs]),
                "foreign_cpu_share": [round(x.foreign, 3) for x in rs],
                "steal_share": [round(x.steal, 3) for x in rs],
                "irq_share": [round(x.irq, 3) for x in rs],
                "attempts": [x.attempts for x in rs],
            }
    return out


# Report ---------------------------------------------------------------------------------------
def fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "FAIL")


def report(res: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    rows: list[tuple[str, str, str, str, str, str]] = []
    aims: dict[str, Any] = {}

    def row(
        metric: str,
        a: float,
        b: float,
        aim: str = "",
        ok: bool | None = None,
        digits: int = 1,
        ratio: bool = True,
    ) -> None:
        r = a / b if ratio and b else float("nan")
        rows.append(
            (metric, fmt(a, digits), fmt(b, digits), fmt(r, 2) if ratio else "", aim, verdict(ok))
        )

    for c, t in res["throughput"].items():
        for d in DIRECTIONS:
            a, b = t["sshtun"][d], t["openssh"][d]
            ratio = a["median_mib_s"] / b["median_mib_s"]
            is_aim = c == "aes128-gcm"
            ok = ratio >= AIM_THROUGHPUT_RATIO if is_aim else None
            if is_aim:
                aims[f"throughput_{d}_aes128-gcm"] = {
                    "ratio": ratio,
                    "aim": f">= {AIM_THROUGHPUT_RATIO}",
                    "pass": ok,
                }
            row(
                f"{d} {c}, {t['mib']} MiB (MiB/s)",
                a["median_mib_s"],
                b["median_mib_s"],
                f">= {AIM_THROUGHPUT_RATIO}x" if is_aim else "",
                ok,
            )
            rows.append(
                (
                    "  min-max of runs (MiB/s)",
                    f"{a['min_mib_s']:.0f}-{a['max_mib_s']:.0f}",
                    f"{b['min_mib_s']:.0f}-{b['max_mib_s']:.0f}",
                    "",
                    "",
                    "",
                )
            )
    if res["setup"]:
        a, b = res["setup"]["sshtun"]["median_ms"], res["setup"]["openssh"]["median_ms"]
        ok = a / b <= AIM_SETUP_RATIO
        aims["setup_time"] = {"ratio": a / b, "aim": f"<= {AIM_SETUP_RATIO}", "pass": ok}
        row("set-up ssh -J homebox true (ms)", a, b, f"<= {AIM_SETUP_RATIO}x", ok, digits=0)
        direct = res["setup"]["direct"]["median_ms"]
        rows.append(
            ("  same ssh straight to home sshd (ms)", f"{direct:.0f}", f"{direct:.0f}", "", "", "")
        )
        row("  the jump's share: -J minus straight (ms)", a - direct, b - direct, digits=0)
        row(
            "  bastion CPU per set-up (ms)",
            res["setup"]["sshtun"]["bastion_cpu_ms"],
            res["setup"]["openssh"]["bastion_cpu_ms"],
            digits=0,
        )
    if res["memory"]:
        m = res["memory"]
        a, b = m["sshtun"], m["openssh"]
        n = m["count"]
        row("bastion RSS, idle (MiB)", a["idle_rss_kib"] / 1024, b["idle_rss_kib"] / 1024)
        row(
            f"bastion RSS, {n} idle agents (MiB)",
            a["loaded_rss_kib"] / 1024,
            b["loaded_rss_kib"] / 1024,
        )
        ok = a["per_conn_rss_kib"] <= AIM_IDLE_KIB
        aims["idle_memory_per_connection"] = {
            "kib": a["per_conn_rss_kib"],
            "aim": f"<= {AIM_IDLE_KIB} KiB",
            "pass": ok,
        }
        row(
            "per idle agent conn, RSS (KiB)",
            a["per_conn_rss_kib"],
            b["per_conn_rss_kib"],
            f"<= {AIM_IDLE_KIB:.0f} KiB",
            ok,
        )
        row("per idle agent conn, PSS (KiB)", a["per_conn_pss_kib"], b["per_conn_pss_kib"])
    for c, t in res["throughput"].items():
        for d in DIRECTIONS:
            a, b = t["sshtun"][d], t["openssh"][d]
            row(
                f"bastion CPU/GiB, {d} {c} (s)",
                a["bastion_cpu_s_per_gib"],
                b["bastion_cpu_s_per_gib"],
                digits=2,
            )
            row(
                f"agent CPU/GiB, {d} {c} (s)",
                a["agent_cpu_s_per_gib"],
                b["agent_cpu_s_per_gib"],
                digits=2,
            )

    head = ("metric", "sshtun", "OpenSSH", "ratio", "aim", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [head, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines), aims


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


def environment() -> dict[str, Any]:
    def cmd(*argv: str) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10)
            return (p.stdout + p.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import cryptography

    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssh": cmd(SSH or "ssh", "-V"),
        "asyncssh": asyncssh.__version__,
        "cryptography": cryptography.__version__,
        "sshtunnel_mgr": sshtunnel_mgr.__version__,
        "code_under_test": SRC_LABEL,
        "sshtunnel_mgr_imported_from": str(Path(sshtunnel_mgr.__file__).parent),
        "git_head": cmd("git", "rev-parse", "--short", "HEAD"),
        "uncommitted_in_package": (
            cmd("git", "status", "--porcelain", "--", "sshtunnel_mgr").splitlines()
            if SRC == ROOT
            else []
        ),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the sshtun bastion against OpenSSH's sshd as the bastion "
        "(ssh -J path, loopback only)."
    )
    p.add_argument("--quick", action="store_true", help="fewer rounds, smaller transfers")
    p.add_argument("--json", type=Path, help="write all results (and raw runs) to this file")
    p.add_argument("--rounds", type=int, help="throughput rounds per cipher (default 5, quick 2)")
    p.add_argument("--setup-runs", type=int, help="ssh -J true runs per setup (10, quick 4)")
    p.add_argument("--idle", type=int, help="idle agent connections (default 200)")
    p.add_argument("--mem-rounds", type=int, help="memory rounds, fresh bastions (3, quick 1)")
    p.add_argument("--concurrency", type=int, default=16, help="parallel connects (idle phase)")
    p.add_argument("--size-mib", type=int, help="fixed transfer size (default: calibrated)")
    p.add_argument(
        "--target",
        type=float,
        help="seconds per transfer for the faster setup when calibrating (default 2, quick 0.6)",
    )
    p.add_argument("--min-mib", type=int, help="smallest calibrated size (64, quick 16)")
    p.add_argument("--max-mib", type=int, help="largest calibrated size (512, quick 128)")
    p.add_argument("--probe-mib", type=int, help="calibration probe size (64, quick 16)")
    p.add_argument("--timeout", type=float, default=180, help="per transfer, seconds")
    p.add_argument(
        "--cipher",
        dest="ciphers",
        action="append",
        choices=CIPHERS,
        help="cipher(s) to measure (default: both)",
    )
    p.add_argument(
        "--kex",
        default="curve25519-sha256",
        help="KexAlgorithms for every OpenSSH hop (same for both setups); "
        "'default' leaves OpenSSH's default list",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the sshtun bastion and agent during one extra transfer",
    )
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.05,
        help="re-measure a run if processes not started by the benchmark used more than this "
        "share of all CPUs meanwhile (default 0.05)",
    )
    p.add_argument("--retries", type=int, default=3, help="re-measurements per disturbed run")
    p.add_argument(
        "--ref",
        metavar="REV",
        help="benchmark sshtunnel_mgr as committed at this git revision (exported to a temp "
        "dir) instead of the working tree",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    a = p.parse_args(argv)
    q = a.quick
    defaults = dict(
        rounds=2 if q else 5,
        setup_runs=4 if q else 10,
        idle=200,
        mem_rounds=1 if q else 3,
        target=0.6 if q else 2.0,
        min_mib=16 if q else 64,
        max_mib=128 if q else 512,
        probe_mib=16 if q else 64,
    )
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.ciphers = a.ciphers or list(CIPHERS)
    if a.ciphers[0] != CIPHERS[0] and CIPHERS[0] in a.ciphers:
        a.ciphers.remove(CIPHERS[0])
        a.ciphers.insert(0, CIPHERS[0])
    if a.kex == "default":
        a.kex = None
    bounds = dict(
        rounds=(1, 50),
        setup_runs=(0, 200),
        idle=(0, 2000),
        mem_rounds=(0, 10),
        size_mib=(1, 4096),
        max_mib=(1, 4096),
        concurrency=(1, 64),
    )
    for k, (lo, hi) in bounds.items():
        v = getattr(a, k)
        if v is not None and not lo <= v <= hi:
            p.error(f"--{k.replace('_', '-')} must be {lo}..{hi}")
    return a


T = TypeVar("T")


async def cancellable(work: Awaitable[T]) -> T:
    """SIGINT/SIGTERM cancel the run, so that its clean-up stops every child by PID (also
    when started in the background, where SIGINT is otherwise ignored)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SSH or not SSHD:
        print(
            "bench_tunnel: needs OpenSSH ssh and sshd (apt-get install openssh-client "
            "openssh-server)",
            file=sys.stderr,
        )
        return 2
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    if not become_subreaper():
        print("bench_tunnel: cannot become a subreaper; CPU of other processes is overstated")
    env = environment()
    started = time.time()
    try:
        res = asyncio.run(cancellable(run_bench(args)))
    except asyncio.CancelledError:
        print(
            "bench_tunnel: interrupted; every process it started has been stopped", file=sys.stderr
        )
        return 130
    res["environment"] = env
    res["config"].update(
        quick=args.quick,
        rounds=args.rounds,
        setup_runs=args.setup_runs,
        idle=args.idle,
        mem_rounds=args.mem_rounds,
        ciphers=args.ciphers,
        kex=args.kex or "OpenSSH default",
        seconds=round(time.time() - started, 1),
    )
    table, aims = report(res)
    res["aims"] = aims
    print()
    print(
        f"sshtun bastion vs OpenSSH sshd as bastion, ssh -J path, 127.0.0.1 "
        f"({env['nproc']} CPUs: {env['cpu']}; {env['openssh'].split(',')[0]}, "
        f"asyncssh {env['asyncssh']}; kex {res['config']['kex']})"
    )
    print(f"code under test: {env['code_under_test']} (HEAD {env['git_head']})")
    print(
        f"medians of interleaved runs: {args.rounds} transfer rounds, {args.setup_runs} set-ups, "
        f"{args.mem_rounds} memory round(s) of {args.idle} idle agent connections"
    )
    dist = res["config"].get("disturbance", {})
    if dist:
        print(
            f"{dist['disturbed']} of {dist['measurements']} timed runs were disturbed by other "
            f"processes (> {dist['max_foreign']:.0%} of the CPUs) and measured again; "
            f"{dist['kept_disturbed']} kept disturbed after retries"
        )
    print()
    print(table)
    if "profile" in res:
        print()
        print(profile_report(res["profile"]))
    print()
    print(f"took {res['config']['seconds']:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
