"""Channel data packets built in one join (shim ``data_packets``).

asyncssh builds each ``SSH_MSG_CHANNEL_DATA`` packet through two ``send_packet`` layers
(the channel's, then the connection's), each adding its header with a ``bytes``
concatenation, and then the padding with two more: four copies of every byte before the
cipher sees it, and a dozen Python calls. On a connection where nothing special is going
on, this shim's channel ``send_packet`` builds the same packet (padding length, message
type, recipient channel, the data string, random padding: RFC 4253 §6, RFC 4254 §5.2) in
one ``join`` and does what the connection's ``send_packet`` would do after that: encrypt
with the current sequence number, hand it to ``_send``, count the sequence number and the
rekey bytes on. AES-GCM encrypts straight into the buffer that is sent (the glue's
``_sshtun_seal``, ``AESGCM.encrypt_into``).

The channel's ``write`` goes further while its send queue is empty: asyncssh would copy
the data into a ``bytearray`` queue, slice a packet's worth off it and wrap that in a
string, three more copies; here each packet's worth (window and the peer's maximum
packet size permitting) goes straight from the caller's bytes into the packet. What the
window does not cover is queued by asyncssh's own ``write`` as before, and anything that
must follow it (more data, EOF, close) then takes asyncssh's path in order. Extended data,
encoded channels and debug level 2 and up (asyncssh logs each write) stay stock.

"Nothing special" is checked for every packet; otherwise asyncssh's own path runs
unchanged: key exchange complete and login done (during a rekey asyncssh defers data
packets), no rekey due (by bytes or time: asyncssh starts one first), no compression,
packet logging off (``asyncssh.set_debug_level(3)``: asyncssh logs each packet), the
send cipher one ``aead_glue`` tunes (AEAD: no ``MSG_IGNORE`` countermeasure, so this
needs ``skip_ignore`` on the connection too, which drops it for the same ciphers). A new
key exchange's send object is tuned here at its first data packet, not at the next read.

asyncssh internals used: the channel's ``send_packet``, ``write``, ``_send_chan``,
``_send_buf``, ``_send_window``, ``_send_pktsize``, ``_send_state`` (each channel
is reached through the connection's ``add_channel``, as ``quiet_packet_log`` does), and
the connection's ``_auth_complete``, ``_kex_complete``, ``_compressor``,
``_rekey_bytes_sent``, ``_rekey_bytes``, ``_rekey_seconds``, ``_rekey_time``,
``_send_encryption``, ``_send_enchdrlen``, ``_send_blocksize``, ``_send_seq``, ``_send``.
Missing or different: the shim steps aside and every packet takes asyncssh's path.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import asyncssh

from sshtunnel_mgr.sshcompat import Shim, missing, parameters
from sshtunnel_mgr.sshcompat.aeadglue import tune_encryption
from sshtunnel_mgr.sshcompat.datapath import warm

MSG_CHANNEL_DATA = 94  # RFC 4254 §9
_CONN_ATTRS = (
    "_auth_complete",
    "_kex_complete",
    "_compressor",
    "_rekey_bytes_sent",
    "_rekey_bytes",
    "_rekey_seconds",
    "_rekey_time",
    "_send_encryption",
    "_send_enchdrlen",
    "_send_blocksize",
    "_send_seq",
    "_send",
    "add_channel",
)


def _check() -> str:
    # _send, add_channel and the logger's level are other shims' internals too: checked
    # on the connection at install, so that their removal names only those shims.
    reason = missing(asyncssh.SSHServerConnection, *_CONN_ATTRS[:-2])
    chan = asyncssh.SSHTCPChannel
    if not reason:
        reason = missing(chan, "send_packet", "_send_chan")
    if not reason and parameters(chan.send_packet) != ["self", "pkttype", "args"]:
        reason = "asyncssh's SSHChannel.send_packet does not take (pkttype, *args)"
    return reason


SHIM = Shim(
    "data_packets",
    internals="SSHChannel.send_packet, _send_chan; SSHConnection._send_seq, _send, "
    "_send_encryption, _rekey_*, _kex_complete, _auth_complete, _compressor",
    fallback="each data packet built by asyncssh's two send_packet layers (four copies)",
    check=_check,
)


def install(conn: Any) -> bool:
    """Give each channel ``conn`` adds the one-join data path (False: stock)."""
    for attr in _CONN_ATTRS:
        getattr(conn, attr)  # AttributeError: not the connection checked
    original_add = conn.add_channel
    if not callable(original_add) or not callable(conn._send):
        return False
    level_of = type(asyncssh.logger)
    if not isinstance(level_of.__dict__.get("_debug_level"), int):
        return False  # cannot tell whether packets are logged: asyncssh's path logs them
    urandom, monotonic, join = os.urandom, time.monotonic, b"".join

    # The send encryption object seen last; tuned?; its _sshtun_seal
    glued: list[Any] = [None, False, None]

    def fast_ok() -> bool:
        enc = conn._send_encryption
        if enc is not glued[0]:  # a new key exchange: tune it now (state stays shared)
            if getattr(conn, "_sshtun_aead_glue", False) and not warm(conn, 0):
                return False  # no transfer yet: stay stock (datapath.GLUE_AFTER)
            glued[0] = enc
            glued[1] = tune_encryption(enc) or getattr(enc, "_sshtun_glue", False)
            glued[2] = getattr(enc, "_sshtun_seal", None)
            glued[1] = glued[1] and callable(glued[2])
        return bool(
            glued[1]
            and conn._kex_complete
            and conn._auth_complete
            and not conn._compressor
            and conn._rekey_bytes_sent < conn._rekey_bytes
            and not (conn._rekey_seconds and monotonic() >= conn._rekey_time)
            and getattr(level_of, "_debug_level", 3) < 3
        )

    def emit(send_chan: int, parts: tuple[bytes | memoryview, ...], size: int) -> None:
        """One ``SSH_MSG_CHANNEL_DATA`` packet whose data string is ``parts`` (``size``
        bytes, its length prefix included), sealed and handed to ``_send``."""
        blocksize = conn._send_blocksize
        padlen = -(conn._send_enchdrlen + 5 + size) % blocksize
        if padlen < 4:
            padlen += blocksize
        packet = join(
            (
                bytes((padlen, MSG_CHANNEL_DATA)),
                send_chan.to_bytes(4, "big"),
                *parts,
                urandom(padlen),
            )
        )
        pktlen = len(packet)
        seq = conn._send_seq
        conn._send(glued[2](seq, pktlen.to_bytes(4, "big"), packet))
        conn._send_seq = (seq + 1) & 0xFFFFFFFF
        conn._rekey_bytes_sent += pktlen

    def wrap(chan: Any) -> None:
        stock = chan.send_packet
        stock_write = chan.write
        chan._send_chan  # noqa: B018 -- AttributeError: keep this channel stock
        chan._send_buf, chan._send_window, chan._send_pktsize, chan._send_state  # noqa: B018

        def send_packet(pkttype: int, *args: bytes) -> None:
            send_chan = chan._send_chan
            if pkttype != MSG_CHANNEL_DATA or len(args) != 1 or send_chan is None:
                stock(pkttype, *args)
                return
            if not fast_ok():
                stock(pkttype, *args)
                return
            body = args[0]  # String(data), from the channel's _flush_send_buf
            emit(send_chan, (body,), len(body))

        def write(data: Any, datatype: Any = None) -> None:
            send_chan = chan._send_chan
            if (
                datatype is not None
                or chan._send_buf  # queued data goes first, by asyncssh's flush
                or chan._send_state != "open"
                or chan._encoding
                or send_chan is None
                or not chan._send_window
                or not isinstance(data, bytes)
                or getattr(level_of, "_debug_level", 3) >= 2  # asyncssh logs each write
                or not fast_ok()
            ):
                stock_write(data, datatype)
                return
            view, total, done = memoryview(data), len(data), 0
            while done < total and chan._send_window and (not done or fast_ok()):
                size = min(total - done, chan._send_window, chan._send_pktsize)
                emit(send_chan, (size.to_bytes(4, "big"), view[done : done + size]), 4 + size)
                chan._send_window -= size
                done += size
            if done < total:  # the window is spent (or a rekey is due): asyncssh queues it
                stock_write(view[done:])

        chan.send_packet = send_packet
        chan.write = write

    def add_channel(chan: Any) -> Any:
        with contextlib.suppress(AttributeError, TypeError):
            wrap(chan)  # a channel without the internals keeps asyncssh's path
        return original_add(chan)

    conn.add_channel = add_channel
    return True
