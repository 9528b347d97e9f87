"""PROXY protocol headers, byte-exact against HAProxy's spec (proxy-protocol.txt)."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.core import proxyproto
from sshtunnel_mgr.core.proxyproto import Proxied

SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # the spec's 12-byte signature

V1 = [
    # (src, dst, header) -- the spec's own examples first
    (
        ("255.255.255.255", 65535),
        ("255.255.255.255", 65535),
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
    ),
    (
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    ),
    (
        ("192.168.0.1", 56324),
        ("192.168.0.11", 443),
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    ),
    (("2001:db8::1", 40000), ("::", 443), b"PROXY TCP6 2001:db8::1 :: 40000 443\r\n"),
    # an IPv4-mapped source is the IPv4 address it maps
    (
        ("::ffff:198.51.100.7", 1234),
        ("0.0.0.0", 443),
        b"PROXY TCP4 198.51.100.7 0.0.0.0 1234 443\r\n",
    ),
    # mixed families: both as IPv6
    (("198.51.100.7", 1234), ("::", 443), b"PROXY TCP6 ::ffff:c633:6407 :: 1234 443\r\n"),
    # a zone id is dropped
    (("fe80::1%eth0", 5), ("::", 443), b"PROXY TCP6 fe80::1 :: 5 443\r\n"),
    # no usable source
    (None, ("0.0.0.0", 443), b"PROXY UNKNOWN\r\n"),
    (("", 0), ("0.0.0.0", 443), b"PROXY UNKNOWN\r\n"),
    (("client.example", 5), ("0.0.0.0", 443), b"PROXY UNKNOWN\r\n"),
]


@pytest.mark.parametrize(("src", "dst", "expected"), V1)
def test_v1(src: tuple[str, int] | None, dst: tuple[str, int], expected: bytes) -> None:
    got = proxyproto.header("v1", src, dst)
    assert got == expected
    assert len(got) <= proxyproto.V1_MAX


V2 = [
    (
        ("192.168.0.1", 56324),
        ("192.168.0.11", 443),
        SIG + b"\x21\x11\x00\x0c" + bytes([192, 168, 0, 1, 192, 168, 0, 11]) + b"\xdc\x04\x01\xbb",
    ),
    (
        ("2001:db8::1", 40000),
        ("::", 443),
        SIG
        + b"\x21\x21\x00\x24"
        + bytes.fromhex("20010db8000000000000000000000001")
        + bytes(16)
        + b"\x9c\x40\x01\xbb",
    ),
    (
        ("::ffff:10.0.0.1", 1),
        ("0.0.0.0", 80),
        SIG + b"\x21\x11\x00\x0c" + bytes([10, 0, 0, 1, 0, 0, 0, 0]) + b"\x00\x01\x00\x50",
    ),
    # LOCAL, family UNSPEC, no address block
    (None, ("0.0.0.0", 443), SIG + b"\x20\x00\x00\x00"),
    (("not-an-ip", 9), ("0.0.0.0", 443), SIG + b"\x20\x00\x00\x00"),
]


@pytest.mark.parametrize(("src", "dst", "expected"), V2)
def test_v2(src: tuple[str, int] | None, dst: tuple[str, int], expected: bytes) -> None:
    assert proxyproto.header("v2", src, dst) == expected


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("src", "dst"),
    [(("203.0.113.9", 51000), ("0.0.0.0", 443)), (("2001:db8::7", 2), ("::", 443))],
)
def test_round_trip(
    version: proxyproto.Version, src: tuple[str, int], dst: tuple[str, int]
) -> None:
    data = proxyproto.header(version, src, dst)
    assert proxyproto.parse(data + b"GET / HTTP/1.1\r\n") == (Proxied(src, dst), len(data))


def test_parse_unknown_and_partial() -> None:
    assert proxyproto.parse(b"PROXY UNKNOWN\r\nrest") == (None, 15)
    assert proxyproto.parse(SIG + b"\x20\x00\x00\x00") == (None, 16)
    assert proxyproto.parse(b"GET / HTTP/1.1\r\n") == (None, 0)
    assert proxyproto.parse(b"PROXY TCP4 1.2.3.4") == (None, 0)  # not all there yet
    assert proxyproto.parse(SIG + b"\x21\x11\x00\x0c\x01") == (None, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"x" * 120,
        SIG + b"\x31\x11\x00\x0c" + bytes(12),
        SIG + b"\x21\x11\x00\x04" + bytes(4),
    ],
)
def test_parse_refuses_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        proxyproto.parse(data)
