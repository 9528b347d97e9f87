"""Splicing two SSH channels: a client's ``direct-tcpip`` and an agent's ``forwarded-tcpip``.

Each channel gets a ``Pipe``; data received on one is written to the other's channel with
no copy and no task. Backpressure follows the channel windows: when one side's send buffer
fills (``pause_writing``), the other side stops reading. Data that arrives before the other
end's channel is open (the home sshd's banner does) is held and flushed on attach, so
nothing is lost between the two channel opens; once ``PENDING_LIMIT`` bytes are held, that
channel stops being read until the other end opens, so the rest waits in the SSH window.
Every byte the bastion holds for a splice is therefore bounded by the two channels'
windows and send buffers, whatever either peer does.

Once both directions have passed their EOF, the bastion closes both channels itself (what
is buffered is sent first): a peer may never close on its own. asyncssh's forwarder (the
``sshtun up`` agent) leaves a channel open forever when its TCP side's EOF came before the
channel's, and a jump client's ``ssh -W`` waits for the close.

An end whose channel will never open (the open failed or timed out, or its client left
while it was being opened) is ended with ``never_opened``: the other end is then closed as
soon as its channel opens, or at once if it is open already.

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

from sshtunnel_mgr.core.limits import AGENT_HOP_MAX_PACKET
from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.runtime.passbatch import PassBatch

log = logging.getLogger(__name__)

PENDING_LIMIT = 64 * 1024  # bytes held for an end that is not open yet; then stop reading


class Pipe(asyncssh.SSHTCPSession[bytes]):
    def __init__(self, on_close: Callable[[Pipe], None] | None = None) -> None:
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.peer: Pipe | None = None
        self.bytes_in = 0
        self.pending_bytes = 0  # held in ``_pending`` for the peer's channel to open
        self._pending: list[bytes] = []
        self._pending_eof = False
        self._eof_in = False  # this end's peer (client or agent) has sent its EOF
        self._closed = False
        self._on_close = on_close
        # Why this end's channel is not being read: the peer is not open yet and
        # PENDING_LIMIT is held, or the peer's send buffer is full. Read when neither.
        self._wait_peer = False
        self._wait_drain = False
        self._paused = False
        # What this end received in one loop pass goes to the peer's channel as one write:
        # a jump client's 32 KiB packets leave for the agent as packets of up to 128 KiB.
        self._batch = PassBatch(self._to_peer, AGENT_HOP_MAX_PACKET)

    # Wiring --------------------------------------------------------------------------
    def link(self, peer: Pipe) -> None:
        self.peer = peer
        peer.peer = self

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan
        peer = self.peer
        if peer is not None:
            for data in peer._pending:
                _send(chan, data)
            peer._pending.clear()
            peer.pending_bytes = 0
            if peer._pending_eof:
                _send_eof(chan)
            if peer._closed:
                chan.close()  # the other end went away (or never opened) before this one
                return
            peer._wait_peer = False
            peer._update_reading()  # after the flush: held data goes out first, in order
        self._update_reading()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def reading_paused(self) -> bool:
        return self._paused

    def _update_reading(self) -> None:
        chan = self.chan
        if chan is None or self._closed:
            return
        paused = self._wait_peer or self._wait_drain
        if paused == self._paused:
            return
        self._paused = paused  # first: resume_reading delivers held data re-entrantly
        if paused:
            chan.pause_reading()
        else:
            chan.resume_reading()

    # Data path (hot) -------------------------------------------------------------------
    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.bytes_in += len(data)
        peer = self.peer
        if peer is not None and peer.chan is not None:
            self._batch.add(data)
        elif peer is not None and peer._closed:
            pass  # the other end will never take it; this end is being closed
        else:
            self._pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes >= PENDING_LIMIT and not self._wait_peer:
                self._wait_peer = True
                self._update_reading()

    def _to_peer(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.chan is not None:
            _send(peer.chan, data)

    def eof_received(self) -> bool:
        self._eof_in = True
        self._batch.flush()
        peer = self.peer
        if peer is not None and peer.chan is not None:
            _send_eof(peer.chan)
        else:
            self._pending_eof = True
        if peer is not None and peer._eof_in:
            # Both directions are done: nothing more can flow, so close both channels
            # (what is still buffered is sent first). Waiting for a peer to close instead
            # can wait forever: asyncssh's own forwarder (a stock ``sshtun up`` agent)
            # never closes a channel whose TCP side sent its EOF before the channel's
            # EOF arrived, and a jump client (``ssh -W``) waits for our close.
            self.close()
            peer.close()
        return True  # keep the channel half-open until the other side is done too

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None:
            peer._wait_drain = True
            peer._update_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None:
            peer._wait_drain = False
            peer._update_reading()

    # Teardown --------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._batch.flush()  # what this end sent before it went goes first
        peer = self.peer
        if peer is not None and peer.chan is not None and not peer._closed:
            peer.chan.close()
        if self._on_close is not None:
            self._on_close(self)

    def never_opened(self, reason: str) -> None:
        """This end's channel will never open (its open failed or timed out, or its
        client left while it was being opened): end the splice as if it had closed, so
        the other end is closed as soon as it opens (or now, if it is open)."""
        self.connection_lost(None)

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
    except OSError as exc:
        # asyncssh: BrokenPipeError (not raised by 2.24, documented as possible). A web
        # client's socket (bastion/web/conn.py) raises ENOTCONN when the client reset it
        # while the bastion was not reading it: that end is gone, close it.
        event(log, logging.DEBUG, "dropped eof", reason="channel closed", error=repr(exc))
        chan.close()
