"""More than one bastion behind one name (issue 12 item 3), with real peers.

Two real ``sshtun bastion`` processes listen on 127.0.0.2 and 127.0.0.3 (both loopback on
Linux) at the same port and share the host key and the access file. ``bastion.test``
resolves to both through a hosts file bind-mounted over /etc/hosts in a private mount
namespace (``unshare -m``) for the agent and the ssh client only: the real resolver and the
machine's /etc/hosts are never touched. A real ``sshtun up`` follows the name; a real
OpenSSH ``ssh`` reaches the home box (a real sshd) with ``ProxyJump`` over the name.

One bastion is killed (SIGKILL) while a session runs through the other: that session goes
on, and a new ``ssh`` over the name gets through at once (OpenSSH tries the next address).
Then the hosts file changes under the running agent: a dropped address loses its link, an
added one gets a link that serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from sshtunnel_mgr.agent import Agent
from sshtunnel_mgr.core.config import AgentConfig, BastionConfig, BastionEndpoint, TunnelConfig
from sshtunnel_mgr.keys.store import key_fingerprint
from tests.harness import (
    SSH,
    SSHTUN,
    USER,
    Keys,
    access_text,
    bastion_pub,
    home_sshd,
    process,
    pub_of,
    read_until,
    require_openssh,
    run_ssh,
    running_bastion,
    wait_for,
    write_toml,
)

pytestmark = pytest.mark.openssh

NAME = "bastion.test"
UNSHARE = shutil.which("unshare")
# Run a command with HOSTS ($0) bind-mounted over /etc/hosts, in a mount namespace of its own.
IN_HOSTS = 'mount --bind "$0" /etc/hosts && exec "$@"'


def _require_namespaces() -> None:
    if UNSHARE is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private /etc/hosts")


def with_hosts(hosts: Path, *argv: str) -> list[str]:
    assert UNSHARE is not None
    return [UNSHARE, "-m", "--propagation", "private", "sh", "-c", IN_HOSTS, str(hosts), *argv]


def shared_port(*hosts: str) -> int:
    """A port free on every one of ``hosts``."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
            others = []
            try:
                for host in hosts[1:]:
                    sock = socket.socket()
                    others.append(sock)
                    sock.bind((host, port))
            except OSError:
                continue
            finally:
                for sock in others:
                    sock.close()
            return port
    raise AssertionError("no port free on " + ", ".join(hosts))


def write_hosts(path: Path, *addresses: str) -> None:
    """Rewrite the hosts file in place (same inode: the bind mounts see the change)."""
    with path.open("w") as f:
        f.write("".join(f"{a} {NAME}\n" for a in addresses))


@contextlib.asynccontextmanager
async def real_bastion(
    keys: Keys, access: Path, address: str, port: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    config = BastionConfig(
        listen=[f"{address}:{port}"],
        host_key=keys.bastion_host_path,
        access_file=access,
        admin_socket=keys.dir / f"bastion-{address}.sock",
        shutdown_grace=1.0,
    )
    cfg = write_toml(keys.dir / f"bastion-{address}.toml", "bastion", config)
    async with process(*SSHTUN, "bastion", "--config", str(cfg)) as proc:
        await read_until(proc.stderr, "listening", timeout=30)
        assert proc.stderr is not None
        drain = asyncio.create_task(proc.stderr.read())
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


def client_config(workdir: Path, keys: Keys, port: int, key3: str | None = None) -> Path:
    """``homebox`` over the name (OpenSSH tries each address), ``homebox-via-N`` over one
    bastion's address; every hop pinned (``key3``: bastion 3's own host key)."""
    known = workdir / "known_hosts"
    bastion = bastion_pub(keys)
    known.write_text(
        f"[{NAME}]:{port} {bastion}\n[127.0.0.2]:{port} {bastion}\n"
        f"[127.0.0.3]:{port} {key3 or bastion}\nhomebox {pub_of(keys.home_host)}\n"
    )
    blocks = [f"Host bastion\n  HostName {NAME}\n  Port {port}\n  User sshtun\n"]
    blocks.append(f"Host homebox\n  HostName homebox\n  ProxyJump bastion\n  User {USER}\n")
    for n in (2, 3):
        blocks.append(f"Host bastion{n}\n  HostName 127.0.0.{n}\n  Port {port}\n  User sshtun\n")
        blocks.append(
            f"Host homebox-via-{n}\n  HostName homebox\n  ProxyJump bastion{n}\n  User {USER}\n"
        )
    blocks.append(
        f"Host *\n  BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {known}\n"
        f"  GlobalKnownHostsFile /dev/null\n  IdentitiesOnly yes\n"
        f"  IdentityFile {keys.client.path}\n  ConnectTimeout 10\n  LogLevel ERROR\n"
    )
    cfg = workdir / "ssh_config"
    cfg.write_text("\n".join(blocks))
    return cfg


async def ssh(hosts: Path, cfg: Path, *args: str) -> tuple[int, str, str]:
    assert SSH is not None
    proc = await asyncio.create_subprocess_exec(
        *with_hosts(hosts, SSH, "-F", str(cfg), *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode(errors="replace")


async def agent_status(config: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        *SSHTUN, "status", "--config", str(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def published(log: list[str], address: str) -> bool:
    return any("published" in line and f"/{address}" in line for line in log)


async def test_agent_follows_a_bastion_name_and_survives_losing_one(
    keys: Keys, tmp_path: Path
) -> None:
    require_openssh(server=True)
    _require_namespaces()
    port = shared_port("127.0.0.2", "127.0.0.3")
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    access.chmod(0o600)
    hosts = tmp_path / "hosts"
    write_hosts(hosts, "127.0.0.2", "127.0.0.3")
    (tmp_path / "client").mkdir()
    cfg = client_config(tmp_path / "client", keys, port)

    async with (
        home_sshd(keys, tmp_path / "home") as home,
        real_bastion(keys, access, "127.0.0.2", port) as b2,
        real_bastion(keys, access, "127.0.0.3", port),
    ):
        agent_cfg = AgentConfig(
            key=keys.agent.path,
            bastions=[BastionEndpoint(address=f"{NAME}:{port}", host_key=bastion_pub(keys))],
            tunnels=[TunnelConfig(name="homebox", port=22, target=f"127.0.0.1:{home.port}")],
            admin_socket=keys.dir / "agent.sock",
            resolve_interval=0.5,
            keepalive_interval=1.0,
            backoff={"base": 0.2, "cap": 1.0},  # type: ignore[arg-type]
        )
        agent_toml = write_toml(tmp_path / "agent.toml", "agent", agent_cfg)
        async with process(*with_hosts(hosts, *SSHTUN, "up", "--config", str(agent_toml))) as up:
            log: list[str] = []

            async def collect() -> None:
                assert up.stderr is not None
                async for raw in up.stderr:
                    log.append(raw.decode(errors="replace"))

            collector = asyncio.create_task(collect())
            session: asyncio.subprocess.Process | None = None
            try:
                # One link per address of the name, each publishing homebox.
                await wait_for(
                    lambda: published(log, "127.0.0.2") and published(log, "127.0.0.3"), 60
                )
                for n in (2, 3):
                    code, out, err = await ssh(hosts, cfg, f"homebox-via-{n}", "echo", f"via{n}")
                    assert (code, out.strip()) == (0, f"via{n}"), err

                # A session through bastion 3, then bastion 2 dies (SIGKILL, no goodbye).
                assert SSH is not None
                session = await asyncio.create_subprocess_exec(
                    *with_hosts(hosts, SSH, "-F", str(cfg), "homebox-via-3", "cat"),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                assert session.stdin is not None and session.stdout is not None
                session.stdin.write(b"before\n")
                await session.stdin.drain()
                assert await asyncio.wait_for(session.stdout.readline(), 30) == b"before\n"
                b2.send_signal(signal.SIGKILL)
                await b2.wait()
                session.stdin.write(b"after\n")
                await session.stdin.drain()
                assert await asyncio.wait_for(session.stdout.readline(), 30) == b"after\n"

                # A new ssh over the name: 127.0.0.2 refuses, OpenSSH tries 127.0.0.3.
                code, out, err = await ssh(hosts, cfg, "homebox", "echo", "survived")
                assert (code, out.strip()) == (0, "survived"), err

                session.stdin.close()
                assert await asyncio.wait_for(session.wait(), 30) == 0

                # The records change: 127.0.0.2 is dropped, the agent lets its link go.
                write_hosts(hosts, "127.0.0.3")
                await wait_for(lambda: any("dropped=127.0.0.2" in line for line in log), 30)
                # status (over the admin socket) lists the link of each address left.
                for _ in range(100):
                    text = await agent_status(agent_toml)
                    if "/127.0.0.2" not in text:
                        break
                    await asyncio.sleep(0.2)
                assert f"{NAME}:{port}/127.0.0.3" in text and "/127.0.0.2" not in text, text

                # A bastion comes back on 127.0.0.2 and the name lists it again: a new link.
                async with real_bastion(keys, access, "127.0.0.2", port):
                    before = sum("/127.0.0.2" in line and "published" in line for line in log)
                    write_hosts(hosts, "127.0.0.2", "127.0.0.3")
                    await wait_for(
                        lambda: (
                            sum("/127.0.0.2" in line and "published" in line for line in log)
                            > before
                        ),
                        60,
                    )
                    code, out, err = await ssh(hosts, cfg, "homebox-via-2", "echo", "back")
                    assert (code, out.strip()) == (0, "back"), err
            finally:
                if session is not None and session.returncode is None:
                    session.kill()
                    await session.wait()
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector


async def test_a_dropped_address_drains_its_link_without_cutting_a_session(
    keys: Keys, tmp_path: Path
) -> None:
    """In-process agent with an injected resolver: when an address leaves the answer, its
    link withdraws the name at once (that bastion routes no new session to it) but the
    session already routed through it goes on; the link is listed until that session has
    ended, then it is gone, and the other bastion serves throughout.

    The two bastions have different host keys, both pinned under the name in the agent's
    known_hosts file: each link checks its bastion's key under the name, and neither
    bastion's host-key announcement (which lists only its own key) removes the other's."""
    require_openssh(server=True)
    port = shared_port("127.0.0.2", "127.0.0.3")
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    access.chmod(0o600)
    (tmp_path / "client").mkdir()
    host3 = keys.extra("bastion3_host_key")
    cfg = client_config(tmp_path / "client", keys, port, key3=pub_of(host3))
    agent_known = tmp_path / "agent_known_hosts"
    pinned = f"[{NAME}]:{port} {bastion_pub(keys)}\n[{NAME}]:{port} {pub_of(host3)}\n"
    agent_known.write_text(pinned)
    answer = ["127.0.0.2", "127.0.0.3"]
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port_: int) -> list[str]:
        asked.append((host, port_))
        return list(answer)

    def bastion(address: str) -> BastionConfig:
        return BastionConfig(
            listen=[f"{address}:{port}"],
            host_key=keys.bastion_host_path if address == "127.0.0.2" else host3.path,
            access_file=access,
            admin_socket=keys.dir / f"b-{address}.sock",
            shutdown_grace=1.0,
        )

    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion("127.0.0.2")),
        running_bastion(bastion("127.0.0.3")),
    ):
        agent = Agent(
            AgentConfig(
                key=keys.agent.path,
                bastions=[BastionEndpoint(address=f"{NAME}:{port}", known_hosts=agent_known)],
                tunnels=[TunnelConfig(name="homebox", port=22, target=f"127.0.0.1:{home.port}")],
                admin_socket=keys.dir / "agent.sock",
                resolve_interval=0.2,
            ),
            resolve=resolve,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        session: asyncio.subprocess.Process | None = None
        try:
            await wait_for(
                lambda: (
                    len(agent.links) == 2 and all(link.status.state == "up" for link in agent.links)
                ),
                30,
            )
            assert asked[0] == (NAME, port)
            assert [link.label for link in agent.links] == [
                f"{NAME}:{port}/127.0.0.2",
                f"{NAME}:{port}/127.0.0.3",
            ]
            assert agent.snapshot()["names"][0]["addresses"] == ["127.0.0.2", "127.0.0.3"]
            assert "/127.0.0.2: up homebox:22" in agent.status_line()
            assert (await run_ssh(cfg, "homebox-via-3", "echo", "three")).stdout == b"three\n"
            assert agent_known.read_text() == pinned  # no announcement removed a key

            assert SSH is not None
            session = await asyncio.create_subprocess_exec(
                SSH,
                "-F",
                str(cfg),
                "homebox-via-2",
                "cat",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert session.stdin is not None and session.stdout is not None
            session.stdin.write(b"one\n")
            await session.stdin.drain()
            assert await asyncio.wait_for(session.stdout.readline(), 30) == b"one\n"

            leaving = agent.links[0]
            answer[:] = ["127.0.0.3"]
            await wait_for(lambda: leaving.status.state == "leaving", 30)
            assert leaving.status.published == []
            refused = await run_ssh(cfg, "homebox-via-2", "echo", "new")
            assert refused.returncode != 0  # bastion 2 no longer routes homebox
            assert (await run_ssh(cfg, "homebox-via-3", "echo", "ok")).stdout == b"ok\n"

            session.stdin.write(b"two\n")  # the routed session goes on
            await session.stdin.drain()
            assert await asyncio.wait_for(session.stdout.readline(), 30) == b"two\n"
            assert leaving in agent.links  # listed while it drains
            session.stdin.close()
            assert await asyncio.wait_for(session.wait(), 30) == 0
            await wait_for(lambda: leaving not in agent.links, 30)
            assert [link.label for link in agent.links] == [f"{NAME}:{port}/127.0.0.3"]

            # The address comes back; a key rotation then moves both links, one step each.
            answer[:] = ["127.0.0.2", "127.0.0.3"]
            await wait_for(
                lambda: len(agent.links) == 2 and all(x.status.state == "up" for x in agent.links),
                30,
            )
            new_key = asyncssh.generate_private_key("ssh-ed25519")
            report = await agent.rotator.rotate(new_key, "agent@home", None, retire=False)
            assert report["ok"], report
            labels = sorted(link.label for link in agent.links)
            for step in ("enrol", "switch"):
                done = sorted(x["bastion"] for x in report["steps"] if x["step"] == step)
                assert done == labels
            assert {key_fingerprint(link.key) for link in agent.links} == {key_fingerprint(new_key)}
            assert (await run_ssh(cfg, "homebox-via-2", "echo", "rotated")).returncode == 0
        finally:
            if session is not None and session.returncode is None:
                session.kill()
                await session.wait()
            stop.set()
            await asyncio.wait_for(task, 20)
