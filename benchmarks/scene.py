"""The two bastions of the attack and soak benchmarks, on loopback, with stock limits.

  sshtun   ``sshtun bastion`` (own process, default [bastion.limits]) <- ``sshtun up``
           publishing ``homebox:22`` (the home sshd) and ``stream:9000`` (a service that
           streams zeros as fast as it can); clients ask for those names.
  openssh  OpenSSH ``sshd`` (OpenSSH's default MaxStartups 10:30:100, ``UseDNS no``) <-
           ``ssh -N -R 127.0.0.1:P1:home -R 127.0.0.1:P2:stream``; clients ask for
           127.0.0.1:P1 / 127.0.0.1:P2 (never a name: sshd would resolve it).

Every client picks its source address in 127.0.0.0/8 (``BindAddress`` for the real ``ssh``,
``local_addr`` for asyncssh), so that one attacker's addresses and the legitimate users'
are told apart as on the internet. Helpers from bench_tunnel (processes, /proc, the
reference sshd_config) and tests/harness.py (keys, configs) are reused, not copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from bench_tunnel import (
    HOST_STAR,
    LAUNCHED,
    LOGIN_OPTIONS,
    Env,
    Mem,
    Procs,
    launch,
    memory,
    ref_sshd_config,
    run_client,
)

from tests.harness import (
    SSH,
    SSHD,
    SSHTUN,
    USER,
    Keys,
    agent_config,
    bastion_config,
    bastion_pub,
    free_port,
    pub_of,
    write_toml,
)

HERE = Path(__file__).resolve().parent
PEERS = [sys.executable, str(HERE / "peers.py")]
STREAM_PORT_NAME = 9000  # the port in the published name "stream:9000"
CHECK_SOURCE = "127.0.0.99"  # readiness checks (log in, so they never count as failures)
KINDS = ("sshtun", "openssh")


@dataclass
class Scene:
    """What both sides share: keys, the home sshd, the streaming service, the processes."""

    work: Path
    keys: Keys
    home_port: int
    stream_port: int
    procs: Procs

    @property
    def env(self) -> Env:
        return Env(self.work, self.keys, self.home_port, self.procs, kex=None)


@dataclass
class Side:
    kind: str  # "sshtun" | "openssh"
    scene: Scene
    dir: Path
    port: int
    bastion: asyncio.subprocess.Process
    targets: dict[str, tuple[str, int]] = field(default_factory=dict)  # "home"/"stream"
    agents: list[asyncio.subprocess.Process] = field(default_factory=list)
    agent_argv: list[list[str]] = field(default_factory=list)
    bastion_cfg: Path | None = None
    agent_cfgs: list[Path] = field(default_factory=list)
    _client_cfgs: dict[tuple[str, float, tuple[str, ...]], Path] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return "alice" if self.kind == "sshtun" else USER

    def mem(self) -> Mem:
        """sshtun: its one process; OpenSSH: the listener and every per-connection child."""
        return memory(self.bastion.pid, self.kind == "openssh")

    def fds(self) -> int:
        return fd_count(self.bastion.pid)


# /proc ------------------------------------------------------------------------------------
def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, PermissionError):
        return -1


def established(local_port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is ``local_port`` (the home
    service's side of each connection an agent made to it)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == local_port:
                    count += 1
    return count


# Start-up ---------------------------------------------------------------------------------
async def start_scene(work: Path, procs: Procs, keys: Keys, home_port: int) -> Scene:
    stream_port = free_port()
    stream = await procs.spawn([*PEERS, "stream", "--port", str(stream_port)], work / "stream.log")
    await wait_banner(stream_port, prefix=b"\x00", proc=stream)
    return Scene(work, keys, home_port, stream_port, procs)


async def spawn_pipe(procs: Procs, argv: Sequence[str]) -> asyncio.subprocess.Process:
    """A child whose stdout the caller reads; stopped by its PID with the others."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=procs.cwd
    )
    procs.live.append(proc)
    LAUNCHED.add(proc.pid)
    return proc


async def wait_banner(
    port: int,
    prefix: bytes = b"SSH-",
    proc: asyncio.subprocess.Process | None = None,
    timeout: float = 30,
) -> None:
    """Wait until something listens on 127.0.0.1:port and sends ``prefix`` (one connection
    that reads the greeting, from CHECK_SOURCE)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"process {proc.pid} exited {proc.returncode} before :{port}")
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(CHECK_SOURCE, 0)
            )
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}") from None
            await asyncio.sleep(0.1)
            continue
        try:
            got = await asyncio.wait_for(reader.read(len(prefix)), timeout)
        finally:
            writer.close()
        if got != prefix:
            raise RuntimeError(f"127.0.0.1:{port} sent {got!r}, not {prefix!r}")
        return


def access_lines(keys: Keys, agent_names: str, client_names: str) -> str:
    return (
        f'permitlisten="{agent_names}" {keys.agent.public_line}\n'
        f'permitopen="{client_names}" {keys.client.public_line}\n'
    )


async def start_sshtun(scene: Scene, agents: int = 1, **bastion_kw: Any) -> Side:
    """An sshtun bastion with its default limits, and ``agents`` sshtun agents: the first
    publishes homebox:22 and stream:9000, agent i > 0 publishes soak-i:22 (the home sshd)."""
    port = free_port()
    d = scene.work / f"sshtun-{port}"
    d.mkdir(mode=0o700, parents=True)  # it holds the admin sockets: 0700, as sshtun wants
    access = d / "access"
    names = f"homebox:22,stream:{STREAM_PORT_NAME},soak-*:22,stockbox:22"
    access.write_text(access_lines(scene.keys, names, names))
    access.chmod(0o600)
    bastion_kw.setdefault("admin_socket", d / "bastion.sock")
    bastion_kw.setdefault("audit_log", d / "audit.jsonl")
    cfg = write_toml(
        d / "bastion.toml", "bastion", bastion_config(scene.keys, access, port, **bastion_kw)
    )
    proc = await scene.procs.spawn([*SSHTUN, "bastion", "--config", str(cfg)], d / "bastion.log")
    await wait_banner(port, proc=proc)
    side = Side("sshtun", scene, d, port, proc, bastion_cfg=cfg)
    side.targets = {"home": ("homebox", 22), "stream": ("stream", STREAM_PORT_NAME)}
    for i in range(agents):
        tunnels = [("homebox", 22, f"127.0.0.1:{scene.home_port}")]
        if i == 0:
            tunnels.append(("stream", STREAM_PORT_NAME, f"127.0.0.1:{scene.stream_port}"))
        else:
            tunnels = [(f"soak-{i}", 22, f"127.0.0.1:{scene.home_port}")]
            side.targets[f"soak-{i}"] = (f"soak-{i}", 22)
        acfg = write_toml(
            d / f"agent{i}.toml",
            "agent",
            agent_config(scene.keys, port, tunnels, admin_socket=d / f"agent{i}.sock"),
        )
        side.agent_cfgs.append(acfg)
        side.agent_argv.append([*SSHTUN, "up", "--config", str(acfg)])
        side.agents.append(await scene.procs.spawn(side.agent_argv[i], d / f"agent{i}.log"))
    for target in side.targets:
        await route_ready(side, target)
    return side


async def start_openssh(scene: Scene) -> Side:
    """OpenSSH's sshd as the bastion (default MaxStartups) and a stock ``ssh -R`` agent."""
    assert SSH is not None and SSHD is not None
    port = free_port()
    d = scene.work / f"openssh-{port}"
    d.mkdir(parents=True)
    cfg = ref_sshd_config(scene.env, port, d, max_startups=None)
    proc = await scene.procs.spawn([SSHD, "-D", "-e", "-f", str(cfg)], d / "sshd.log")
    await wait_banner(port, proc=proc)
    side = Side("openssh", scene, d, port, proc)
    home_fwd, stream_fwd = free_port(), free_port()
    side.targets = {"home": ("127.0.0.1", home_fwd), "stream": ("127.0.0.1", stream_fwd)}
    agent_cfg = d / "agent_ssh_config"
    agent_cfg.write_text(
        f"Host refbastion\n  HostName 127.0.0.1\n  Port {port}\n  User {USER}\n\n"
        + HOST_STAR.format(
            known=known_hosts(side),
            identity=scene.keys.agent.path,
            extra="  ExitOnForwardFailure yes\n",
        ).replace("ServerAliveInterval 5", "ServerAliveInterval 15")
    )
    side.agent_cfgs.append(agent_cfg)
    side.agent_argv.append(
        [
            SSH,
            "-F",
            str(agent_cfg),
            "-N",
            "-R",
            f"127.0.0.1:{home_fwd}:127.0.0.1:{scene.home_port}",
            "-R",
            f"127.0.0.1:{stream_fwd}:127.0.0.1:{scene.stream_port}",
            "refbastion",
        ]
    )
    side.agents.append(await scene.procs.spawn(side.agent_argv[0], d / "agent0.log"))
    for target in side.targets:
        await route_ready(side, target)
    return side


def known_hosts(side: Side) -> Path:
    """The pinned keys: the bastion's, and the home sshd's under every name it is reached by
    (rewritten whole, atomically, when a target is added)."""
    path = side.dir / "known_hosts"
    home = pub_of(side.scene.keys.home_host)
    lines = [f"[127.0.0.1]:{side.port} {bastion_pub(side.scene.keys)}"]
    for host, port in side.targets.values():
        lines.append(f"{host} {home}" if port == 22 else f"[{host}]:{port} {home}")
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


async def add_stock_agent(side: Side, name: str = "stockbox") -> None:
    """Stock OpenSSH as an agent on the sshtun bastion: ``ssh -N -R name:22:home``."""
    assert SSH is not None and side.kind == "sshtun"
    keys = side.scene.keys
    side.targets[name] = (name, 22)
    cfg = side.dir / "stock_agent.ssh_config"
    cfg.write_text(
        f"Host bastion\n  HostName 127.0.0.1\n  Port {side.port}\n  User sshtun\n\n"
        + HOST_STAR.format(
            known=known_hosts(side),
            identity=keys.agent.path,
            extra="  ExitOnForwardFailure yes\n",
        ).replace("ServerAliveInterval 5", "ServerAliveInterval 15")
    )
    side.agent_cfgs.append(cfg)
    side.agent_argv.append(
        [SSH, "-F", str(cfg), "-N", "-R", f"{name}:22:127.0.0.1:{side.scene.home_port}", "bastion"]
    )
    i = len(side.agents)
    side.agents.append(await side.scene.procs.spawn(side.agent_argv[i], side.dir / f"agent{i}.log"))
    await route_ready(side, name)


async def stop_side(side: Side) -> None:
    for agent in side.agents:
        await side.scene.procs.stop(agent)
    await side.scene.procs.stop(side.bastion)


async def restart_agent(side: Side, i: int, sig: int = signal.SIGKILL) -> None:
    """Kill agent ``i`` by its PID and start it again (same command, same config)."""
    old = side.agents[i]
    with contextlib.suppress(ProcessLookupError):
        os.kill(old.pid, sig)
    await asyncio.wait_for(old.wait(), 30)
    if old in side.scene.procs.live:
        side.scene.procs.live.remove(old)
    side.agents[i] = await side.scene.procs.spawn(side.agent_argv[i], side.dir / f"agent{i}.log")


# Clients ----------------------------------------------------------------------------------
def client_config(side: Side, source: str, connect_timeout: float = 30) -> Path:
    """A strict ssh config for ``ssh -J`` from ``source`` (the jump hop binds it)."""
    key = (source, connect_timeout, tuple(side.targets))
    if key in side._client_cfgs:
        return side._client_cfgs[key]
    keys = side.scene.keys
    jump = "bastion" if side.kind == "sshtun" else "refbastion"
    jump_user = "sshtun" if side.kind == "sshtun" else USER
    blocks = [
        f"Host {jump}\n  HostName 127.0.0.1\n  Port {side.port}\n  User {jump_user}\n"
        f"  BindAddress {source}\n  ConnectTimeout {connect_timeout:.0f}\n"
    ]
    for alias, (host, port) in side.targets.items():
        if port == 22 or (side.kind == "openssh" and alias == "home"):
            blocks.append(
                f"Host {alias}\n  HostName {host}\n  Port {port}\n  User {USER}\n"
                f"  ProxyJump {jump}\n  ConnectTimeout {connect_timeout:.0f}\n"
            )
    cfg = side.dir / f"client-{source}-{connect_timeout:.0f}.ssh_config"
    cfg.write_text(
        "\n".join(blocks)
        + "\n"
        + HOST_STAR.format(known=known_hosts(side), identity=keys.client.path, extra="")
    )
    side._client_cfgs[key] = cfg
    return cfg


@dataclass
class Login:
    ok: bool
    seconds: float
    error: str = ""  # the last line ssh wrote on stderr


async def ssh_true(side: Side, source: str, target: str = "home", timeout: float = 60) -> Login:
    """One real ``ssh -J … true`` from ``source`` (timed until that ``ssh`` exits)."""
    assert SSH is not None
    cfg = client_config(side, source)
    run = await run_client(SSH, "-F", str(cfg), target, "true", timeout=timeout)
    if run.returncode is None:
        return Login(False, run.seconds, f"timed out after {timeout:.0f}s")
    lines = run.stderr.strip().splitlines()
    return Login(run.returncode == 0, run.seconds, lines[-1] if lines else "")


def asyncssh_client(side: Side, source: str) -> Any:
    keys = side.scene.keys
    return asyncssh.connect(
        "127.0.0.1",
        side.port,
        username=side.user,
        client_keys=[asyncssh.read_private_key(str(keys.client.path))],
        known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
        local_addr=(source, 0),
        **LOGIN_OPTIONS,
        kex_algs=["curve25519-sha256"],
        connect_timeout=30,
    )


async def route_ready(side: Side, target: str = "home", timeout: float = 60) -> None:
    """Wait until a channel to ``target`` through the bastion carries the service's first
    bytes (the home sshd's banner, or the stream's zeros)."""
    host, port = side.targets[target]
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for agent in side.agents:
            if agent.returncode is not None:
                raise RuntimeError(f"{side.kind} agent exited {agent.returncode}")
        try:
            async with asyncssh_client(side, CHECK_SOURCE) as conn:
                reader, writer = await conn.open_connection(host, port)
                first = await asyncio.wait_for(reader.read(4), 15)
                writer.close()
                if first:
                    return
                last = "no data"
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.3)
    raise RuntimeError(f"{side.kind}: {target} not reachable in {timeout:.0f}s ({last})")


async def aborted_opens(
    side: Side, count: int, source: str, spread: float = 0.005, target: str = "stream"
) -> int:
    """``count`` clients that log in, ask for a channel to ``target`` and leave (abort the
    TCP connection) ``spread * i / count`` seconds later: before or while the open
    completes. Returns how many sent their open."""
    host, port = side.targets[target]

    async def one(i: int) -> bool:
        try:
            conn = await asyncssh_client(side, source)
        except (OSError, asyncssh.Error, TimeoutError):
            return False
        opening = asyncio.ensure_future(conn.open_connection(host, port))
        await asyncio.sleep(0)  # the CHANNEL_OPEN is written (loopback: sent at once)
        await asyncio.sleep(spread * i / max(1, count))
        conn.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(opening, 10)
        return True

    return sum(await asyncio.gather(*(one(i) for i in range(count))))


def audit_refusals(side: Side) -> dict[str, int]:
    """What the sshtun bastion refused, by stage and reason, from its JSON-lines audit log
    (readiness checks left out), and how many sources it cooled down."""
    path = side.dir / "audit.jsonl"
    found: Counter[str] = Counter()
    if side.kind != "sshtun" or not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            found["unparsable audit line"] += 1
            continue
        if str(record.get("from", "")).startswith(CHECK_SOURCE + ":"):
            continue
        if record.get("event") == "refused":
            # "63 connections not logged in yet" and the like: one line for every count.
            reason = re.sub(r"\b\d+ (connections|channels)", r"N \1", str(record.get("reason")))
            found[f"{record.get('stage', '?')}: {reason}"] += 1
        elif record.get("event") == "penalty":
            found["source cooled down (penalty)"] += 1
    return dict(found.most_common())


async def sshtun_status(cfg: Path, timeout: float = 30) -> dict[str, Any] | None:
    """``sshtun status --json`` of a running agent or bastion, or None if it did not answer."""
    proc = await launch(
        *SSHTUN,
        "status",
        "--config",
        str(cfg),
        "--json",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        return None
    try:
        answer = json.loads(out)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


async def sshtun_reload(cfg: Path, timeout: float = 60) -> bool:
    proc = await launch(
        *SSHTUN,
        "reload",
        "--config",
        str(cfg),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return await asyncio.wait_for(proc.wait(), timeout) == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False
