"""Channel data packets taken from a read in one decrypt (part of shim ``recv_feed``).

asyncssh receives a packet in five copies before a channel's session sees the data: the
read is cut into its input buffer, the rest of the packet cut off that, the ciphertext
joined with its tag, the payload cut out of the plaintext, and the data string cut out
of the payload. On a connection moving bulk data nearly every packet is an
``SSH_MSG_CHANNEL_DATA`` (RFC 4254 §5.2) whose every byte is in the read at hand. For
those, ``taker`` decrypts straight from the read (AES-GCM: the length is in clear, RFC
5647 / OpenSSH's PROTOCOL) and hands the channel one copy of its data, doing what
asyncssh's ``_recv_packet``/``_process_data``/``_finish_recv_packet`` do for such a
packet: window check, ``_accept_data`` (delivery or buffering, window adjust), sequence
number, ``_auth_final``.

Anything else goes to asyncssh unchanged, with the cipher state as it was: a packet that
is not channel data (decrypted here, then left for asyncssh to decrypt again: rare and
small), one not wholly in this read, a tag that does not verify, a channel that is not
open or not known, data over the window, a malformed packet (asyncssh raises its own
error), ciphers other than aes-gcm (ChaCha20-Poly1305 encrypts the length), compression,
and debug levels at which asyncssh logs each packet or each data delivery.

asyncssh internals used: ``SSHConnection._recv_encryption``, ``_recv_seq``,
``_max_recv_pktlen``, ``_channels``, ``_auth_complete``, ``_decompressor``,
``_auth_final``; ``SSHChannel._recv_state``, ``_recv_window``, ``_accept_data``; the glue's
``_sshtun_open`` (datapath.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncssh

MSG_CHANNEL_DATA = 94  # RFC 4254 §9
_TAG = 16
_HEAD = 10  # padding length, message type, recipient channel, data length
_CONN_ATTRS = (
    "_recv_encryption",
    "_recv_seq",
    "_max_recv_pktlen",
    "_channels",
    "_auth_complete",
    "_decompressor",
)

Taker = Callable[[bytes, int, int], int]


def taker(conn: Any) -> Taker | None:
    """For ``conn``: a function that takes the channel data packet starting at ``pos`` of
    a read (``end``: where the read ends) and returns the bytes it used, or 0 when
    asyncssh has to handle what is there. None: this connection lacks the internals."""
    for attr in _CONN_ATTRS:
        if not hasattr(conn, attr):
            return None
    base_accept = getattr(asyncssh.SSHTCPChannel, "_accept_data", None)
    if base_accept is None:
        return None
    logger_class = type(asyncssh.logger)
    fast_types: dict[type, bool] = {}

    def plain_channel(chan: Any) -> bool:
        kind = type(chan)
        known = fast_types.get(kind)
        if known is None:  # a channel class with its own _accept_data (TUN/TAP) stays stock
            known = fast_types[kind] = getattr(kind, "_accept_data", None) is base_accept
        return known

    def take(data: bytes, pos: int, end: int) -> int:
        enc = conn._recv_encryption
        opener = getattr(enc, "_sshtun_open", None)
        if opener is None or end - pos < 4 + _HEAD + _TAG:
            return 0
        pktlen = int.from_bytes(data[pos : pos + 4], "big")
        size = 4 + pktlen + _TAG
        if (
            size > end - pos
            or pktlen > conn._max_recv_pktlen
            or not conn._auth_complete
            or conn._decompressor
            or getattr(logger_class, "_debug_level", 3) >= 2
        ):
            return 0
        view = memoryview(data)
        opened = opener(view[pos : pos + 4], view[pos + 4 : pos + size])
        if opened is None:
            return 0  # asyncssh decrypts it again and raises its MAC error
        plain, commit = opened
        if plain[1] != MSG_CHANNEL_DATA or pktlen < _HEAD + 4:
            return 0
        chan = conn._channels.get(int.from_bytes(plain[2:6], "big"))
        datalen = int.from_bytes(plain[6:10], "big")
        if (
            chan is None
            or _HEAD + datalen + plain[0] != pktlen  # not exactly one string and its padding
            or datalen == 0
            or not plain_channel(chan)
            or chan._recv_state != "open"
            or datalen > chan._recv_window
        ):
            return 0
        commit()  # the GCM invocation counter moves on only for a packet taken here
        conn._recv_seq = (conn._recv_seq + 1) & 0xFFFFFFFF
        conn._auth_final = True
        chan._accept_data(plain[_HEAD : _HEAD + datalen])
        return size

    return take
