"""Real peers for tests and benchmarks: a throwaway OpenSSH sshd as the home box, the real
``ssh`` client with a strict config, keys on disk, and the sshtun bastion/agent in-process.

Nothing here disables host-key checking: every client pins the keys it expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.core.config import AgentConfig, BastionConfig, BastionEndpoint, TunnelConfig
from sshtunnel_mgr.keys.store import KeyInfo, generate_key
from tests.agentrun import AgentCrashed as AgentCrashed  # re-exported
from tests.agentrun import RunningAgent as RunningAgent
from tests.agentrun import running_agent as running_agent

SSH = shutil.which("ssh")
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
REQUIRE_OPENSSH = os.environ.get("SSHTUN_REQUIRE_OPENSSH") == "1"
DBCLIENT = shutil.which("dbclient")  # Dropbear's client (Debian: dropbear-bin)
DROPBEARCONVERT = shutil.which("dropbearconvert")
USER = getpass.getuser()


def require_openssh(*, server: bool = False) -> None:
    """Skip when OpenSSH is missing, except under SSHTUN_REQUIRE_OPENSSH=1 (CI): then fail."""
    missing = [n for n, p in (("ssh", SSH), ("sshd", SSHD if server else "x")) if not p]
    if missing:
        msg = f"OpenSSH {'/'.join(missing)} not installed"
        if REQUIRE_OPENSSH:
            pytest.fail(msg + " but SSHTUN_REQUIRE_OPENSSH=1")
        pytest.skip(msg)


def require_dropbear() -> None:
    """Skip when Dropbear's client is missing, except under SSHTUN_REQUIRE_OPENSSH=1 (CI
    installs dropbear-bin beside OpenSSH): then fail."""
    tools = (("dbclient", DBCLIENT), ("dropbearconvert", DROPBEARCONVERT))
    missing = [n for n, p in tools if not p]
    if missing:
        msg = f"Dropbear {'/'.join(missing)} not installed (dropbear-bin)"
        if REQUIRE_OPENSSH:
            pytest.fail(msg + " but SSHTUN_REQUIRE_OPENSSH=1")
        pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pub_of(info: KeyInfo) -> str:
    """ "type base64" without the comment."""
    return " ".join(info.public_line.split()[:2])


@dataclass
class Keys:
    """Every key a scenario needs, written to disk like a real install."""

    dir: Path
    agent: KeyInfo
    client: KeyInfo
    home_host: KeyInfo
    bastion_host: KeyInfo

    @property
    def bastion_host_path(self) -> Path:
        return self.bastion_host.path

    @classmethod
    def create(cls, directory: Path) -> Keys:
        # 0700 like a real key directory; it also holds the admin sockets, whose directory
        # must be the owner's alone
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(
            dir=directory,
            agent=generate_key(directory / "agent_key", comment="agent@home"),
            client=generate_key(directory / "client_key", comment="alice@laptop"),
            home_host=generate_key(directory / "home_host_key", comment="home-host"),
            bastion_host=generate_key(directory / "bastion_host_key", comment="bastion-host"),
        )

    def extra(self, name: str) -> KeyInfo:
        return generate_key(self.dir / name, comment=name)


def access_text(
    keys: Keys, listen: str = "homebox:22", open_: str = "homebox:22", extra: Sequence[str] = ()
) -> str:
    lines = [
        f'permitlisten="{listen}" {keys.agent.public_line}',
        f'permitopen="{open_}" {keys.client.public_line}',
        *extra,
    ]
    return "\n".join(lines) + "\n"


# The home box: a real OpenSSH sshd -------------------------------------------------------
@dataclass
class HomeSshd:
    port: int
    proc: asyncio.subprocess.Process
    config: Path
    log: list[str] = field(default_factory=list)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@contextlib.asynccontextmanager
async def home_sshd(
    keys: Keys, workdir: Path, authorized: Sequence[str] = (), port: int | None = None
) -> AsyncIterator[HomeSshd]:
    require_openssh(server=True)
    assert SSHD is not None
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    auth = workdir / "authorized_keys"
    auth.write_text("\n".join([keys.client.public_line, *authorized]) + "\n")
    cfg = workdir / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys.home_host.path}\n"
        f"PidFile {workdir / 'sshd.pid'}\nAuthorizedKeysFile {auth}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "AuthenticationMethods publickey\nUsePAM no\nStrictModes no\nUseDNS no\n"
        "PermitRootLogin prohibit-password\nLogLevel VERBOSE\n"
        f"AllowUsers {USER}\nMaxStartups 100:30:200\n"
    )
    check = subprocess.run([SSHD, "-t", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = await asyncio.create_subprocess_exec(
        SSHD,
        "-D",
        "-e",
        "-f",
        str(cfg),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    home = HomeSshd(port, proc, cfg)
    assert proc.stderr is not None
    # Wait for "Server listening on 127.0.0.1 port N." and keep draining stderr after.
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
        if not line:
            raise RuntimeError("sshd exited: " + "".join(home.log))
        home.log.append(line)
        if "Server listening" in line:
            break

    async def drain() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            home.log.append(raw.decode(errors="replace"))

    drainer = asyncio.create_task(drain())
    try:
        yield home
    finally:
        await home.stop()
        drainer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drainer


# The sshtun bastion and agent, in-process ------------------------------------------------
def bastion_config(keys: Keys, access: Path, port: int = 0, **kw: object) -> BastionConfig:
    limits = kw.pop("limits", None)
    kw.setdefault("admin_socket", keys.dir / f"bastion-{port}.sock")
    kw.setdefault("shutdown_grace", 2.0)
    data: dict[str, object] = {
        "listen": [f"127.0.0.1:{port}"],
        "host_key": keys.bastion_host_path,
        "access_file": access,
        **kw,
    }
    if limits is not None:
        data["limits"] = limits
    return BastionConfig.model_validate(data)


@contextlib.asynccontextmanager
async def running_bastion(config: BastionConfig) -> AsyncIterator[Bastion]:
    bastion = Bastion(config)
    await bastion.start()
    try:
        yield bastion
    finally:
        await bastion.stop()


def bastion_pub(keys: Keys) -> str:
    return pub_of(keys.bastion_host)


def agent_config(
    keys: Keys,
    bastion_port: int,
    tunnels: Sequence[tuple[str, int, str]],
    key: Path | None = None,
    **kw: object,
) -> AgentConfig:
    kw.setdefault("admin_socket", keys.dir / f"agent-{bastion_port}.sock")
    return AgentConfig(
        key=key or keys.agent.path,
        bastions=[BastionEndpoint(address=f"127.0.0.1:{bastion_port}", host_key=bastion_pub(keys))],
        tunnels=[TunnelConfig(name=n, port=p, target=t) for n, p, t in tunnels],
        **kw,  # type: ignore[arg-type]
    )


# The real ssh client ----------------------------------------------------------------------
def write_ssh_config(
    workdir: Path,
    keys: Keys,
    bastion_port: int,
    *,
    identity: Path | None = None,
    name: str = "homebox",
    name_port: int = 22,
    extra_known: Sequence[str] = (),
    extra_opts: str = "",
    bastion_key: KeyInfo | None = None,
) -> Path:
    """`Host bastion` + `Host <name>` with ProxyJump, strict checking, pinned known_hosts."""
    workdir.mkdir(parents=True, exist_ok=True)
    known = workdir / "known_hosts"
    known.write_text(
        "\n".join(
            [
                f"[127.0.0.1]:{bastion_port} {pub_of(bastion_key or keys.bastion_host)}",
                f"{name} {pub_of(keys.home_host)}",
                *extra_known,
            ]
        )
        + "\n"
    )
    cfg = workdir / "ssh_config"
    cfg.write_text(
        f"Host bastion\n  HostName 127.0.0.1\n  Port {bastion_port}\n  User sshtun\n\n"
        f"Host {name}\n  HostName {name}\n  Port {name_port}\n  User {USER}\n"
        "  ProxyJump bastion\n\n"
        f"Host *\n  BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {known}\n"
        f"  GlobalKnownHostsFile /dev/null\n  IdentitiesOnly yes\n"
        f"  IdentityFile {identity or keys.client.path}\n  ConnectTimeout 10\n"
        f"  ServerAliveInterval 5\n  LogLevel ERROR\n{extra_opts}"
    )
    return cfg


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: str


async def run_ssh(cfg: Path, *args: str, stdin: bytes | None = None, timeout: float = 60) -> Result:
    require_openssh()
    assert SSH is not None
    proc = await asyncio.create_subprocess_exec(
        SSH,
        "-F",
        str(cfg),
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out, err.decode(errors="replace"))


@contextlib.asynccontextmanager
async def process(
    *argv: str, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process that is always stopped (by its PID) when the block ends."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await proc.wait()


SSHTUN = [sys.executable, "-m", "sshtunnel_mgr"]


def write_toml(path: Path, section: str, config: AgentConfig | BastionConfig) -> Path:
    """A config file for ``sshtun up``/``sshtun bastion`` run as a real process."""
    import tomli_w

    data = config.model_dump(mode="json", exclude_none=True)
    path.write_text(tomli_w.dumps({section: data}))
    return path


async def read_until(
    stream: asyncio.StreamReader | None, marker: str, timeout: float = 15
) -> list[str]:
    """Read a child's log lines until one contains ``marker``."""
    assert stream is not None
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(stream.readline(), timeout)
        if not raw:
            raise AssertionError(f"stream ended before {marker!r}: {''.join(lines)}")
        lines.append(raw.decode(errors="replace"))
        if marker in lines[-1]:
            return lines


async def wait_for(predicate: object, timeout: float = 15, interval: float = 0.05) -> None:
    """Test-side wait for a condition (product code never polls)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
