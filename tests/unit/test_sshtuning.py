"""The send-path shims (sshcompat/sendpath.py, debuglevel.py) on stand-in objects: what
each does, and that each steps aside when the internals it wraps are missing. No sockets,
no event loop (a recording loop stands in). Real connections are in
tests/integration/test_sshtuning_wire.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import asyncssh
import pytest

from sshtunnel_mgr.sshcompat import sendpath
from sshtunnel_mgr.sshcompat.sendpath import (
    MSG_IGNORE,
    Tuning,
    countermeasure_needed,
    tune_connection,
)

SSHLogger = type(asyncssh.logger)  # asyncssh's logger class: it keeps the debug level

IGNORE_PAYLOAD = b"\x00\x00\x00\x00"
MSG_CHANNEL_DATA = 94


@pytest.mark.parametrize(
    ("cipher", "needed"),
    [
        ("aes128-gcm@openssh.com", False),
        ("aes256-gcm@openssh.com", False),
        ("chacha20-poly1305@openssh.com", False),
        ("aes128-ctr", False),
        ("aes192-ctr", False),
        ("aes256-ctr", False),
        ("aes128-cbc", True),
        ("aes256-cbc", True),
        ("3des-cbc", True),
        ("blowfish-cbc", True),
        ("rijndael-cbc@lysator.liu.se", True),
        ("arcfour256", True),  # not known to be safe: keep the countermeasure
        ("none", True),
        ("", True),
        (None, True),
        ("AES128-GCM@OPENSSH.COM", True),  # names are exact; unknown spellings stay stock
    ],
)
def test_countermeasure_kept_unless_the_cipher_is_known_aead_or_ctr(
    cipher: str | None, needed: bool
) -> None:
    assert countermeasure_needed(cipher) is needed


class RecordingLoop:
    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def run_pass(self) -> None:
        todo, self.soon = self.soon, []
        for callback in todo:
            callback()


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.writes.append(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return self.closing


class FakeConnection:
    """The asyncssh internals the shims read, and nothing else."""

    def __init__(self, cipher: str = "aes128-gcm@openssh.com") -> None:
        self._transport: Any = RecordingTransport()
        self._loop = RecordingLoop()
        self._send_encryption: object = object()
        self.extra = {"send_cipher": cipher}
        self.sent: list[bytes] = []
        self.packets: list[tuple[int, tuple[bytes, ...]]] = []
        self.logged: list[tuple[str, int]] = []
        self.channels: list[Any] = []
        self.errors = 0

    def _send(self, data: bytes) -> None:
        self.sent.append(data)

    def send_packet(self, pkttype: int, *args: bytes, handler: Any = None) -> None:
        self.packets.append((pkttype, args))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def internal_error(self) -> None:
        self.errors += 1

    def add_channel(self, chan: Any) -> int:
        self.channels.append(chan)
        return len(self.channels)

    def log_sent_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        self.logged.append(("sent", pkttype))

    def log_received_packet(
        self, pkttype: int, pktid: int | None, packet: Any, note: str = ""
    ) -> None:
        self.logged.append(("received", pkttype))


def test_all_three_shims_apply_to_a_connection_with_the_expected_internals() -> None:
    assert tune_connection(FakeConnection()) == Tuning(  # type: ignore[arg-type]
        cork=True, skip_ignore=True, quiet_packet_log=True
    )


def test_cork_writes_once_per_loop_pass_in_order() -> None:
    conn = FakeConnection()
    tune_connection(conn)  # type: ignore[arg-type]
    transport = conn._transport
    for chunk in (b"one", b"two", b"three"):
        conn._send(chunk)
    assert transport.writes == [] and len(conn._loop.soon) == 1  # one flush queued
    conn._loop.run_pass()
    assert transport.writes == [b"onetwothree"]
    conn._send(b"four")
    conn._loop.run_pass()
    assert transport.writes == [b"onetwothree", b"four"]
    assert conn.sent == []  # the stock _send is bypassed, not called twice


def test_cork_writes_a_bulk_packet_alone_and_joins_the_small_ones_around_it() -> None:
    conn = FakeConnection()
    tune_connection(conn)  # type: ignore[arg-type]
    big = bytes(sendpath.JOIN_BELOW)
    for chunk in (b"a", b"b", big, b"c", big, big):
        conn._send(chunk)
    conn._loop.run_pass()
    assert conn._transport.writes == [b"ab", big, b"c", big, big]


def test_cork_flushes_at_once_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sendpath, "CORK_LIMIT", 10)
    conn = FakeConnection()
    tune_connection(conn)  # type: ignore[arg-type]
    conn._send(b"12345")
    conn._send(b"678901")  # 11 bytes waiting: written now
    assert conn._transport.writes == [b"12345678901"]
    conn._loop.run_pass()  # the queued flush finds nothing
    assert conn._transport.writes == [b"12345678901"]


def test_a_disconnect_corked_before_the_abort_still_goes_out() -> None:
    """asyncssh's _force_close clears conn._transport and queues transport.abort; the
    flush was queued first and writes through the transport captured at set-up."""
    conn = FakeConnection()
    tune_connection(conn)  # type: ignore[arg-type]
    transport = conn._transport
    conn._send(b"disconnect packet")
    conn._transport = None  # what _force_close does
    conn._send(b"after close")  # stock _send drops this too
    conn._loop.run_pass()
    assert transport.writes == [b"disconnect packet"]


def test_cork_writes_nothing_to_a_closing_transport() -> None:
    conn = FakeConnection()
    tune_connection(conn)  # type: ignore[arg-type]
    conn._send(b"late")
    conn._transport.closing = True
    conn._loop.run_pass()
    assert conn._transport.writes == []


def test_cork_write_errors_close_the_connection_like_stock() -> None:
    conn = FakeConnection()
    tune_connection(conn)  # type: ignore[arg-type]

    def broken(data: Any) -> None:
        raise RuntimeError("transport refused")

    conn._transport.write = broken
    conn._send(b"x")
    conn._loop.run_pass()
    assert conn.errors == 1


@pytest.mark.parametrize(
    ("cipher", "ignores_sent"),
    [("aes128-gcm@openssh.com", 0), ("chacha20-poly1305@openssh.com", 0), ("aes128-cbc", 2)],
)
def test_empty_ignore_dropped_only_for_aead_and_ctr(cipher: str, ignores_sent: int) -> None:
    conn = FakeConnection(cipher)
    tune_connection(conn)  # type: ignore[arg-type]
    for _ in range(2):
        conn.send_packet(MSG_IGNORE, IGNORE_PAYLOAD)  # what asyncssh inserts
        conn.send_packet(MSG_CHANNEL_DATA, b"\x00\x00\x00\x01", b"data")
    types = [t for t, _ in conn.packets]
    assert types.count(MSG_IGNORE) == ignores_sent
    assert types.count(MSG_CHANNEL_DATA) == 2


def test_an_ignore_with_a_payload_is_always_sent() -> None:
    conn = FakeConnection()
    tune_connection(conn)  # type: ignore[arg-type]
    conn.send_packet(MSG_IGNORE, b"\x00\x00\x00\x03abc")
    assert conn.packets == [(MSG_IGNORE, (b"\x00\x00\x00\x03abc",))]


def test_the_cipher_is_read_again_after_each_key_exchange() -> None:
    conn = FakeConnection("aes128-gcm@openssh.com")
    tune_connection(conn)  # type: ignore[arg-type]
    conn.send_packet(MSG_IGNORE, IGNORE_PAYLOAD)
    conn._send_encryption, conn.extra["send_cipher"] = object(), "aes128-cbc"  # a rekey
    conn.send_packet(MSG_IGNORE, IGNORE_PAYLOAD)
    assert [t for t, _ in conn.packets] == [MSG_IGNORE]


def test_packet_log_gated_on_debug_level_3(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = FakeConnection()
    tune_connection(conn)  # type: ignore[arg-type]
    chan = SimpleNamespace(
        logged=[],
        log_sent_packet=None,
        log_received_packet=None,
    )
    chan.log_sent_packet = lambda t, i, p, n="": chan.logged.append(("sent", t))
    chan.log_received_packet = lambda t, i, p, n="": chan.logged.append(("received", t))
    conn.add_channel(chan)  # channels are gated as they are added
    for handler in (conn, chan):
        handler.log_sent_packet(MSG_CHANNEL_DATA, 1, b"")
        handler.log_received_packet(MSG_CHANNEL_DATA, 1, b"")
    assert conn.logged == [] and chan.logged == []
    monkeypatch.setattr(SSHLogger, "_debug_level", 3)
    for handler in (conn, chan):
        handler.log_sent_packet(MSG_CHANNEL_DATA, 2, b"")
        handler.log_received_packet(MSG_CHANNEL_DATA, 2, b"")
    expected = [("sent", MSG_CHANNEL_DATA), ("received", MSG_CHANNEL_DATA)]
    assert conn.logged == expected and chan.logged == expected
    assert conn.channels == [chan]


# Fallback: a missing or different internal leaves that part stock, and nothing raises ---
def _without(name: str) -> FakeConnection:
    conn = FakeConnection()
    setattr(conn, name, None)  # a None in place of the internal, as if renamed
    return conn


class Bare:
    """A connection object with none of the internals."""


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (Bare, Tuning()),
        (lambda: _without("_transport"), Tuning(skip_ignore=True, quiet_packet_log=True)),
        (lambda: _without("_send"), Tuning(skip_ignore=True, quiet_packet_log=True)),
        (lambda: _without("internal_error"), Tuning(skip_ignore=True, quiet_packet_log=True)),
        (lambda: _without("send_packet"), Tuning(cork=True, quiet_packet_log=True)),
        (lambda: _without("get_extra_info"), Tuning(cork=True, quiet_packet_log=True)),
        (lambda: _without("add_channel"), Tuning(cork=True, skip_ignore=True)),
        (lambda: _without("log_sent_packet"), Tuning(cork=True, skip_ignore=True)),
    ],
    ids=[
        "bare",
        "no-transport",
        "no-_send",
        "no-internal_error",
        "no-send_packet",
        "no-get_extra_info",
        "no-add_channel",
        "no-log_sent_packet",
    ],
)
def test_missing_internals_leave_that_shim_out(make: Callable[[], Any], expected: Tuning) -> None:
    conn = make()
    before = {k: v for k, v in vars(conn).items() if k in ("_send", "send_packet", "add_channel")}
    assert tune_connection(conn) == expected
    if not expected.cork and "_send" in before:
        assert conn._send is before["_send"]  # untouched, not half-installed


def test_missing_send_encryption_leaves_ignore_stock() -> None:
    conn = FakeConnection()
    del conn._send_encryption
    assert tune_connection(conn) == Tuning(cork=True, quiet_packet_log=True)  # type: ignore[arg-type]
    conn.send_packet(MSG_IGNORE, IGNORE_PAYLOAD)
    assert [t for t, _ in conn.packets] == [MSG_IGNORE]


def test_no_packet_log_level_in_asyncssh_leaves_logging_stock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(SSHLogger, "_debug_level")
    conn = FakeConnection()
    assert tune_connection(conn) == Tuning(cork=True, skip_ignore=True)  # type: ignore[arg-type]
    conn.log_sent_packet(MSG_CHANNEL_DATA, 1, b"")
    assert conn.logged == [("sent", MSG_CHANNEL_DATA)]
