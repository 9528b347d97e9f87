"""The server name (SNI) in a TLS ClientHello, read from the bytes a client sent (pure).

The bastion's HTTPS front reads only this: it never terminates TLS. ``read_hello(data,
max_bytes)`` looks at everything received so far and answers one of:

- ``NEED_MORE``: the ClientHello is not complete yet (a client may send it in tiny TCP
  segments, and TLS may fragment it over several handshake records);
- ``Hello(sni)``: complete; ``sni`` is the ``host_name`` the client asked for, or ``None``
  when it sent no server_name extension;
- ``Bad(reason)``: not a TLS ClientHello, malformed, or larger than ``max_bytes``.

Nothing here is trusted: every length is checked against what is there, and the answer for
a prefix of a valid hello is always ``NEED_MORE`` (never a wrong name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

RECORD_HANDSHAKE: Final = 22
HANDSHAKE_CLIENT_HELLO: Final = 1
EXT_SERVER_NAME: Final = 0
NAME_HOST: Final = 0
MAX_RECORD: Final = 16384 + 2048  # TLSCiphertext's cap; a plaintext record is 2^14
MAX_RECORDS: Final = 64  # a ClientHello cut into more records than this is refused
# A fatal unrecognized_name (112) alert, as a TLS 1.0 record (every client takes it).
ALERT_UNRECOGNIZED_NAME: Final = bytes([21, 3, 1, 0, 2, 2, 112])


@dataclass(frozen=True)
class Hello:
    sni: str | None


@dataclass(frozen=True)
class Bad:
    reason: str


class _NeedMore:
    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()
HelloResult = Hello | Bad | _NeedMore


class _Malformed(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Malformed("a length runs past its end")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.number(length_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _handshake_bytes(data: bytes) -> tuple[bytes, bool] | Bad:
    """The handshake bytes in ``data`` (a record's as far as it came); whether one is cut."""
    out = bytearray()
    pos = records = 0
    while pos < len(data):
        records += 1
        if records > MAX_RECORDS:
            return Bad(f"a ClientHello in more than {MAX_RECORDS} records")
        if data[pos] != RECORD_HANDSHAKE:
            if pos == 0:
                return Bad("not a TLS handshake")
            return Bad("a non-handshake record inside the ClientHello")
        if len(data) - pos < 5:
            return bytes(out), True
        if data[pos + 1] != 3:
            return Bad("not a TLS record version")
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0 or length > MAX_RECORD:
            return Bad(f"a handshake record of {length} bytes")
        if len(data) - pos - 5 < length:  # cut: its first bytes count all the same
            out += data[pos + 5 :]
            return bytes(out), True
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out), False


def next_boundary(data: bytes) -> int:
    """How long ``data`` must grow before ``read_hello`` can say more than ``NEED_MORE``
    again: the end of the first record not complete yet (or of its header). A reader that
    waits for it parses a hello once per record, not once per TCP segment."""
    pos = 0
    while len(data) - pos >= 5:
        end = pos + 5 + int.from_bytes(data[pos + 3 : pos + 5], "big")
        if end > len(data):
            return end
        pos = end
    return pos + 5


def read_hello(data: bytes, max_bytes: int = 16384) -> HelloResult:
    """What ``data`` (everything the client sent so far) says: see the module doc."""
    found = _handshake_bytes(data)
    if isinstance(found, Bad):
        return found
    handshake, _cut = found
    if len(handshake) >= 1 and handshake[0] != HANDSHAKE_CLIENT_HELLO:
        return Bad("the first handshake message is not a ClientHello")
    if len(handshake) < 4:
        return _more(data, max_bytes)
    length = int.from_bytes(handshake[1:4], "big")
    if length > max_bytes:
        return Bad(f"a ClientHello of {length} bytes (more than {max_bytes})")
    if len(handshake) < 4 + length:
        return _more(data, max_bytes)
    try:
        return Hello(_server_name(handshake[4 : 4 + length]))
    except _Malformed as exc:
        return Bad(f"a malformed ClientHello: {exc}")


def _more(data: bytes, max_bytes: int) -> HelloResult:
    # Record headers add 5 bytes per record, and there are at most MAX_RECORDS of them.
    if len(data) > max_bytes + 4 + 5 * MAX_RECORDS:
        return Bad(f"no complete ClientHello in {len(data)} bytes")
    return NEED_MORE


def _server_name(body: bytes) -> str | None:
    r = _Reader(body)
    if r.number(1) != 3:
        raise _Malformed("not a TLS version")
    r.take(1 + 32)  # minor version, random
    if len(r.vector(1)) > 32:
        raise _Malformed("a session id longer than 32 bytes")
    suites = r.vector(2)
    if not suites or len(suites) % 2:
        raise _Malformed("an empty or odd cipher suite list")
    if not r.vector(1):
        raise _Malformed("no compression methods")
    if r.left == 0:
        return None  # no extensions at all
    ext = _Reader(r.vector(2))
    if r.left:
        raise _Malformed("bytes after the extensions")
    seen: set[int] = set()
    sni: str | None = None
    while ext.left:
        kind, value = ext.number(2), ext.vector(2)
        if kind in seen:
            raise _Malformed(f"extension {kind} twice")
        seen.add(kind)
        if kind == EXT_SERVER_NAME:
            sni = _host_name(value)
    return sni


def _host_name(value: bytes) -> str:
    r = _Reader(value)
    names = _Reader(r.vector(2))
    if r.left or not names.left:
        raise _Malformed("a bad server_name list")
    host: str | None = None
    while names.left:
        kind, name = names.number(1), names.vector(2)
        if kind != NAME_HOST:
            continue
        if host is not None:
            raise _Malformed("two host names")
        if not name or not all(0x21 <= b < 0x7F for b in name):
            raise _Malformed("a host name that is empty or not printable ASCII")
        host = name.decode("ascii")
    if host is None:
        raise _Malformed("a server_name with no host name")
    return host
