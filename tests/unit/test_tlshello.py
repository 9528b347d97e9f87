"""The SNI parser (core/tlshello.py): real ClientHellos captured from openssl s_client, curl
and python's ssl (tests/data/tlshello), cut, split, fragmented and spoiled."""

from __future__ import annotations

from pathlib import Path

import pytest

from sshtunnel_mgr.core.tlshello import NEED_MORE, Bad, Hello, next_boundary, read_hello

DATA = Path(__file__).resolve().parents[1] / "data" / "tlshello"


def hello(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


@pytest.mark.parametrize(
    ("capture", "sni"),
    [
        ("openssl_sni", "cloud.test"),  # openssl s_client -servername cloud.test (TLS 1.3)
        ("openssl_tls12", "Cloud.Test"),  # -tls1_2; the name as the client spelled it
        ("openssl_nosni", None),  # -noservername
        ("curl_sni", "cloud.test"),  # curl --resolve cloud.test:P:127.0.0.1
        ("curl_ip", None),  # curl https://127.0.0.1:P/ sends no SNI for an IP literal
        ("python_sni", "cloud.test"),  # ssl.create_default_context().wrap_bio(...)
    ],
)
def test_real_client_hellos(capture: str, sni: str | None) -> None:
    assert read_hello(hello(capture)) == Hello(sni)


@pytest.mark.parametrize("capture", ["openssl_sni", "curl_sni", "python_sni"])
def test_every_prefix_needs_more(capture: str) -> None:
    data = hello(capture)
    for cut in range(len(data)):
        assert read_hello(data[:cut]) is NEED_MORE, cut


def fragment(data: bytes, size: int) -> bytes:
    """The same handshake bytes in records of ``size`` bytes (TLS allows it)."""
    head, body = data[:5], data[5 : 5 + int.from_bytes(data[3:5], "big")]
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += head[:3] + len(part).to_bytes(2, "big") + part
    return out


@pytest.mark.parametrize("size", [8, 9, 64, 200])
def test_fragmented_records(size: int) -> None:
    data = fragment(hello("curl_sni"), size)
    assert read_hello(data, max_bytes=16384) == Hello("cloud.test")
    assert read_hello(data[:-1], max_bytes=16384) is NEED_MORE


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "not a TLS handshake"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not a TLS handshake"),
        (b"\x80\x2e\x01\x03\x01", "not a TLS handshake"),  # SSLv2-style hello
        (b"\x16\x02\x00\x00\x10", "not a TLS record version"),
        (b"\x16\x03\x01\x00\x00", "a handshake record of 0 bytes"),
        (b"\x16\x03\x01\x48\x01", "a handshake record of 18433 bytes"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
    ],
)
def test_garbage(data: bytes, reason: str) -> None:
    found = read_hello(data)
    assert isinstance(found, Bad)
    assert reason in found.reason


def test_a_second_record_of_another_type() -> None:
    data = fragment(hello("curl_sni"), 100)
    spoiled = data[:105] + b"\x17" + data[106:]
    assert read_hello(spoiled) == Bad("a non-handshake record inside the ClientHello")


def test_oversized_hello_is_refused_before_it_is_read() -> None:
    data = hello("curl_sni")
    assert read_hello(data, max_bytes=500) == Bad("a ClientHello of 508 bytes (more than 500)")
    assert read_hello(data, max_bytes=508) == Hello("cloud.test")
    found = read_hello(data[:9], max_bytes=100)
    assert isinstance(found, Bad) and "more than 100" in found.reason


def test_endless_tiny_records_are_bounded() -> None:
    # A hello that claims 16 KiB and is fed one byte per record never ends: it is cut off.
    data = b"\x16\x03\x01\x00\x04\x01\x00\x3f\xf0" + b"\x16\x03\x01\x00\x01\x00" * 3000
    found = read_hello(data, max_bytes=16384)
    assert found == Bad("a ClientHello in more than 64 records")


def test_lengths_that_lie() -> None:
    data = bytearray(hello("openssl_sni"))
    data[9 + 2 + 32] = 200  # session id length beyond its 32 bytes
    found = read_hello(bytes(data))
    assert isinstance(found, Bad) and "malformed" in found.reason


def test_a_server_name_that_is_not_printable() -> None:
    data = hello("python_sni")
    at = data.index(b"cloud.test")
    spoiled = data[:at] + b"cl\x00ud.test" + data[at + 10 :]
    found = read_hello(spoiled)
    assert isinstance(found, Bad) and "not printable" in found.reason


def test_next_boundary_is_where_a_parse_can_tell_more() -> None:
    data = fragment(hello("curl_sni"), 100)
    assert next_boundary(b"") == 5
    assert next_boundary(data[:3]) == 5
    assert next_boundary(data[:5]) == 105
    assert next_boundary(data[:104]) == 105
    assert next_boundary(data[:105]) == 110  # the next record's header
    for cut in range(len(data)):  # waiting for the boundary never skips an answer
        if read_hello(data[:cut]) is not NEED_MORE:
            assert cut >= next_boundary(data[: cut - 1]) or cut == 0


def test_a_hello_in_too_many_records_is_refused() -> None:
    found = read_hello(fragment(hello("curl_sni"), 5))  # 102 records
    assert found == Bad("a ClientHello in more than 64 records")
    assert read_hello(fragment(hello("curl_sni"), 8)) == Hello("cloud.test")  # 64 records
