"""Fewer copies and objects per packet on asyncssh's receive path and in its AEAD glue.

Counted with callgrind (``benchmarks/instr_per_byte.py``), each byte a tuned connection
moves was copied about 24 times in user space; most of the copies are Python ``bytes``
slices and concatenations in asyncssh's per-packet code. Two shims remove the biggest
ones, per connection (instance attributes only, nothing at import):

1. **Receive in packet-sized pieces** (shim ``recv_feed``). asyncssh appends each read
   (up to 256 KiB) to a ``bytes`` buffer and cuts every packet off its front, which copies
   all that follows: twice per packet, so a read of eight 32 KiB packets is copied about
   nine times. ``data_received`` here hands asyncssh's own parser (``_recv_pkthdr``,
   ``_recv_packet``: unchanged, they decrypt, check and dispatch) exactly the bytes its
   next step needs, so the buffer holds one packet at most and each byte is cut once. In
   any state it does not know (the version line, a packet being handled asynchronously)
   or when a read holds less than the next step needs, the rest goes to asyncssh's own
   loop as before. Exceptions are handled as asyncssh's ``_recv_data`` does; the
   keepalive timer is reset once per read, as there. One difference: once the connection
   is closed (its transport gone) while a read is being parsed, the rest of that read is
   dropped at once instead of being parsed for a connection that no longer sends. At a
   packet boundary, a GCM channel data packet wholly in the read is taken by
   ``recvfast.py`` first (one decrypt straight from the read, one copy to the channel).
2. **AEAD glue** (shim ``aead_glue``). For ``aes*-gcm@openssh.com`` and
   ``chacha20-poly1305@openssh.com`` asyncssh builds new cipher objects per packet and
   copies the ciphertext to split and re-join the tag. ``aeadglue.py`` gives the
   connection's encryption objects methods that keep one object per key and copy once;
   the objects of a new key exchange are found on the next read and tuned then (until
   then they run stock). Other ciphers (CTR, CBC, ETM MACs) are left alone.

Same bytes on the wire: ``tests/integration/test_sshtuning_wire.py`` moves random data
both ways through tuned bastion and agent and real OpenSSH, for both ciphers, with
rekeying, and compares checksums; ``tests/unit/test_datapath.py`` checks the glue against
asyncssh's own encryption objects packet by packet.

asyncssh internals used: ``SSHConnection.data_received``, ``_inpbuf``, ``_recv_handler``,
``_recv_pkthdr``, ``_recv_packet``, ``_recv_blocksize``, ``_pktlen``, ``_recv_macsize``,
``_reset_keepalive_timer``, ``_send_disconnect``, ``_force_close``, ``_transport``,
``internal_error`` (recv_feed); ``_send_encryption``, ``_recv_encryption``,
``asyncssh.encryption.GCMEncryption``/``ChachaEncryption`` with their ``_cipher``,
``GCMCipher._key``/``_iv``, ``ChachaCipher._key``/``_adkey`` and the ``encrypt_packet``/
``decrypt_packet`` signatures (aead_glue). Anything different: that shim steps aside and
the connection keeps asyncssh's own code.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Any

import asyncssh

from sshtunnel_mgr.sshcompat import Shim, missing, parameters, recvfast, stepped_aside
from sshtunnel_mgr.sshcompat.aeadglue import encryption_module, tune_encryption


# 1. recv_feed ----------------------------------------------------------------------------
def _check_recv_feed() -> str:
    cls = asyncssh.SSHServerConnection
    reason = missing(
        cls,
        "data_received",
        "_inpbuf",
        "_recv_handler",
        "_recv_pkthdr",
        "_recv_packet",
        "_recv_blocksize",
        "_pktlen",
        "_recv_macsize",
        "_reset_keepalive_timer",
        "_transport",
    )  # _send_disconnect, _force_close, internal_error: checked on the connection
    if not reason and parameters(cls.data_received)[:2] != ["self", "data"]:
        reason = "asyncssh's SSHConnection.data_received does not take (data, datatype)"
    if not reason and (parameters(cls._recv_pkthdr), parameters(cls._recv_packet)) != (
        ["self"],
        ["self"],
    ):
        reason = "asyncssh's _recv_pkthdr/_recv_packet take arguments"
    return reason


RECV_FEED = Shim(
    "recv_feed",
    internals="SSHConnection.data_received, _inpbuf, _recv_handler, _recv_pkthdr, "
    "_recv_packet, _recv_blocksize, _pktlen, _recv_macsize",
    fallback="each read appended to one bytes buffer, every packet cut off its front",
    check=_check_recv_feed,
)


def install_recv_feed(conn: Any) -> bool:
    """Replace ``conn.data_received`` by the packet-sized feeder (False: left stock)."""
    cls = type(conn)
    pkthdr = getattr(cls, "_recv_pkthdr", None)
    packet = getattr(cls, "_recv_packet", None)
    if not callable(pkthdr) or not callable(packet) or not isinstance(conn._inpbuf, bytes):
        return False
    for needed in (
        conn._reset_keepalive_timer,
        conn._send_disconnect,
        conn._force_close,
        conn.internal_error,
    ):
        if not callable(needed):
            return False
    disconnect_error = asyncssh.DisconnectError
    aead_check = _aead_refresh(conn)
    # Only glued ciphers have what recvfast needs; it keeps no state per connection.
    take = recvfast.take if aead_check is not None and recvfast.usable(conn) else None

    def data_received(data: bytes, datatype: Any = None) -> None:
        conn._reset_keepalive_timer()
        if aead_check is not None:
            aead_check(len(data))
        try:
            _feed(conn, data, pkthdr, packet, take)
        except disconnect_error as exc:  # as asyncssh's _recv_data
            conn._send_disconnect(exc.code, exc.reason, exc.lang)
            conn._force_close(exc)
        except Exception:  # as asyncssh's _recv_data: logged, the connection closed
            conn.internal_error()

    conn.data_received = data_received
    return True


def _feed(
    conn: Any,
    data: bytes,
    pkthdr: Callable[..., Any],
    packet: Callable[..., Any],
    take: Callable[[Any, bytes, int, int], int] | None = None,
) -> None:
    """Give asyncssh's parser one step's bytes at a time; the rest to its own loop. At a
    packet boundary, ``take`` (recvfast.py) may take a whole channel data packet first."""
    pos, end = 0, len(data)
    while pos < end:
        handler = conn._recv_handler
        func = getattr(handler, "__func__", None)
        inp = conn._inpbuf
        if take is not None and func is pkthdr and not inp:
            used = take(conn, data, pos, end)
            if used:
                pos += used
                if not conn._transport:
                    return  # closed while delivering: nothing more will be answered
                continue
        if func is pkthdr:
            need = conn._recv_blocksize - len(inp)
        elif func is packet:
            need = 4 + conn._pktlen + conn._recv_macsize - conn._recv_blocksize - len(inp)
        else:
            need = 0  # a state this does not know: asyncssh's own loop
        if need <= 0 or end - pos <= need:
            conn._inpbuf = inp + (data[pos:] if pos else data)
            while conn._inpbuf and conn._recv_handler():
                pass
            return
        conn._inpbuf = inp + data[pos : pos + need]
        pos += need
        if not handler():
            # Went asynchronous: asyncssh resumes from _inpbuf once the packet is handled.
            conn._inpbuf += data[pos:]
            return
        if conn._inpbuf:  # not a state this knows after all: asyncssh's own loop
            conn._inpbuf += data[pos:]
            while conn._inpbuf and conn._recv_handler():
                pass
            return
        if not conn._transport:
            return  # closed while parsing: nothing more will be sent or answered


# 2. aead_glue ----------------------------------------------------------------------------
def _check_aead_glue() -> str:
    mod = encryption_module()
    gcm, chacha = mod.GCMEncryption, mod.ChachaEncryption
    reason = missing(asyncssh.SSHServerConnection, "_send_encryption", "_recv_encryption")
    for cls in (gcm, chacha):
        if reason:
            break
        reason = missing(cls, "_cipher")
        if not reason and parameters(cls.encrypt_packet) != ["self", "seq", "header", "packet"]:
            reason = f"asyncssh's {cls.__name__}.encrypt_packet does not take (seq, header, packet)"
        if not reason and parameters(cls.decrypt_packet) != [
            "self",
            "seq",
            "first",
            "rest",
            "header_len",
            "mac",
        ]:
            reason = f"asyncssh's {cls.__name__}.decrypt_packet has other parameters"
    if not reason:
        from asyncssh.crypto import ChachaCipher, GCMCipher

        reason = missing(GCMCipher, "_key", "_iv") or missing(ChachaCipher, "_key", "_adkey")
    return reason


AEAD_GLUE = Shim(
    "aead_glue",
    internals="SSHConnection._send_encryption/_recv_encryption, GCMEncryption, "
    "ChachaEncryption, GCMCipher._key/_iv, ChachaCipher._key/_adkey",
    fallback="a new AESGCM per packet and three copies to split the tag (GCM); three "
    "ChaCha20 objects per packet (chacha20-poly1305)",
    check=_check_aead_glue,
)


# A connection is tuned once it moves this much within GLUE_WINDOW seconds: the glue's
# AESGCM objects cost about 2.5 KiB each (cryptography 50 keeps an initialised context), so
# an idle agent link (keepalives only) stays stock and small; a transfer pays the stock
# path for its first 256 KiB only.
GLUE_AFTER = 256 * 1024
GLUE_WINDOW = 10.0


def warm(conn: Any, read: int) -> bool:
    """Whether ``conn`` now carries a transfer (and from then on): GLUE_AFTER bytes read
    (``read``: this read's size) and sent within GLUE_WINDOW seconds. Called per read by
    aead_glue and per data packet by sendfast, until it says yes."""
    if conn._sshtun_hot:
        return True
    sent = float(getattr(conn, "_rekey_bytes_sent", 0))
    now = monotonic()
    window = getattr(conn, "_sshtun_window", None)  # bytes read, send counter, clock
    if window is None or now - window[2] > GLUE_WINDOW or sent < window[1]:
        window = conn._sshtun_window = [0.0, sent, now]  # a new window (or a rekey)
    window[0] += read
    if window[0] + sent - window[1] >= GLUE_AFTER:
        conn._sshtun_hot = True
        del conn._sshtun_window
        return True
    return False


def _aead_refresh(conn: Any) -> Callable[[int], None] | None:
    """A function that tunes the connection's current encryption objects once each (called
    per read with its size, once the connection carries a transfer); None when aead_glue
    is not installed on this connection."""
    if not getattr(conn, "_sshtun_aead_glue", False):
        return None
    seen: list[object] = [None, None, True]  # send and recv objects tuned; still on

    def refresh(size: int) -> None:
        if not seen[2] or (not conn._sshtun_hot and not warm(conn, size)):
            return
        send, recv = conn._send_encryption, conn._recv_encryption
        if send is seen[0] and recv is seen[1]:
            return
        seen[0], seen[1] = send, recv
        try:
            tune_encryption(send)
            tune_encryption(recv)
        except (AttributeError, TypeError) as exc:  # not the objects checked: stay stock
            seen[2] = False
            stepped_aside("aead_glue", f"{type(exc).__name__}: {exc}")

    return refresh


def install_aead_glue(conn: Any) -> bool:
    """Mark ``conn``: its reads tune each new encryption object (from recv_feed's
    ``data_received``; ``refresh_on_read`` when recv_feed is not installed)."""
    conn._send_encryption  # noqa: B018 -- the internals this shim reads must exist
    conn._recv_encryption  # noqa: B018
    conn._sshtun_aead_glue = True
    conn._sshtun_hot = False  # until it carries a transfer (_aead_refresh)
    return True


def refresh_on_read(conn: Any) -> bool:
    """aead_glue without recv_feed: wrap asyncssh's own ``data_received``."""
    refresh = _aead_refresh(conn)
    original = conn.data_received
    if refresh is None or not callable(original):
        return False

    def data_received(data: bytes, datatype: Any = None) -> None:
        refresh(len(data))
        original(data, datatype)

    conn.data_received = data_received
    return True
