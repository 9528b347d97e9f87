"""Per-connection speed-ups for asyncssh's send path; stock behaviour wherever unsure.

A bastion splices bulk streams packet by packet, so asyncssh's per-packet costs dominate
its CPU. Three of them buy nothing on our connections; ``tune_connection`` removes them
from one connection object (instance attributes only: no class is patched, nothing happens
at import, other asyncssh users in the process are untouched):

1. **Cork** (shim ``cork``). asyncssh hands every packet to ``transport.write`` at once,
   one ``send()`` system call each. Corked, the packets written during one event-loop pass
   go out together at the end of that pass (or earlier, once ``CORK_LIMIT`` bytes are
   waiting): small ones joined into one ``write``, a bulk packet (``JOIN_BELOW`` or more)
   written on its own rather than copied once more into the join. Same bytes, same
   order; only the syscall count changes. A disconnect still goes out before asyncssh
   aborts the transport, because the flush is queued ahead of the abort. A connection
   tunnelled through another (its transport is an SSH channel, not a socket) stays
   uncorked.
2. **No empty ``SSH_MSG_IGNORE`` before each packet** (shim ``skip_ignore``) when the
   cipher in use is not CBC. asyncssh sends one ahead of every packet once encryption is
   on: the RFC 4251 §9.3.1 countermeasure against chosen-plaintext attacks on CBC's
   predictable IV. AEAD ciphers (``aes*-gcm``, ``chacha20-poly1305``) and CTR modes have no
   such IV, and OpenSSH sends no such packets. The decision is taken per key exchange from
   the negotiated send cipher; any cipher not known to be safe (CBC, or a name we do not
   recognise) keeps the countermeasure. A peer never depends on ignore packets.
3. **No packet-log formatting unless packet logging is on** (shim ``quiet_packet_log``,
   in ``debuglevel.py``).
4. **Fewer copies per packet** (shims ``recv_feed`` and ``aead_glue``, in
   ``datapath.py``): the receive parser fed one packet at a time, one AEAD object per key,
   GCM channel data taken whole from a read (``recvfast.py``); channel data packets built
   in one join, a channel's writes sent straight into packets (shim ``data_packets``,
   ``sendfast.py``).

Everything else is untouched: rekeying (the byte count still runs in ``send_packet``),
keepalives, channel windows, packet sizes, padding and MACs.

asyncssh internals used: ``SSHConnection._send(data)``, ``._transport``, ``._loop`` (cork);
``SSHConnection.send_packet(pkttype, *args, handler=None)`` and ``._send_encryption``
(skip_ignore). Each is checked on the class (``check``) and again on the connection; if
anything differs, that shim is left out, the connection keeps stock behaviour, and
``sshcompat.stepped_aside`` logs it once. ``Tuning`` records what was applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.sshcompat import Shim, checked, missing, parameters, stepped_aside
from sshtunnel_mgr.sshcompat.datapath import AEAD_GLUE, RECV_FEED, refresh_on_read
from sshtunnel_mgr.sshcompat.datapath import install_aead_glue as aead_glue
from sshtunnel_mgr.sshcompat.datapath import install_recv_feed as recv_feed
from sshtunnel_mgr.sshcompat.debuglevel import SHIM as QUIET_PACKET_LOG
from sshtunnel_mgr.sshcompat.debuglevel import install as quiet_packet_log
from sshtunnel_mgr.sshcompat.sendfast import SHIM as DATA_PACKETS
from sshtunnel_mgr.sshcompat.sendfast import install as data_packets

log = logging.getLogger(__name__)

MSG_IGNORE = 2  # RFC 4253 §11.2
_EMPTY_STRING = b"\x00\x00\x00\x00"  # String(b""): the payload of asyncssh's ignore packet
# Flush at once when this much is corked: keeps the joined buffer small, and a bulk
# stream still gets many packets per system call (data packets are 32 KiB).
CORK_LIMIT = 256 * 1024
JOIN_BELOW = 16 * 1024  # cork: packets smaller than this share a write; larger go alone

# Send ciphers for which the empty-ignore countermeasure is pointless: no CBC IV chain.
_AEAD_CIPHERS = frozenset(
    {
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
    }
)
_CTR_CIPHERS = frozenset({"aes128-ctr", "aes192-ctr", "aes256-ctr"})


def countermeasure_needed(cipher: str | None) -> bool:
    """Whether asyncssh's empty ``MSG_IGNORE`` before each packet must be kept for this
    send cipher. Only known AEAD and CTR ciphers drop it; CBC, ``none`` and anything
    unrecognised keep it."""
    return cipher not in _AEAD_CIPHERS and cipher not in _CTR_CIPHERS


@dataclass(frozen=True)
class Tuning:
    """What ``tune_connection`` applied to one connection (all False: stock asyncssh)."""

    cork: bool = False
    skip_ignore: bool = False
    quiet_packet_log: bool = False
    aead_glue: bool = False
    recv_feed: bool = False
    data_packets: bool = False

    def __str__(self) -> str:
        names = (
            "cork",
            "skip_ignore",
            "quiet_packet_log",
            "aead_glue",
            "recv_feed",
            "data_packets",
        )
        return ",".join(n for n in names if getattr(self, n)) or "none"


def _check_cork() -> str:
    cls = asyncssh.SSHServerConnection
    reason = missing(cls, "_send", "_transport", "_loop", "internal_error")
    if not reason and parameters(cls._send) != ["self", "data"]:
        reason = "asyncssh's SSHConnection._send does not take (data)"
    return reason


def _check_skip_ignore() -> str:
    cls = asyncssh.SSHServerConnection
    reason = missing(cls, "send_packet", "_send_encryption", "get_extra_info")
    if not reason and parameters(cls.send_packet)[:2] != ["self", "pkttype"]:
        reason = "asyncssh's SSHConnection.send_packet does not take (pkttype, *args)"
    return reason


CORK = Shim(
    "cork",
    internals="SSHConnection._send, _transport, _loop",
    fallback="one transport write (send system call) per packet",
    check=_check_cork,
)
SKIP_IGNORE = Shim(
    "skip_ignore",
    internals="SSHConnection.send_packet, _send_encryption",
    fallback="an empty MSG_IGNORE before every packet, whatever the cipher",
    check=_check_skip_ignore,
)


def tune_connection(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> Tuning:
    """Apply every shim that fits this connection; call it from ``connection_made``.
    Never raises: a shim whose internals are missing is left out."""
    glue = _install(AEAD_GLUE, aead_glue, conn)  # first: recv_feed's reads apply it
    feed = _install(RECV_FEED, recv_feed, conn)
    if glue and not feed:
        glue = refresh_on_read(conn)
    skip = _install(SKIP_IGNORE, _skip_ignore, conn)
    tuning = Tuning(
        cork=_install(CORK, _cork, conn),
        skip_ignore=skip,
        quiet_packet_log=_install(QUIET_PACKET_LOG, quiet_packet_log, conn),
        aead_glue=glue,
        recv_feed=feed,
        # Needs both: it sends no MSG_IGNORE, and only on a send cipher the glue tuned.
        data_packets=skip and glue and _install(DATA_PACKETS, data_packets, conn),
    )
    event(log, logging.DEBUG, "asyncssh tuning", applied=str(tuning))
    return tuning


def _install(shim: Shim, apply: Callable[[Any], bool], conn: object) -> bool:
    """Check the class, then apply to the connection; False (stock) if either differs."""
    try:
        reason = checked(shim)
        if not reason:
            return apply(conn)
    except (AttributeError, TypeError) as exc:  # internals not as expected: stay stock
        reason = f"{type(exc).__name__}: {exc}"
    stepped_aside(shim.name, reason)
    return False


# 1. Cork -----------------------------------------------------------------------------
class _Cork:
    """Collects one connection's outgoing bytes and writes them once per loop pass."""

    __slots__ = ("_buf", "_conn", "_loop", "_scheduled", "_size", "_transport")

    def __init__(self, conn: Any, transport: asyncio.Transport, loop: Any) -> None:
        self._conn = conn
        self._transport = transport
        self._loop = loop
        self._buf: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def send(self, data: bytes) -> None:
        """Replaces ``SSHConnection._send``: same guard (a closed connection sends
        nothing), but the write is deferred to the end of the loop pass."""
        if not self._conn._transport:
            return
        self._buf.append(data)
        self._size += len(data)
        if self._size >= CORK_LIMIT:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._buf:
            return
        buf, self._buf, self._size = self._buf, [], 0
        # The transport object captured at set-up, not conn._transport: asyncssh clears
        # that when it force-closes, but a disconnect written just before must still go
        # out, and the abort it queued runs after this flush.
        transport = self._transport
        if transport.is_closing():
            return
        try:
            if len(buf) == 1:
                transport.write(buf[0])
            else:
                _write_runs(transport, buf)
        except ConnectionError:  # what stock ``_send`` ignores too
            pass
        except Exception:
            self._conn.internal_error()  # stock: the error closes the connection, logged


def _write_runs(transport: asyncio.Transport, buf: list[bytes]) -> None:
    """Small packets joined into one write; a big one (bulk data) written as it is, so
    its bytes are not copied once more only to be joined (the socket takes it directly,
    or the transport keeps what it did not take)."""
    small: list[bytes] = []
    for data in buf:
        if len(data) < JOIN_BELOW:
            small.append(data)
            continue
        if small:
            transport.write(small[0] if len(small) == 1 else b"".join(small))
            small = []
        transport.write(data)
    if small:
        transport.write(small[0] if len(small) == 1 else b"".join(small))


def _cork(conn: Any) -> bool:
    transport = conn._transport
    loop = conn._loop
    if not isinstance(transport, asyncio.Transport) or not callable(conn._send):
        return False
    for needed in (loop.call_soon, transport.write, transport.is_closing, conn.internal_error):
        if not callable(needed):
            return False
    conn._send = _Cork(conn, transport, loop).send
    return True


# 2. No MSG_IGNORE before each packet unless the cipher is CBC (or unknown) --------------
def _skip_ignore(conn: Any) -> bool:
    original = conn.send_packet
    conn._send_encryption  # noqa: B018 -- the internal this shim reads must exist
    if not callable(original) or not callable(conn.get_extra_info):
        return False
    seen: list[object] = [None, True]  # [send encryption object, countermeasure needed]

    def send_packet(pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,):
            # asyncssh's countermeasure (send_packet calls itself with exactly this);
            # the cipher is re-read after every key exchange.
            enc = conn._send_encryption
            if enc is not seen[0]:
                seen[0] = enc
                seen[1] = countermeasure_needed(conn.get_extra_info("send_cipher"))
            if not seen[1]:
                return
        original(pkttype, *args, **kwargs)

    conn.send_packet = send_packet
    return True
