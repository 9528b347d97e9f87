"""Each asyncssh shim stepped aside on real connections: an in-process sshtun bastion and
agent, the real OpenSSH client (``ssh -W homebox:22 bastion``) through them to a TCP echo
server at home. The internal each shim relies on is made to look different (renamed
parameters, a sync handler, a non-integer level) in a way stock asyncssh still runs with,
as a future release might: the shim steps aside, status names it, the bytes still arrive.
The same scenario with nothing changed has every shim active."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh
import asyncssh.channel
import asyncssh.connection
import asyncssh.encryption
import pytest

from sshtunnel_mgr import sshcompat
from sshtunnel_mgr.sshcompat import authlog
from tests.harness import (
    Keys,
    access_text,
    agent_config,
    bastion_config,
    run_ssh,
    running_agent,
    running_bastion,
    write_ssh_config,
)

Connection = asyncssh.connection.SSHConnection
Server = asyncssh.SSHServerConnection


def _reshaped(cls: type, name: str) -> Callable[[pytest.MonkeyPatch], None]:
    """Replace a method by one with other parameter names that calls the original: what
    asyncssh does still works, the shim's signature check no longer matches."""

    def apply(monkeypatch: pytest.MonkeyPatch) -> None:
        original = getattr(cls, name)
        if inspect.iscoroutinefunction(original):

            async def coroutine(self: Any, *args: Any, **kwargs: Any) -> Any:
                return await original(self, *args, **kwargs)

            monkeypatch.setattr(cls, name, coroutine)
        else:

            def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                return original(self, *args, **kwargs)

            monkeypatch.setattr(cls, name, method)

    return apply


def _sync_kexinit_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    handlers = dict(Connection._packet_handlers)
    stock = handlers[20]
    handlers[20] = lambda self, *args: stock(self, *args)  # returns the coroutine: still run
    monkeypatch.setattr(Connection, "_packet_handlers", handlers)


def _float_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type(asyncssh.logger), "_debug_level", 1.0)


def _lookup_reshaped(monkeypatch: pytest.MonkeyPatch) -> None:
    authlog.uninstall()  # a bastion started earlier in this process installed it
    original = getattr(asyncssh.connection, "lookup_server_auth")  # noqa: B009

    def lookup(*args: Any) -> Any:
        return original(*args)

    monkeypatch.setattr(asyncssh.connection, "lookup_server_auth", lookup)


def _no_waiter(monkeypatch: pytest.MonkeyPatch) -> None:
    options = asyncssh.connection.SSHConnectionOptions  # no login future declared any more
    monkeypatch.setattr(options, "__annotations__", {**options.__annotations__})
    monkeypatch.delitem(options.__annotations__, "waiter")


CHANGES: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "authlog": _lookup_reshaped,
    "cork": _reshaped(Connection, "_send"),
    "skip_ignore": _reshaped(Connection, "send_packet"),
    "quiet_packet_log": _float_level,
    "recv_feed": _reshaped(Connection, "_recv_packet"),
    "aead_glue": _reshaped(asyncssh.encryption.GCMEncryption, "encrypt_packet"),
    "data_packets": _reshaped(asyncssh.channel.SSHChannel, "send_packet"),
    "kexguess": _sync_kexinit_handler,
    "sigpolicy": _reshaped(Server, "validate_public_key"),
    "disconnects": _reshaped(Connection, "_send_disconnect"),
    "forwardreq": _reshaped(Server, "_process_tcpip_forward_global_request"),
    "hostkeys": _reshaped(Server, "send_server_host_keys"),
    "noreload": _reshaped(Server, "reload_config"),
    "serverstart": _no_waiter,
}


def test_every_connection_shim_has_a_case() -> None:
    assert set(CHANGES) == set(sshcompat.NAMES) - {"keyerrors"}  # that one reads files


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _through(keys: Keys, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """ssh -W through the bastion and agent to the echo server; both status answers."""
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    payload = b"through the tunnel\n" * 1000
    async with (
        echo_server() as home_port,
        running_bastion(bastion_config(keys, access)) as bastion,
        running_agent(
            agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home_port}")])
        ) as agent,
    ):
        cfg = write_ssh_config(tmp_path / "client", keys, bastion.port)
        result = await run_ssh(cfg, "-W", "homebox:22", "bastion", stdin=payload)
        assert result.returncode == 0, result.stderr
        assert result.stdout == payload
        return bastion.snapshot()["asyncssh"], agent.agent.snapshot()["asyncssh"]


@pytest.mark.openssh
async def test_every_shim_active_and_the_tunnel_works(keys: Keys, tmp_path: Path) -> None:
    bastion, agent = await _through(keys, tmp_path)
    assert bastion["stepped_aside"] == {} and agent["stepped_aside"] == {}
    assert bastion["active"] == list(sshcompat.NAMES)
    assert agent["active"] == [
        "cork",
        "skip_ignore",
        "quiet_packet_log",
        "recv_feed",
        "aead_glue",
        "data_packets",
        "kexguess",
        "keyerrors",
    ]


@pytest.mark.openssh
@pytest.mark.parametrize("name", list(CHANGES))
async def test_a_shim_stepped_aside_leaves_the_tunnel_working(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    CHANGES[name](monkeypatch)
    try:
        bastion, agent = await _through(keys, tmp_path)
    finally:
        authlog.uninstall()  # never leave a wrapper around a monkeypatched function
    assert list(bastion["stepped_aside"]) == [name]
    assert name not in bastion["active"]
    expected = [name] if "agent" in sshcompat.shim(name).roles else []
    assert list(agent["stepped_aside"]) == expected
