"""Channel data packets taken from a read in one decrypt (part of shim ``recv_feed``).

asyncssh receives a packet in five copies before a channel's session sees the data: the
read is cut into its input buffer, the rest of the packet cut off that, the ciphertext
joined with its tag, the payload cut out of the plaintext, and the data string cut out
of the payload. On a connection moving bulk data nearly every packet is an
``SSH_MSG_CHANNEL_DATA`` (RFC 4254 §5.2) whose every byte is in the read at hand. For
those, ``take`` decrypts straight from the read (AES-GCM: the length is in clear, RFC
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

_LOGGER_CLASS = type(asyncssh.logger)  # its _debug_level: 2+ logs each data delivery
# Channel classes whose _accept_data is SSHChannel's own (a TUN/TAP channel strips a
# header there and stays stock); filled as classes are met, shared by all connections.
_PLAIN: dict[type, bool] = {}


def usable(conn: Any) -> bool:
    """Whether ``conn`` has the internals ``take`` reads (checked once per connection; the
    function itself keeps no per-connection state: an idle agent link costs nothing)."""
    return all(hasattr(conn, attr) for attr in _CONN_ATTRS) and callable(
        getattr(asyncssh.SSHTCPChannel, "_accept_data", None)
    )


def _plain_channel(chan: Any) -> bool:
    kind = type(chan)
    known = _PLAIN.get(kind)
    if known is None:
        base = getattr(asyncssh.SSHTCPChannel, "_accept_data", None)
        known = _PLAIN[kind] = getattr(kind, "_accept_data", None) is base
    return known


def take(conn: Any, data: bytes, pos: int, end: int) -> int:
    """Take the channel data packet starting at ``pos`` of a read (``end``: where the read
    ends) for ``conn``; the bytes used, or 0 when asyncssh has to handle what is there."""
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
        or getattr(_LOGGER_CLASS, "_debug_level", 3) >= 2
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
        or not _plain_channel(chan)
        or chan._recv_state != "open"
        or datalen > chan._recv_window
    ):
        return 0
    commit()  # the GCM invocation counter moves on only for a packet taken here
    conn._recv_seq = (conn._recv_seq + 1) & 0xFFFFFFFF
    conn._auth_final = True
    chan._accept_data(plain[_HEAD : _HEAD + datalen])
    return size
