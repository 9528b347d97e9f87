"""The two bastions under comparison and the agent: the sshtun bastion and ``sshtun up``, or
OpenSSH's sshd and ``ssh -N -R``; their configs, start and stop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_tunnel.common import short
from bench_tunnel.procs import Mem, Procs, cpu_seconds, memory
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
    write_ssh_config,
    write_toml,
)

# How every benchmark client logs in with asyncssh: the key given, nothing else tried, no
# ~/.ssh/config or ssh-agent of the user running the benchmark.
LOGIN_OPTIONS: dict[str, Any] = dict(
    config=None,
    agent_path=None,
    password=None,
    kbdint_auth=False,
    gss_auth=False,
    host_based_auth=False,
    preferred_auth="publickey",
)


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
