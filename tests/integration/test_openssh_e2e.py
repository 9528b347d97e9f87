"""End to end with real OpenSSH: sshd as the home box, ssh -J as the client, ssh -R as agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Keys, access_text
from tests.integration.conftest import logged
from tests.integration.scene import scene

pytestmark = pytest.mark.openssh


async def test_ssh_jump_reaches_home_sshd_through_sshtun(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(keys, tmp_path) as s, s.agent():
        result = await s.reach("echo through-the-tunnel; id -un")
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().split() == ["through-the-tunnel", home_user()]
        assert logged(caplog, "route", "name=homebox", "port=22")
        # The home sshd saw the client's own key: the inner session is end to end.
        assert any("Accepted publickey" in line for line in s.home.log)


def home_user() -> str:
    import getpass

    return getpass.getuser()


async def test_stock_openssh_agent_publishes_a_name(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(keys, tmp_path) as s:
        async with s.stock_agent(f"homebox:22:{s.target}") as stock_agent:
            assert stock_agent.returncode is None, "stock ssh -R exited"
            result = await s.reach("echo via-stock-agent")
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"via-stock-agent\n"
        # The stock agent is gone: its name is freed at once.
        await s.wait_route(gone=True)
        assert logged(caplog, "unpublish", "name=homebox")


async def test_paramiko_client_exchanges_data_through_a_published_name(
    keys: Keys, tmp_path: Path
) -> None:
    """A second, independent SSH implementation as the client (direct-tcpip)."""
    import asyncio

    import paramiko

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo-service\n")
        while data := await reader.read(65536):
            writer.write(data.upper())
        writer.close()

    service = await asyncio.start_server(echo, "127.0.0.1", 0)
    sport = service.sockets[0].getsockname()[1]
    access = access_text(keys, listen="echo.home.example.com:7", open_="*.home.example.com:7")
    try:
        async with (
            scene(keys, tmp_path, access=access, home=False) as s,
            s.agent([("echo.home.example.com", 7, f"127.0.0.1:{sport}")]),
        ):
            bastion = s.bastion
            known = tmp_path / "paramiko_known_hosts"
            known.write_text(f"[127.0.0.1]:{bastion.port} {keys.bastion_host.public_line}\n")

            def talk() -> bytes:
                client = paramiko.SSHClient()
                client.load_host_keys(str(known))
                client.set_missing_host_key_policy(paramiko.RejectPolicy())
                client.connect(
                    "127.0.0.1",
                    bastion.port,
                    username="alice",
                    key_filename=str(keys.client.path),
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=10,
                )
                try:
                    transport = client.get_transport()
                    assert transport is not None
                    chan = transport.open_channel(
                        "direct-tcpip", ("echo.home.example.com", 7), ("127.0.0.1", 0)
                    )
                    chan.settimeout(10)
                    got = b""
                    while not got.endswith(b"\n"):
                        got += chan.recv(100)
                    chan.sendall(b"hello through paramiko")
                    reply = b""
                    while len(reply) < 22:
                        reply += chan.recv(100)
                    chan.close()
                    return got + reply
                finally:
                    client.close()

            data = await asyncio.to_thread(talk)
            assert data == b"echo-service\nHELLO THROUGH PARAMIKO"
    finally:
        service.close()
        await service.wait_closed()


async def test_stock_agent_with_a_mixed_case_name(keys: Keys, tmp_path: Path) -> None:
    """Names are case-insensitive, but stock ssh -R must get back its own spelling."""
    async with scene(keys, tmp_path) as s:
        bastion = s.bastion
        async with s.stock_agent(f"HomeBox:22:{s.target}"):
            [route] = bastion.state.routes.lookup("homebox", 22)
            assert route.spelling == "HomeBox"
            for name in ("homebox", "HOMEBOX"):
                cfg = s.ssh_config(name, name=name)
                result = await s.ssh(name, "echo case-ok", cfg=cfg)
                assert result.stdout == b"case-ok\n", result.stderr
