"""``sshtun demo``: the whole path on loopback, with keys in a temporary directory.

A bastion, an agent and two stand-ins for the home box's services are started in this
process: a small SSH service (so no OpenSSH is needed) and a small web app. A client logs
in to the "home box" through the bastion exactly as ``ssh -J bastion homebox`` does; a web
client opens ``https://cloud.demo.test/`` through the bastion's HTTPS listener, which
routes the encrypted stream by name to the agent, where TLS ends with a certificate from a
throwaway local CA (setup/demoweb.py). The demo also shows the bastion refusing to act as
an open proxy, and refusing a web name it does not serve.
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
from sshtunnel_mgr.core.webconfig import WebConfig
from sshtunnel_mgr.keys.store import generate_key, load_private_key, public_line
from sshtunnel_mgr.setup import demoweb
from sshtunnel_mgr.setup.demoweb import WEB_NAME, DemoPki

Say = Callable[[str], None]
NAME = "homebox"


@dataclass
class DemoResult:
    reply: str
    refusal: str
    ssh_command: str
    page: demoweb.Fetched
    web_refusal: str
    curl_command: str


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
        f'permitlisten="{NAME}:22,{WEB_NAME}:443" {agent.public_line}\n'
        f'permitopen="{NAME}:22" {client.public_line}\n'
    )


@dataclass(frozen=True)
class _Ports:
    bastion: tuple[str, int]
    https: int
    home: int
    app: int


def _write_config(work: Path, ports: _Ports, pki: DemoPki) -> Path:
    """One config.toml with both roles, as a real install would have (one role each)."""
    bastion = f"{ports.bastion[0]}:{ports.bastion[1]}"
    config = {
        "bastion": {
            "listen": [bastion],
            "host_key": "bastion_host_key",
            "access_file": "access",
            "web": {"https_listen": f"127.0.0.1:{ports.https}", "public": [WEB_NAME]},
        },
        "agent": {
            "key": "agent_key",
            "admin_socket": "agent.sock",  # here, never a real agent's (/run/sshtun-agent)
            "bastions": [{"address": bastion, "known_hosts": "known_hosts"}],
            "tunnels": [
                {"name": NAME, "port": 22, "target": f"127.0.0.1:{ports.home}"},
                {
                    "name": WEB_NAME,
                    "port": 443,
                    "target": f"127.0.0.1:{ports.app}",
                    "tls": "files",
                    "cert": str(pki.cert.relative_to(work)),
                    "key": str(pki.key.relative_to(work)),
                },
            ],
        },
    }
    path = work / "config.toml"
    path.write_text(tomli_w.dumps(config))
    return path


async def _ssh_path(
    work: Path, say: Say, bastion: tuple[str, int], home_pub: str
) -> tuple[str, str]:
    """Log in to the home box through the bastion; then ask the bastion for an address."""
    bhost, bport = bastion
    common = dict(
        client_keys=[load_private_key(work / "client_key")],
        agent_path=None,
        **policy.key_only_login(),
    )
    async with asyncssh.connect(
        bhost, bport, username="demo", known_hosts=str(work / "known_hosts"), **common
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
    return reply, refusal


async def _web_path(say: Say, https: int, pki: DemoPki) -> tuple[demoweb.Fetched, str]:
    """What a browser does: HTTPS by name to the bastion, the demo CA trusted."""
    got = await demoweb.fetch(https, WEB_NAME, pki.ca)
    if got.status != 200 or not got.headline:
        raise SshtunError(f"demo: https://{WEB_NAME}/ through the bastion gave HTTP {got.status}")
    say(
        f"7. https://{WEB_NAME}:{https}/ -> bastion (routes by SNI, never decrypts) -> agent "
        f"(TLS ends at home, certificate from {got.issuer!r}) -> web app: HTTP {got.status}, "
        f"{got.headline!r}; the app saw the client as {got.client}"
    )
    other = await demoweb.refusal(https, demoweb.OTHER_NAME, pki.ca)
    say(f"8. asking it for https://{demoweb.OTHER_NAME}/ (not public, not published): {other}")
    return got, other


def _ssh_command(work: Path, bastion: tuple[str, int], bastion_pub: str, home_pub: str) -> str:
    bhost, bport = bastion
    ssh_config = work / "ssh_config"
    ssh_config.write_text(
        f"Host bastion\n  HostName {bhost}\n  Port {bport}\n  User demo\n\n"
        f"Host {NAME}\n  HostName {NAME}\n  Port 22\n  User demo\n  ProxyJump bastion\n\n"
        f"Host *\n  IdentityFile {work / 'client_key'}\n  IdentitiesOnly yes\n"
        f"  BatchMode yes\n  StrictHostKeyChecking yes\n"
        f"  UserKnownHostsFile {work / 'ssh_known_hosts'}\n"
    )
    (work / "ssh_known_hosts").write_text(f"[{bhost}]:{bport} {bastion_pub}\n{NAME} {home_pub}\n")
    return f"ssh -F {ssh_config} {NAME} hostname"


async def run_demo(
    work: Path, say: Say, hold: asyncio.Event | None = None, timeout: float = 20.0
) -> DemoResult:
    say(f"1. keys, a throwaway CA and config in {work}")
    _write_keys(work)
    pki = demoweb.make_pki(work / "web")
    home_key = asyncssh.generate_private_key("ssh-ed25519")
    home_pub = public_line(home_key, "")
    home = await _home_service(home_key, (work / "client_key.pub").read_text().strip())
    app = await demoweb.start_app()
    home_port = home.sockets[0].getsockname()[1]
    app_port = app.sockets[0].getsockname()[1]
    say(
        f"2. home services on loopback, nothing else can reach them: an SSH service (stand-in "
        f"for the home box's sshd) on 127.0.0.1:{home_port}, a web app on 127.0.0.1:{app_port}"
    )

    generate_key(work / "bastion_host_key", comment="sshtun-demo-bastion")
    bastion = Bastion(
        BastionConfig(
            listen=["127.0.0.1:0"],
            host_key=work / "bastion_host_key",
            access_file=work / "access",
            web=WebConfig(https_listen="127.0.0.1:0", public=[WEB_NAME]),
        )
    )
    stop = asyncio.Event()
    agent_task: asyncio.Task[None] | None = None
    try:
        await bastion.start()
        assert bastion.host_key is not None and bastion.web is not None
        address = bastion.addresses[0]
        https = bastion.web.https_addresses[0][1]
        bastion_pub = public_line(bastion.host_key, "")
        (work / "known_hosts").write_text(f"[{address[0]}]:{address[1]} {bastion_pub}\n")
        config = load_config(_write_config(work, _Ports(address, https, home_port, app_port), pki))
        say(
            f"3. bastion listening on {address[0]}:{address[1]} for SSH (public-key auth only, "
            f"routes names only) and on 127.0.0.1:{https} for HTTPS (public: {WEB_NAME})"
        )

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
            raise SshtunError("demo: the agent did not publish its tunnels in time")
        say(f"4. agent connected out to the bastion and published {NAME}:22 and {WEB_NAME}:443")

        reply, refusal = await _ssh_path(work, say, address, home_pub)
        page, web_refusal = await _web_path(say, https, pki)
        command = _ssh_command(work, address, bastion_pub, home_pub)
        curl = demoweb.curl_command(pki, https)
        if hold is not None:
            say(f"9. running until Ctrl-C; from another terminal try:\n     {command}\n     {curl}")
            await hold.wait()
        else:
            say(
                "9. with `sshtun demo --hold` it keeps running; then a real OpenSSH client "
                f"and curl can do the same:\n     {command}\n     {curl}"
            )
        return DemoResult(reply, refusal, command, page, web_refusal, curl)
    finally:
        stop.set()
        if agent_task is not None:
            # its fatal errors were raised above; anything else surfaces here
            with contextlib.suppress(TimeoutError, SshtunError):
                await asyncio.wait_for(agent_task, 5)
        await bastion.stop()
        for server in (home, app):
            server.close()
            await server.wait_closed()
        say("10. stopped the agent, the bastion and the home services")
