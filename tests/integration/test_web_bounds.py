"""The web front's bounds with real peers on loopback: web connections count against the
publishing key's ``max_channels_per_key``; an ACME challenge on a name served on 443 passes
alone (a keep-alive or pipelined second request never reaches the agent); a routed
connection that goes silent is closed after ``idle_timeout`` (a websocket that keeps
talking is not). Each is logged, audited and counted; test_web_e2e.py scrapes the
metrics of real processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sshtunnel_mgr.core.tlshello import ALERT_UNRECOGNIZED_NAME
from tests.harness import Keys, process, wait_for
from tests.integration.test_web_https import hello_for
from tests.integration.web_peers import (
    curl,
    make_pki,
    raw_exchange,
    tls_server,
    web_bastion,
)

pytestmark = pytest.mark.asyncio

PERMIT = "cloud.test:443,cloud.test:80,plain.test:80,ws.test:80"
ECHO = Path(__file__).with_name("web_echo.py")


def resolve(web_http: int, web_https: int) -> list[str]:
    names = ("cloud.test", "plain.test", "ws.test")
    pairs = [f"{n}:{p}:127.0.0.1" for n in names for p in (web_http, web_https)]
    return [a for r in pairs for a in ("--resolve", r)]


@contextlib.asynccontextmanager
async def echo_server(tmp_path: Path) -> AsyncIterator[int]:
    """tests/integration/web_echo.py: a plain HTTP/1.1 server (keep-alive, websockets)."""
    port_file = tmp_path / "echo.port"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    async with process(sys.executable, str(ECHO), str(port_file), env=env):
        await wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 20)
        yield int(port_file.read_text())


@contextlib.asynccontextmanager
async def kept_alive(port: int, host: str) -> AsyncIterator[None]:
    """A client with one answered request on a connection it keeps open, silent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /hold HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    assert head.startswith(b"HTTP/1.1 200"), head
    try:
        yield
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_web_connections_count_against_the_publishing_keys_channel_cap(
    keys: Keys, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    settings = {"limits": {"max_channels_per_key": 2}}
    async with tls_server(pki) as tls, echo_server(tmp_path) as echo:
        tunnels = [("cloud.test", 443, f"127.0.0.1:{tls}"), ("plain.test", 80, f"127.0.0.1:{echo}")]
        async with web_bastion(
            keys, tmp_path, tunnels, PERMIT, bastion=settings, public=["*.test"]
        ) as web:
            front = web.bastion.web
            assert front is not None
            args = resolve(web.http, web.https)
            fmt = ["-o", "/dev/null", "-w", "%{http_code}"]
            state, agent = web.bastion.state, keys.agent.fingerprint
            # The agent's first probe of each name (an SSH channel of its key) is done.
            await wait_for(lambda: state.counters["routed_ok"] >= 2)
            await wait_for(lambda: state.key_usage.channels(agent) == 0)
            async with kept_alive(web.http, "plain.test"), kept_alive(web.http, "plain.test"):
                assert front.key_channels == {agent: 2}
                assert web.bastion.snapshot()["web"]["by_key"] == {agent: 2}
                # The key holds its two: HTTPS gets the alert every refusal gets, also
                # for another name the same key published ...
                hello = hello_for(b"cloud.test")
                assert await raw_exchange(web.https, [hello]) == ALERT_UNRECOGNIZED_NAME
                # ... and HTTP a 503.
                code, out, err = await curl(*args, *fmt, f"http://plain.test:{web.http}/")
                assert out == "503", err
                await wait_for(lambda: web.bastion.state.counters["web_refused_key_cap"] == 2)
                refused = [r for r in web.records("refused") if r.get("stage") == "web"]
                capped = [r for r in refused if "max_channels_per_key 2" in r["reason"]]
                assert len(capped) == 2
                assert {r["name"] for r in capped} == {"cloud.test", "plain.test"}
                assert keys.agent.fingerprint in capped[0]["reason"]
            # Both left: the key's count is back to 0 and its names serve again.
            await wait_for(lambda: not front.key_channels)
            code, out, err = await curl(*args, *fmt, f"http://plain.test:{web.http}/")
            assert out == "200", err
            code, out, err = await curl(
                *args, "--cacert", str(pki.ca), f"https://cloud.test:{web.https}/"
            )
            assert code == 0 and "s_server" in out, err


async def test_an_acme_challenge_passes_alone(keys: Keys, tmp_path: Path) -> None:
    """cloud.test is served on 443; its port-80 publication (a keep-alive HTTP/1.1 server
    at home) may answer ACME challenges only, one request per connection."""
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    async with tls_server(pki) as tls, echo_server(tmp_path) as echo:
        tunnels = [("cloud.test", 443, f"127.0.0.1:{tls}"), ("cloud.test", 80, f"127.0.0.1:{echo}")]
        async with web_bastion(keys, tmp_path, tunnels, PERMIT, public=["*.test"]) as web:
            challenge = b"GET /.well-known/acme-challenge/tok123 HTTP/1.1\r\nHost: cloud.test\r\n"
            secret = b"GET /secret HTTP/1.1\r\nHost: cloud.test\r\n\r\n"
            # Pipelined: the second request is in the same segment as the first.
            got = await raw_exchange(
                web.http, [challenge + b"Connection: keep-alive\r\n\r\n" + secret]
            )
            assert got.count(b"HTTP/1.1 ") == 1 and b"/secret" not in got, got
            answer = json.loads(got.partition(b"\r\n\r\n")[2])
            assert answer["path"] == "/.well-known/acme-challenge/tok123"
            # The home server was told this is the last request (its keep-alive asked for
            # by the client is gone), and said so.
            sent = [(k.lower(), v) for k, v in answer["headers"]]
            assert ("connection", "close") in sent and ("connection", "keep-alive") not in sent
            assert b"connection: close\r\n" in got.lower()
            # A second request sent after the first answer finds the connection closed.
            reader, writer = await asyncio.open_connection("127.0.0.1", web.http)
            writer.write(challenge + b"\r\n")
            first = await asyncio.wait_for(reader.read(), 20)  # until the bastion closes
            assert b"acme-challenge/tok123" in first
            with contextlib.suppress(ConnectionError):
                writer.write(secret)
                await writer.drain()
            assert await asyncio.wait_for(reader.read(), 20) == b""
            writer.close()
            # curl with two URLs on one command: the challenge from home, then the 308
            # (curl cannot reuse the closed connection; its new one is checked again).
            url = f"http://cloud.test:{web.http}"
            args = resolve(web.http, web.https)
            fmt = ["-o", "/dev/null", "-w", "%{http_code} "]
            _, out, err = await curl(
                *args, *fmt, f"{url}/.well-known/acme-challenge/tok123", f"{url}/secret"
            )
            assert out.split() == ["200", "308"], err
            # A challenge with a body never passes.
            post = challenge.replace(b"GET", b"POST") + b"Content-Length: 4\r\n\r\nabcd"
            assert (await raw_exchange(web.http, [post])).startswith(b"HTTP/1.1 400 ")
            await wait_for(lambda: len(web.records("route")) >= 3)
            routes = [r for r in web.records("route") if r["port"] == 80]
            assert len(routes) == 3 and all(r["via"] == "http" for r in routes)


def ws_frame(text: bytes) -> bytes:
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    )


async def test_idle_routed_connections_are_closed(keys: Keys, tmp_path: Path) -> None:
    """``idle_timeout = 0.5``: a TLS client that sends its hello and goes silent is cut off;
    a websocket that speaks every 0.2 s for 2 s stays up, then is cut off when it stops."""
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    async with tls_server(pki) as tls, echo_server(tmp_path) as echo:
        tunnels = [("cloud.test", 443, f"127.0.0.1:{tls}"), ("ws.test", 80, f"127.0.0.1:{echo}")]
        async with web_bastion(
            keys,
            tmp_path,
            tunnels,
            PERMIT,
            public=["*.test"],
            idle_timeout=0.5,
        ) as web:
            counters = web.bastion.state.counters
            # The hello is routed; the home server answers it; then nothing moves.
            reader, writer = await asyncio.open_connection("127.0.0.1", web.https)
            writer.write(hello_for(b"cloud.test"))
            got = b""
            while chunk := await asyncio.wait_for(reader.read(65536), 30):
                got += chunk
            assert got[:1] == b"\x16"  # the home server's ServerHello came through first
            writer.close()
            await wait_for(lambda: counters["web_idle_closed"] == 1)
            # A websocket through the HTTP front (ws.test is published on 80 only).
            reader, writer = await asyncio.open_connection("127.0.0.1", web.http)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    "GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            assert head.startswith(b"HTTP/1.1 101"), head
            for i in range(10):  # 2 s of talk, far past the 0.5 s timeout
                text = b"msg%d" % i
                writer.write(ws_frame(text))
                frame = await asyncio.wait_for(reader.readexactly(2 + 5 + len(text)), 20)
                assert frame.endswith(b"echo:" + text)
                await asyncio.sleep(0.2)
            assert counters["web_idle_closed"] == 1
            assert await asyncio.wait_for(reader.read(), 30) == b""  # silent: closed
            writer.close()
            await wait_for(lambda: counters["web_idle_closed"] == 2)
            await wait_for(lambda: len(web.records("route")) == 2)
            ends = {r["name"]: r["end"] for r in web.records("route")}
            assert ends == {"cloud.test": "idle for 0.5 s", "ws.test": "idle for 0.5 s"}
            assert web.bastion.snapshot()["web"]["idle_timeout"] == 0.5
