"""``sshtun demo``: the whole path on loopback, with keys in a temporary directory.

A bastion, an agent and a small SSH service standing in for the home box's sshd (so no
OpenSSH is needed) are started in this process; a client then logs in to the "home box"
through the bastion exactly as ``ssh -J bastion homebox`` does, and the demo also shows the
bastion refusing to act as an open proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import tomli_w

from sshtunnel_mgr.agent import Agent
from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.core import policy
from sshtunnel_mgr.core.config import BastionConfig, load_config
from sshtunnel_mgr.core.errors import SshtunError
from sshtunnel_mgr.keys.store import generate_key, load_private_key, public_line

Say = Callable[[str], None]
NAME = "homebox"


@dataclass
class DemoResult:
    reply: str
    refusal: str
    ssh_command: str


async def _home_service(host_key: asyncssh.SSHKey, client_pub: str) -> asyncssh.SSHAcceptor:
    async def handle(process: asyncssh.SSHServerProcess[str]) -> None:
        command = process.command or "(shell)"
        process.stdout.write(f"hello from {NAME}, through the sshtun tunnel; you ran: {command}\n")
        process.exit(0)

    return await asyncssh.create_server(
        asyncssh.SSHServer,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(client_pub + "\n"),
        process_factory=handle,
        password_auth=False,
        kbdint_auth=False,
        **policy.server_options(),
    )


def _write_keys(work: Path) -> None:
    agent = generate_key(work / "agent_key", comment="demo-agent")
    client = generate_key(work / "client_key", comment="demo-client")
    (work / "access").write_text(
        f'permitlisten="{NAME}:22" {agent.public_line}\n'
        f'permitopen="{NAME}:22" {client.public_line}\n'
    )


def _write_config(work: Path, bastion: tuple[str, int], home_port: int) -> Path:
    """One config.toml with both roles, as a real install would have (one role each)."""
    config = {
        "bastion": {
            "listen": [f"{bastion[0]}:{bastion[1]}"],
            "host_key": "bastion_host_key",
            "access_file": "access",
        },
        "agent": {
            "key": "agent_key",
            "bastions": [{"address": f"{bastion[0]}:{bastion[1]}", "known_hosts": "known_hosts"}],
            "tunnels": [{"name": NAME, "port": 22, "target": f"127.0.0.1:{home_port}"}],
        },
    }
    path = work / "config.toml"
    path.write_text(tomli_w.dumps(config))
    return path


async def run_demo(
    work: Path, say: Say, hold: asyncio.Event | None = None, timeout: float = 20.0
) -> DemoResult:
    say(f"1. keys and config in {work}")
    _write_keys(work)
    home_key = asyncssh.generate_private_key("ssh-ed25519")
    home_pub = public_line(home_key, "")
    home = await _home_service(home_key, (work / "client_key.pub").read_text().strip())
    home_port = home.sockets[0].getsockname()[1]
    say(
        f"2. home service (stand-in for the home box's sshd) on 127.0.0.1:{home_port}; "
        "nothing else can reach it"
    )

    generate_key(work / "bastion_host_key", comment="sshtun-demo-bastion")
    bastion = Bastion(
        BastionConfig(
            listen=["127.0.0.1:0"], host_key=work / "bastion_host_key", access_file=work / "access"
        )
    )
    stop = asyncio.Event()
    agent_task: asyncio.Task[None] | None = None
    try:
        await bastion.start()
        assert bastion.host_key is not None
        bhost, bport = bastion.addresses[0]
        bastion_pub = public_line(bastion.host_key, "")
        (work / "known_hosts").write_text(f"[{bhost}]:{bport} {bastion_pub}\n")
        config = load_config(_write_config(work, (bhost, bport), home_port))
        say(f"3. bastion listening on {bhost}:{bport} (public-key auth only, routes names only)")

        agent = Agent(config.require_agent())
        agent_task = asyncio.create_task(agent.run(stop))
        ready = asyncio.create_task(agent.ready_event.wait())
        done, _ = await asyncio.wait(
            {ready, agent_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if agent_task in done:
            agent_task.result()
        if ready not in done:
            ready.cancel()
            raise SshtunError("demo: the agent did not publish its tunnel in time")
        say(f"4. agent connected out to the bastion and published {NAME}:22")

        client_key = load_private_key(work / "client_key")
        common = dict(
            client_keys=[client_key],
            config=None,
            agent_path=None,
            preferred_auth="publickey",
            **policy.client_options(),
        )
        async with asyncssh.connect(
            bhost,
            bport,
            username="demo",
            known_hosts=str(work / "known_hosts"),
            **common,
        ) as jump:
            async with asyncssh.connect(
                NAME,
                22,
                tunnel=jump,
                username="demo",
                known_hosts=([asyncssh.import_public_key(home_pub)], [], []),
                **common,
            ) as inner:
                result = await inner.run("hostname", check=True)
                reply = str(result.stdout).strip()
            say(f"5. client -> bastion -> {NAME}, end-to-end encrypted: {reply!r}")
            try:
                await jump.open_connection("127.0.0.1", 22)
                refusal = "NOT REFUSED"
            except asyncssh.ChannelOpenError as exc:
                refusal = exc.reason
            say(f"6. asking the bastion for 127.0.0.1:22 instead is refused: {refusal}")

        ssh_config = work / "ssh_config"
        ssh_config.write_text(
            f"Host bastion\n  HostName {bhost}\n  Port {bport}\n  User demo\n\n"
            f"Host {NAME}\n  HostName {NAME}\n  Port 22\n  User demo\n  ProxyJump bastion\n\n"
            f"Host *\n  IdentityFile {work / 'client_key'}\n  IdentitiesOnly yes\n"
            f"  BatchMode yes\n  StrictHostKeyChecking yes\n"
            f"  UserKnownHostsFile {work / 'ssh_known_hosts'}\n"
        )
        (work / "ssh_known_hosts").write_text(
            f"[{bhost}]:{bport} {bastion_pub}\n{NAME} {home_pub}\n"
        )
        command = f"ssh -F {ssh_config} {NAME} hostname"
        if hold is not None:
            say(f"7. running until Ctrl-C; from another terminal try:\n     {command}")
            await hold.wait()
        else:
            say(
                f"7. with `sshtun demo --hold` it keeps running; then a real OpenSSH client "
                f"can do the same:\n     {command}"
            )
        return DemoResult(reply, refusal, command)
    finally:
        stop.set()
        if agent_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent_task, 5)
        await bastion.stop()
        home.close()
        await home.wait_closed()
        say("8. stopped the agent, the bastion and the home service")
