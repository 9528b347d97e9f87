"""The bastion's HTTPS front, end to end with real peers on loopback: curl and python's ssl
as browsers, ``openssl s_server`` as the home box's TLS server, a real agent in between.
The bastion reads only the ClientHello; TLS ends at home (the bastion has no key)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from sshtunnel_mgr.core.tlshello import ALERT_UNRECOGNIZED_NAME
from tests.harness import Keys, wait_for
from tests.integration.web_peers import (
    curl,
    make_pki,
    raw_exchange,
    refragment,
    tls_get,
    tls_server,
    web_bastion,
)

pytestmark = pytest.mark.asyncio

DATA = Path(__file__).resolve().parents[1] / "data" / "tlshello"
PERMIT = "cloud.test:443,hidden.test:443,guarded.test:443"


def tunnels(port: int) -> list[tuple[str, int, str]]:
    return [(n, 443, f"127.0.0.1:{port}") for n in ("cloud.test", "hidden.test", "guarded.test")]


WEB = {
    "public": ["cloud.test", "guarded.test"],
    "rules": {"guarded.test": {"allow_from": ["192.0.2.0/24"]}},
}


def https_args(name: str, port: int, ca: Path) -> list[str]:
    """curl's arguments for https://name:port/ on loopback (no DNS), trusting ``ca``."""
    return ["--resolve", f"{name}:{port}:127.0.0.1", "--cacert", str(ca), f"https://{name}:{port}/"]


def hello_for(name: bytes) -> bytes:
    """curl's real ClientHello with its 10-byte server name replaced by ``name``."""
    data = (DATA / "curl_sni.bin").read_bytes()
    assert len(name) == 10
    return data.replace(b"cloud.test", name)


async def test_https_by_sni_through_the_bastion_to_the_home_tls_server(
    keys: Keys, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    async with (
        tls_server(pki) as home,
        web_bastion(keys, tmp_path, tunnels(home), PERMIT, **WEB) as web,
    ):
        code, out, err = await curl(*https_args("cloud.test", web.https, pki.ca))
        assert code == 0, err
        assert "s_server" in out  # the page of openssl s_server -www, at home
        # TLS ended at home: the certificate is the home box's, whose key the bastion
        # never had (its config has no certificate or key at all).
        cert, body = await tls_get(web.https, "cloud.test", pki.ca)
        assert cert == pki.cert_der and b"200 ok" in body.lower()
        assert not set(web.bastion.config.web.model_dump()) & {"cert", "key", "certificate"}
        await wait_for(lambda: len(web.records("route")) >= 2)
        route = web.records("route")[0]
        assert route["via"] == "https" and route["name"] == "cloud.test"
        assert route["port"] == 443 and route["from"].startswith("127.0.0.1:")
        assert route["bytes_to_home"] > 0 and route["bytes_from_home"] > 0
        assert route["end"] in ("client closed", "home side closed")
        snap = web.bastion.snapshot()
        assert snap["web"]["https"] == [f"127.0.0.1:{web.https}"]
        cloud = next(n for n in snap["names"] if n["name"] == "cloud.test")
        assert cloud["channels_total"] >= 2 and cloud["bytes_from_home"] > 0
        assert web.bastion.state.counters["web_routed_ok"] >= 2


async def test_a_client_hello_split_over_tiny_segments_and_records_still_routes(
    keys: Keys, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    async with (
        tls_server(pki) as home,
        web_bastion(keys, tmp_path, tunnels(home), PERMIT, **WEB) as web,
    ):
        cert, body = await tls_get(web.https, "cloud.test", pki.ca, split=1)
        assert cert == pki.cert_der and b"s_server" in body
        cert, body = await tls_get(web.https, "cloud.test", pki.ca, split=7, records=40)
        assert cert == pki.cert_der and b"s_server" in body


async def test_refusals_send_unrecognized_name_and_are_audited(keys: Keys, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    async with (
        tls_server(pki) as home,
        web_bastion(keys, tmp_path, tunnels(home), PERMIT, **WEB) as web,
    ):
        cases = {
            "unknown": hello_for(b"nobody.tst"),  # public? no, and published by nobody
            "ip": hello_for(b"10.0.0.100"),  # an IP literal as the server name
            "nosni": (DATA / "openssl_nosni.bin").read_bytes(),
        }
        for case, hello in cases.items():
            assert await raw_exchange(web.https, [hello]) == ALERT_UNRECOGNIZED_NAME, case
        # Published and allowed by the access file, but not public: refused all the same.
        code, _out, err = await curl(*https_args("hidden.test", web.https, pki.ca))
        assert code != 0 and "unrecognized" in err.lower()
        # Public, but not from this address (allow_from = 192.0.2.0/24).
        code, _out, err = await curl(*https_args("guarded.test", web.https, pki.ca))
        assert code != 0 and "unrecognized" in err.lower()
        # Not TLS at all: closed, nothing sent.
        assert await raw_exchange(web.https, [b"GET / HTTP/1.1\r\nHost: cloud.test\r\n\r\n"]) == b""
        await wait_for(lambda: len(web.records("refused")) >= 6)
        refused = web.records("refused")
        reasons = " | ".join(r["reason"] for r in refused)
        assert all(r["stage"] == "web" and r["via"] == "https" for r in refused)
        assert "nobody.tst is not public" in reasons
        assert "is an IP address" in reasons
        assert "no server name (SNI)" in reasons
        assert "hidden.test is not public" in reasons
        assert "127.0.0.1 is not in allow_from of guarded.test" in reasons
        assert "not a TLS handshake" in reasons
        assert not web.records("route")
        counters = web.bastion.state.counters
        assert counters["web_refused_not_public"] == 2 and counters["web_refused_not_allowed"] == 1


async def test_a_slow_or_oversized_hello_is_cut_off(keys: Keys, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    web_cfg = {**WEB, "hello_timeout": 0.5, "hello_max_bytes": 512}
    async with (
        tls_server(pki) as home,
        web_bastion(keys, tmp_path, tunnels(home), PERMIT, **web_cfg) as web,
    ):
        hello = hello_for(b"cloud.test")
        assert await raw_exchange(web.https, [hello[:20]]) == b""  # never finished: closed
        claims = b"\x16\x03\x01\x00\x04\x01\x00\x10\x00"  # a 4096-byte hello > 512
        assert await raw_exchange(web.https, [claims]) == ALERT_UNRECOGNIZED_NAME
        big = refragment(hello, 1)[:3000]  # one byte per record: too many records
        assert await raw_exchange(web.https, [big]) == ALERT_UNRECOGNIZED_NAME
        await wait_for(lambda: len(web.records("refused")) >= 3)
        reasons = " | ".join(r["reason"] for r in web.records("refused"))
        assert "no ClientHello in 0.5 s" in reasons
        assert "a ClientHello of 4096 bytes (more than 512)" in reasons
        assert "a ClientHello in more than 64 records" in reasons


async def test_per_source_caps(keys: Keys, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    caps = {
        "public": ["cloud.test"],
        "rules": {"cloud.test": {"max_new_per_source": 2}},
        "max_pending_per_source": 2,
    }
    async with (
        tls_server(pki) as home,
        web_bastion(keys, tmp_path, tunnels(home)[:1], "cloud.test:443", **caps) as web,
    ):
        # Two connections that send nothing hold this source's two slots: a third is
        # closed at once, before it sends a byte.
        held = [await asyncio.open_connection("127.0.0.1", web.https) for _ in range(2)]
        await wait_for(lambda: web.bastion.web is not None and len(web.bastion.web.conns) == 2)
        assert await raw_exchange(web.https, []) == b""
        for _reader, writer in held:
            writer.close()
        await wait_for(lambda: web.bastion.web is not None and not web.bastion.web.conns)
        # Two new connections a minute to cloud.test from one source: the third is refused.
        for _ in range(2):
            cert, _body = await tls_get(web.https, "cloud.test", pki.ca)
            assert cert == pki.cert_der
        assert await raw_exchange(web.https, [hello_for(b"cloud.test")]) == ALERT_UNRECOGNIZED_NAME
        await wait_for(lambda: len(web.records("refused")) >= 2)
        reasons = " | ".join(r["reason"] for r in web.records("refused"))
        assert "127.0.0.1 has 2 connections still sending their head" in reasons
        assert "more than 2 new connections a minute from 127.0.0.1 to cloud.test" in reasons
        counters = web.bastion.state.counters
        assert counters["web_refused_pending"] == 1 and counters["web_refused_rate"] == 1
        # A flood of refusals from one source is counted in full and recorded (logged and
        # audited) ten times a minute, then every hundredth: 4 above (the two idle ones
        # closed early too), so 6 of these 12.
        for _ in range(12):
            assert await raw_exchange(web.https, [b"GET / HTTP/1.0\r\n\r\n"]) == b""
        await wait_for(lambda: counters["web_refused_bad_hello"] == 12)
        garbage = [r for r in web.records("refused") if r["reason"] == "not a TLS handshake"]
        assert len(garbage) == 6


async def test_reload_applies_public_names_and_keeps_the_listeners(
    keys: Keys, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    async with (
        tls_server(pki) as home,
        web_bastion(keys, tmp_path, tunnels(home), PERMIT, **WEB) as web,
    ):
        cert, _body = await tls_get(web.https, "cloud.test", pki.ca)
        assert cert == pki.cert_der
        bastion = web.bastion
        changed = bastion.config.web.model_copy(
            update={"public": ["guarded.test"], "https_listen": "127.0.0.1:1"}
        )
        answer = bastion.reload(bastion.config.model_copy(update={"web": changed}))
        assert (
            answer["ok"]
            and "web listen changed: restart the bastion to apply that" in (answer["notes"])
        )
        assert bastion.config.web.https_listen == "127.0.0.1:0"  # the running one stays
        assert await raw_exchange(web.https, [hello_for(b"cloud.test")]) == ALERT_UNRECOGNIZED_NAME
        await wait_for(lambda: any("cloud.test is not public" in r["reason"]
                                   for r in web.records("refused")))  # fmt: skip


async def test_shutdown_drains_a_routed_web_connection(keys: Keys, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    async with (
        tls_server(pki) as home,
        web_bastion(keys, tmp_path, tunnels(home), PERMIT, **WEB) as web,
    ):
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", web.https, ssl=ctx, server_hostname="cloud.test"
        )
        front = web.bastion.web
        assert front is not None and front.routed_open == 1
        stopping = asyncio.ensure_future(web.bastion.stop(grace=60))
        await wait_for(lambda: not web.bastion.state.accepting)
        # The routed connection goes on through the drain: a request, its whole answer.
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        page = await asyncio.wait_for(reader.read(), 20)
        assert b"s_server" in page
        writer.close()
        await asyncio.wait_for(stopping, 20)  # and the drain ends when it does, not at 60 s
        assert front.routed_open == 0
