"""Splicing two SSH channels: a client's ``direct-tcpip`` and an agent's ``forwarded-tcpip``.

Each channel gets a ``Pipe``; data received on one is written to the other's channel with
no copy and no task. Backpressure follows the channel windows: when one side's send buffer
fills (``pause_writing``), the other side stops reading. Data that arrives before the other
end's channel is open (the home sshd's banner does) is buffered and flushed on attach, so
nothing is lost between the two channel opens.

Either end may close at any moment, from its own side, while data is still arriving on the
other. asyncssh's ``write`` raises ``BrokenPipeError`` on a channel that is closing, and an
exception in a session callback takes the *whole SSH connection* down (an agent with every
routed session on it). So every write to the peer goes through ``_send``/``_send_eof``,
which skip a closing channel (the data has nowhere to go) and never raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import asyncssh

from sshtunnel_mgr.logsetup import event

log = logging.getLogger(__name__)


class Pipe(asyncssh.SSHTCPSession[bytes]):
    def __init__(self, on_close: Callable[[Pipe], None] | None = None) -> None:
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.peer: Pipe | None = None
        self.bytes_in = 0
        self._pending: list[bytes] = []
        self._pending_eof = False
        self._closed = False
        self._on_close = on_close

    # Wiring --------------------------------------------------------------------------
    def link(self, peer: Pipe) -> None:
        self.peer = peer
        peer.peer = self

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan
        peer = self.peer
        if peer is not None and peer._pending:
            for data in peer._pending:
                _send(chan, data)
            peer._pending.clear()
        if peer is not None and peer._pending_eof:
            _send_eof(chan)
        if peer is not None and peer._closed:
            chan.close()  # the other end went away before this one opened

    # Data path (hot) -------------------------------------------------------------------
    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.bytes_in += len(data)
        peer = self.peer
        if peer is not None and peer.chan is not None:
            _send(peer.chan, data)
        else:
            self._pending.append(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.chan is not None:
            _send_eof(peer.chan)
        else:
            self._pending_eof = True
        return True  # keep the channel half-open until the other side is done too

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.chan is not None:
            peer.chan.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.chan is not None:
            peer.chan.resume_reading()

    # Teardown --------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        peer = self.peer
        if peer is not None and peer.chan is not None and not peer._closed:
            peer.chan.close()
        if self._on_close is not None:
            self._on_close(self)

    def close(self) -> None:
        if self.chan is not None:
            self.chan.close()


def _send(chan: asyncssh.SSHTCPChannel[bytes], data: bytes) -> None:
    """Write to the peer's channel unless it is closing (its end went away: drop)."""
    if chan.is_closing():
        return
    try:
        chan.write(data)
    except BrokenPipeError:  # asyncssh: "Channel not open for sending"
        event(log, logging.DEBUG, "dropped data", bytes=len(data), reason="channel closed")


def _send_eof(chan: asyncssh.SSHTCPChannel[bytes]) -> None:
    if chan.is_closing():
        return
    try:
        chan.write_eof()
    except BrokenPipeError:  # not raised by asyncssh 2.24, documented as possible
        event(log, logging.DEBUG, "dropped eof", reason="channel closed")
