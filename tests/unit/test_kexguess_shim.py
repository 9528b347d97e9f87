"""sshcompat/kexguess.py on stand-in connections: it overrides the stock decision only on
the connection it is installed on, and steps aside (one log line per process) when
asyncssh's internals are not what it expects. Real peers: tests/integration/test_dropbear.py
and tests/integration/test_kex_guess_agent.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import pytest
from asyncssh.packet import SSHPacket

from sshtunnel_mgr.core.kexinit import parse_kexinit
from sshtunnel_mgr.sshcompat import kexguess
from sshtunnel_mgr.sshcompat.kexguess import MSG_KEXINIT


def string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def kexinit(kex: str, host_key: str = "ssh-ed25519", follows: bool = False) -> bytes:
    """A KEXINIT payload with its message-type byte, as asyncssh keeps its own."""
    lists = [kex, host_key, "aes128-ctr", "aes128-ctr", "hmac-sha2-256", "hmac-sha2-256"]
    lists += ["none", "none", "", ""]
    return (
        bytes([MSG_KEXINIT])
        + b"\0" * 16
        + b"".join(string(x.encode()) for x in lists)
        + bytes([follows])
        + b"\0\0\0\0"
    )


class StandIn:
    """What the shim touches of an asyncssh connection; the stock handler mimics
    asyncssh 2.24's check (negotiated kex against the peer's first entry)."""

    async def _stock_kexinit(self, pkttype: int, pktid: int, packet: SSHPacket) -> None:
        body = packet.get_remaining_payload()
        peer = parse_kexinit(body)
        self.stock_calls += 1
        ours = parse_kexinit(self._server_kexinit[1:])
        chosen = next(a for a in peer.kex_algs if a in ours.kex_algs)
        self._ignore_first_kex = peer.first_kex_follows and chosen != peer.kex_algs[0]

    _packet_handlers: ClassVar[dict[int, Any]] = {MSG_KEXINIT: _stock_kexinit}

    def __init__(self, ours: bytes) -> None:
        self._server_kexinit = ours
        self._ignore_first_kex = False
        self.stock_calls = 0

    def is_server(self) -> bool:
        return True


def receive(conn: Any, payload: bytes) -> None:
    packet = SSHPacket(payload)
    assert packet.get_byte() == MSG_KEXINIT  # as asyncssh's dispatcher does
    asyncio.run(conn._packet_handlers[MSG_KEXINIT](conn, MSG_KEXINIT, 0, packet))


@pytest.fixture(autouse=True)
def _fresh_log_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kexguess, "_told", set())


DROPBEAR_GUESS = kexinit("curve25519-sha256,ext-info-c", follows=True)


def test_a_wrong_guess_is_dropped_where_stock_asyncssh_would_use_it() -> None:
    stock = StandIn(kexinit("mlkem768x25519-sha256,curve25519-sha256"))
    receive(stock, DROPBEAR_GUESS)
    assert stock._ignore_first_kex is False  # asyncssh 2.24: the bug

    shimmed = StandIn(kexinit("mlkem768x25519-sha256,curve25519-sha256"))
    assert kexguess.install(shimmed)
    receive(shimmed, DROPBEAR_GUESS)
    assert shimmed.stock_calls == 1  # the stock handler still ran (negotiation, errors)
    assert shimmed._ignore_first_kex is True


def test_a_right_guess_is_used() -> None:
    conn = StandIn(kexinit("curve25519-sha256,mlkem768x25519-sha256"))
    assert kexguess.install(conn)
    receive(conn, DROPBEAR_GUESS)
    assert conn._ignore_first_kex is False


def test_only_the_connection_it_is_installed_on_changes() -> None:
    conn, other = StandIn(b""), StandIn(b"")
    assert kexguess.install(conn)
    assert StandIn._packet_handlers[MSG_KEXINIT] is StandIn._stock_kexinit
    assert other._packet_handlers is StandIn._packet_handlers
    assert conn._packet_handlers is not StandIn._packet_handlers


def test_an_unreadable_own_kexinit_keeps_the_stock_decision() -> None:
    original = StandIn._stock_kexinit

    async def stock_then_cut(self: StandIn, *args: Any) -> None:
        await original(self, *args)
        self._server_kexinit = self._server_kexinit[:20]  # not what asyncssh would keep

    conn = StandIn(kexinit("curve25519-sha256,mlkem768x25519-sha256"))
    conn._packet_handlers = {MSG_KEXINIT: stock_then_cut}
    assert kexguess.install(conn)
    receive(conn, kexinit("mlkem768x25519-sha256", follows=True))  # RFC: wrong guess
    assert conn._ignore_first_kex is False  # stock's answer, kept


class NoHandlers:
    _ignore_first_kex = False
    _server_kexinit = b""

    def is_server(self) -> bool:
        return True


class SyncHandler(StandIn):
    _packet_handlers: ClassVar[dict[int, Any]] = {MSG_KEXINIT: lambda *a: None}


class NoFlag(StandIn):
    def __init__(self) -> None:
        self._server_kexinit = b""


class NoOwnKexinit(StandIn):
    def __init__(self) -> None:
        self._ignore_first_kex = False


@pytest.mark.parametrize(
    ("conn", "why"),
    [
        (NoHandlers(), "_packet_handlers"),
        (SyncHandler(b""), "coroutine"),
        (NoFlag(), "_ignore_first_kex"),
        (NoOwnKexinit(), "_server_kexinit"),
        (object(), "_packet_handlers"),
    ],
)
def test_steps_aside_with_one_log_line_when_asyncssh_differs(
    conn: object, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sshtunnel_mgr")
    before = getattr(conn, "_packet_handlers", None)
    assert kexguess.install(conn) is False
    assert kexguess.install(conn) is False  # a second connection: no second line
    lines = [r.getMessage() for r in caplog.records if "kex guess shim skipped" in r.getMessage()]
    assert len(lines) == 1 and why in lines[0], lines
    assert getattr(conn, "_packet_handlers", None) is before  # stock behaviour kept
