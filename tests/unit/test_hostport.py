"""host:port, parsed in one place (sshtunnel_mgr/core/hostport.py), as tables."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.core.hostport import (
    InvalidAddress,
    join_host_port,
    parse_port,
    split_host_port,
    split_name_port,
)


@pytest.mark.parametrize(
    ("text", "default", "allow_zero", "expected"),
    [
        ("host", 22, False, ("host", 22)),
        ("host:2222", 22, False, ("host", 2222)),
        (" host:2222 ", 22, False, ("host", 2222)),
        ("127.0.0.1:1", 22, False, ("127.0.0.1", 1)),
        ("[::1]:2222", 22, False, ("::1", 2222)),
        ("[::1]", 22, False, ("::1", 22)),
        ("[::1]:", 22, False, ("::1", 22)),
        ("::1", 22, False, ("::1", 22)),  # bare IPv6: all host
        ("fe80::1%eth0", 2222, False, ("fe80::1%eth0", 2222)),
        ("[fe80::1%eth0]:2200", 22, False, ("fe80::1%eth0", 2200)),
        ("0.0.0.0:0", 22, True, ("0.0.0.0", 0)),
        ("host:65535", 22, False, ("host", 65535)),
        ("host:022", 22, False, ("host", 22)),
        ("host", 0, False, ("host", 0)),  # the default is the caller's, unchecked
    ],
)
def test_split_host_port(
    text: str, default: int, allow_zero: bool, expected: tuple[str, int]
) -> None:
    assert split_host_port(text, default, allow_zero) == expected


@pytest.mark.parametrize(
    ("text", "allow_zero", "message"),
    [
        ("", False, "'' has no host"),
        ("  ", False, "'' has no host"),
        (":22", False, "':22' has no host"),
        ("[]:22", False, "'[]:22' has no host"),
        ("host:0", False, "'host:0': port must be 1-65535"),
        ("host:65536", True, "'host:65536': port must be 0-65535"),
        ("host:ssh", False, "'host:ssh': port must be 1-65535"),
        ("host:-1", False, "'host:-1': port must be 1-65535"),
        ("host:+22", False, "'host:+22': port must be 1-65535"),
        ("host:\u0662\u0662", False, "'host:\u0662\u0662': port must be 1-65535"),
        ("[::1]:x", False, "'[::1]:x': port must be 1-65535"),
        ("host:*", False, "'host:*': port must be 1-65535"),
    ],
)
def test_split_host_port_errors(text: str, allow_zero: bool, message: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        split_host_port(text, 22, allow_zero)
    assert str(info.value) == message and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("homebox:22", ("homebox", 22)),
        (" homebox:2222 ", ("homebox", 2222)),
        ("*.home.example.com:*", ("*.home.example.com", None)),
        ("[::1]:22", ("[::1]", 22)),  # names hold no colon: the caller refuses this name
    ],
)
def test_split_name_port(text: str, expected: tuple[str, int | None]) -> None:
    assert split_name_port(text) == expected


@pytest.mark.parametrize(
    ("text", "allow_any", "message"),
    [
        ("homebox", True, "'homebox' must be name:port (port may be *)"),
        ("homebox", False, "'homebox' must be name:port"),
        (":22", True, "':22' must be name:port (port may be *)"),
        ("homebox:", True, "'homebox:': port must be 1-65535 or *"),
        ("homebox:0", True, "'homebox:0': port must be 1-65535 or *"),
        ("homebox:*", False, "'homebox:*': port must be 1-65535"),
    ],
)
def test_split_name_port_errors(text: str, allow_any: bool, message: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        split_name_port(text, allow_any=allow_any)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "allow_zero", "allow_any", "expected"),
    [("1", False, False, 1), ("0", True, False, 0), ("*", False, True, None)],
)
def test_parse_port(text: str, allow_zero: bool, allow_any: bool, expected: int | None) -> None:
    assert parse_port(text, allow_zero=allow_zero, allow_any=allow_any) == expected


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [("host", 22, "host:22"), ("127.0.0.1", 0, "127.0.0.1:0"), ("::1", 2222, "[::1]:2222")],
)
def test_join_is_the_inverse_of_split(host: str, port: int, text: str) -> None:
    assert join_host_port(host, port) == text
    assert split_host_port(text, 1, allow_zero=True) == (host, port)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (b"homebox.example.com", "homebox.example.com"),
        (b"homebox.example.com:8080", "homebox.example.com"),
        (b" homebox.example.com:80 ", "homebox.example.com"),
        (b"homebox.example.com:", "homebox.example.com"),  # RFC 9110: the port may be empty
        (b"homebox.example.com:http", "homebox.example.com:http"),  # whole: not a name
        (b"homebox.example.com:99999", "homebox.example.com:99999"),
        (b"[::1]:443", "[::1]"),  # bracketed: kept so, and refused as no name
        (b"::1", "::1"),
    ],
)
def test_the_bastions_http_host_header_goes_through_the_same_parser(
    header: bytes, name: str
) -> None:
    from sshtunnel_mgr.bastion.web.http import host_name

    assert host_name(header) == name
