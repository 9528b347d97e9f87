"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), built and parsed as plain
bytes: no sockets. The agent sends one to a tunnel's local target before any data, so the
target learns the real client address (the ``forwarded-tcpip`` channel's originator).

``header(version, src, dst)``: ``src``/``dst`` are ``(ip, port)``; with no usable source
address (``None``, an empty or non-IP originator) v1 says ``PROXY UNKNOWN`` and v2 sends
the ``LOCAL`` command (the target then uses the connection's own addresses). Addresses of
different families are both written as IPv6 (an IPv4 one as ``::ffff:a.b.c.d``); an
IPv4-mapped IPv6 address is written as the IPv4 address it maps.

``parse(data)`` reads one header back: ``(Proxied | None, header length)``, or
``(None, 0)`` when ``data`` does not start with a PROXY header; ``ValueError`` for a
malformed one. Used by tests as the receiving side, and by anything that accepts PROXY.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

Version = Literal["v1", "v2"]
Endpoint = tuple[str, int]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the spec's longest v1 line, CRLF included
_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL
_TCP4 = 0x11
_TCP6 = 0x21


@dataclass(frozen=True)
class Proxied:
    """What a header says: the client's (source) and the destination endpoint."""

    src: Endpoint
    dst: Endpoint


def ip_of(text: str) -> IPAddress | None:
    """An originator host as an IP address (a zone id dropped, an IPv4-mapped IPv6
    address unmapped), or None when it is not one."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _pair(
    src: Endpoint | None, dst: Endpoint | None
) -> tuple[IPAddress, int, IPAddress, int] | None:
    if src is None or dst is None:
        return None
    s, d = ip_of(src[0]), ip_of(dst[0])
    if s is None or d is None or not (0 <= src[1] <= 65535 and 0 <= dst[1] <= 65535):
        return None
    if s.version != d.version:
        s, d = _as_v6(s), _as_v6(d)
    return s, src[1], d, dst[1]


def _as_v6(addr: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(addr, ipaddress.IPv6Address):
        return addr
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)


def v1(src: Endpoint | None, dst: Endpoint | None) -> bytes:
    found = _pair(src, dst)
    if found is None:
        return b"PROXY UNKNOWN\r\n"
    s, sport, d, dport = found
    family = "TCP4" if s.version == 4 else "TCP6"
    return f"PROXY {family} {s} {d} {sport} {dport}\r\n".encode("ascii")


def v2(src: Endpoint | None, dst: Endpoint | None) -> bytes:
    found = _pair(src, dst)
    if found is None:
        return V2_SIGNATURE + bytes([_V2_LOCAL, 0x00]) + b"\x00\x00"
    s, sport, d, dport = found
    body = s.packed + d.packed + struct.pack("!HH", sport, dport)
    family = _TCP4 if s.version == 4 else _TCP6
    return V2_SIGNATURE + bytes([_V2_PROXY, family]) + struct.pack("!H", len(body)) + body


def header(version: Version, src: Endpoint | None, dst: Endpoint | None) -> bytes:
    return v1(src, dst) if version == "v1" else v2(src, dst)


def parse(data: bytes) -> tuple[Proxied | None, int]:
    """One header at the start of ``data``: (what it says, its length). ``(None, n)`` for
    UNKNOWN/LOCAL; ``(None, 0)`` when ``data`` holds no PROXY header or not all of it yet
    is there (check ``len(data)`` against the caller's limit)."""
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(b"PROXY "):
        return _parse_v1(data)
    return None, 0


def _parse_v1(data: bytes) -> tuple[Proxied | None, int]:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ValueError("PROXY v1 line longer than 107 bytes")
        return None, 0
    words = data[:end].decode("ascii").split(" ")
    if words[1] == "UNKNOWN":
        return None, end + 2
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ValueError(f"bad PROXY v1 line {data[:end]!r}")
    src, dst = ipaddress.ip_address(words[2]), ipaddress.ip_address(words[3])
    want = 4 if words[1] == "TCP4" else 6
    if src.version != want or dst.version != want:
        raise ValueError(f"PROXY v1 addresses are not {words[1]}")
    ports = [_port(w) for w in words[4:6]]
    return Proxied((str(src), ports[0]), (str(dst), ports[1])), end + 2


def _port(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ValueError(f"bad PROXY v1 port {text!r}")
    return int(text)


def _parse_v2(data: bytes) -> tuple[Proxied | None, int]:
    if len(data) < 16:
        return None, 0
    command, family = data[12], data[13]
    (length,) = struct.unpack("!H", data[14:16])
    if len(data) < 16 + length:
        return None, 0
    if command == _V2_LOCAL:
        return None, 16 + length
    if command != _V2_PROXY:
        raise ValueError(f"bad PROXY v2 version/command byte {command:#04x}")
    body = data[16 : 16 + length]
    size = {_TCP4: 4, _TCP6: 16}.get(family)
    if size is None:
        return None, 16 + length  # UNSPEC, UDP, UNIX: no TCP source to report
    if length < 2 * size + 4:
        raise ValueError("PROXY v2 address block too short")
    src = ipaddress.ip_address(body[:size])
    dst = ipaddress.ip_address(body[size : 2 * size])
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    return Proxied((str(src), sport), (str(dst), dport)), 16 + length
