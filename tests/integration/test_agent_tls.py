"""TLS ended at home (issue 11, the agent half), with real peers on loopback.

A real in-process bastion and agent; the agent publishes ``cloud.test:443`` with
``tls = "files"`` (a certificate from a CA made in the test) in front of a plain HTTP
server in its own process (tests/integration/web_echo.py) or haproxy. The tests drive the
tunnel the way the bastion's web listener does: a ``direct-tcpip`` to ``cloud.test:443``
whose originator is the "real client" address; a local TCP port bridges each accepted
connection onto one such channel, so real clients (curl, Python's ssl) speak TLS to the
agent through the bastion. No name is ever resolved: curl gets ``--resolve``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sshtunnel_mgr.agent import Agent
from sshtunnel_mgr.agent.web import httpfwd
from sshtunnel_mgr.core.config import AgentConfig, TunnelConfig
from sshtunnel_mgr.core.errors import ConfigError
from tests.harness import (
    REQUIRE_OPENSSH,
    Keys,
    RunningAgent,
    access_text,
    agent_config,
    bastion_config,
    bastion_pub,
    free_port,
    process,
    running_bastion,
    wait_for,
)

NAME = "cloud.test"
CLIENT_IP = "203.0.113.7"
ECHO = Path(__file__).with_name("web_echo.py")
CURL = shutil.which("curl")
HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
)


def require(tool: str | None, package: str) -> None:
    """Skip without the tool, except in CI (.ci/run installs it): then fail."""
    if tool is None:
        message = f"{package} not installed (apt-get install {package}; .ci/run does)"
        if REQUIRE_OPENSSH:
            pytest.fail(message + " but SSHTUN_REQUIRE_OPENSSH=1")
        pytest.skip(message)


# A throwaway CA ---------------------------------------------------------------------------
@dataclass
class Pki:
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    ca_path: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sshtun test CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        path = directory / "ca.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, path)

    def issue(self, cert_path: Path, key_path: Path, days: int = 20) -> x509.Certificate:
        """A server certificate for NAME, written like an admin would (key 0600)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        tmp_key = key_path.with_name(key_path.name + ".new")
        tmp_cert = cert_path.with_name(cert_path.name + ".new")
        fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp_key, key_path)
        os.replace(tmp_cert, cert_path)
        return cert

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.set_alpn_protocols(["http/1.1"])
        return context


# Peers -------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def echo_server(tmp_path: Path, *args: str) -> AsyncIterator[int]:
    port_file = tmp_path / f"echo-{len(args)}.port"
    async with process(sys.executable, str(ECHO), str(port_file), *args):
        await wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 20)
        yield int(port_file.read_text())


def web_agent_config(
    keys: Keys, bastion_port: int, target: str, tmp_path: Path, **tunnel: Any
) -> AgentConfig:
    base = agent_config(keys, bastion_port, [(NAME, 443, target)])
    return base.model_copy(
        update={"tunnels": [TunnelConfig(name=NAME, port=443, target=target, **tunnel)]}
    )


@contextlib.asynccontextmanager
async def running(config: AgentConfig) -> AsyncIterator[RunningAgent]:
    """The agent in-process, with a reload that re-reads the (unchanged) config."""
    agent = Agent(config, load=lambda: config)
    stop = asyncio.Event()
    running = RunningAgent(agent, stop, asyncio.create_task(agent.run(stop)))
    try:
        await running.wait_ready()
        yield running
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running.task, 10)


@contextlib.asynccontextmanager
async def client_conn(keys: Keys, port: int) -> AsyncIterator[asyncssh.SSHClientConnection]:
    async with asyncssh.connect(
        "127.0.0.1",
        port,
        username="browser",
        client_keys=[str(keys.client.path)],
        known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
        config=None,
        agent_path=None,
        connect_timeout=20,
    ) as conn:
        yield conn


@dataclass
class Bridge:
    """A local port; each connection to it becomes one channel to NAME:443 through the
    bastion, its originator CLIENT_IP (what the bastion's web listener will send)."""

    port: int
    opened: int = 0


@contextlib.asynccontextmanager
async def bridge(conn: asyncssh.SSHClientConnection) -> AsyncIterator[Bridge]:
    state = Bridge(0)
    tasks: set[asyncio.Task[None]] = set()

    async def pump(src: Any, dst: Any) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.write_eof()
        except (OSError, asyncssh.Error):
            return

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.opened += 1
        try:
            chan_r, chan_w = await conn.open_connection(
                NAME, 443, orig_host=CLIENT_IP, orig_port=40000 + state.opened
            )
            try:
                await asyncio.gather(pump(reader, chan_w), pump(chan_r, writer))
            finally:
                chan_w.close()
        finally:
            writer.close()

    def spawn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(serve(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(spawn, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Scene:
    pki: Pki
    cert: Path
    key: Path
    bastion_port: int
    access: Path


def scene(keys: Keys, tmp_path: Path) -> Scene:
    pki = Pki.create(tmp_path)
    cert, key = tmp_path / "cloud.pem", tmp_path / "cloud.key"
    pki.issue(cert, key)
    access = tmp_path / "access"
    access.write_text(access_text(keys, listen=f"{NAME}:443", open_=f"{NAME}:443"))
    return Scene(pki, cert, key, 0, access)


# HTTP over the TLS connection, by hand ------------------------------------------------------
async def tls_open(port: int, pki: Pki) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=pki.client_context(), server_hostname=NAME
    )


async def get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, extra: str = ""
) -> dict[str, Any]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {NAME}\r\n{extra}\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return dict(json.loads(await reader.readexactly(length)))


async def close(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def header(answer: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in answer["headers"] if k.lower() == name.lower()]


def serial_of(writer: asyncio.StreamWriter) -> int:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


# The tests ------------------------------------------------------------------------------------
async def test_keepalive_requests_each_carry_the_client_address_through_curl(
    keys: Keys, tmp_path: Path
) -> None:
    """Real curl, one TLS connection, three requests: every one reaches the target with
    X-Forwarded-For = the channel's originator (the spoofed one the client sent is gone)
    and X-Forwarded-Proto: https; the agent keeps the client connection alive."""
    require(CURL, "curl")
    assert CURL is not None
    s = scene(keys, tmp_path)
    async with (
        echo_server(tmp_path) as echo_port,
        running_bastion(bastion_config(keys, s.access)) as bastion,
    ):
        config = web_agent_config(
            keys,
            bastion.port,
            f"127.0.0.1:{echo_port}",
            tmp_path,
            tls="files",
            cert=s.cert,
            key=s.key,
        )
        async with running(config), client_conn(keys, bastion.port) as conn, bridge(conn) as br:
            url = f"https://{NAME}:{br.port}"
            proc = await asyncio.create_subprocess_exec(
                CURL,
                "-sS",
                "-v",
                "--http1.1",
                "--resolve",
                f"{NAME}:{br.port}:127.0.0.1",
                "--cacert",
                str(s.pki.ca_path),
                "-H",
                "X-Forwarded-For: 6.6.6.6",
                "-H",
                "Forwarded: for=6.6.6.6",
                f"{url}/one",
                f"{url}/two",
                f"{url}/three",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
    answers = [json.loads(line) for line in out.decode().replace("}{", "}\n{").splitlines()]
    assert [a["path"] for a in answers] == ["/one", "/two", "/three"]
    for answer in answers:
        assert header(answer, "X-Forwarded-For") == [CLIENT_IP]
        assert header(answer, "X-Forwarded-Proto") == ["https"]
        assert header(answer, "Forwarded") == []
        assert header(answer, "Host") == [f"{NAME}:{br.port}"]
    assert br.opened == 1  # one TLS connection, one channel: keep-alive
    assert {a["connection"] for a in answers} == {answers[0]["connection"]}
    assert [a["request"] for a in answers] == [1, 2, 3]
    assert b"ALPN: server accepted http/1.1" in err or b"ALPN, server accepted" in err


async def test_websocket_upgrade_echoes_through_the_tunnel(keys: Keys, tmp_path: Path) -> None:
    s = scene(keys, tmp_path)
    async with (
        echo_server(tmp_path) as echo_port,
        running_bastion(bastion_config(keys, s.access)) as bastion,
    ):
        config = web_agent_config(
            keys,
            bastion.port,
            f"127.0.0.1:{echo_port}",
            tmp_path,
            tls="files",
            cert=s.cert,
            key=s.key,
        )
        async with running(config), client_conn(keys, bastion.port) as conn, bridge(conn) as br:
            reader, writer = await tls_open(br.port, s.pki)
            first = await get(reader, writer, "/before")  # keep-alive, then the upgrade
            assert header(first, "X-Forwarded-For") == [CLIENT_IP]
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET /ws HTTP/1.1\r\nHost: {NAME}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            assert head.startswith(b"HTTP/1.1 101"), head
            for text in (b"hello", b"world"):
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
                writer.write(bytes([0x81, 0x80 | len(text)]) + mask + masked)
                frame = await asyncio.wait_for(reader.readexactly(2 + 5 + len(text)), 20)
                assert frame == bytes([0x81, 5 + len(text)]) + b"echo:" + text
            await close(writer)


async def test_proxy_v2_read_by_haproxy_and_by_the_echo_server(keys: Keys, tmp_path: Path) -> None:
    """PROXY v2 in front of the plaintext: haproxy (accept-proxy) reports the client address
    from it, for a TLS tunnel; the echo server reads it byte-exact on a passthrough one."""
    s = scene(keys, tmp_path)
    hport = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "global\n  maxconn 100\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
        f"frontend fe\n  bind 127.0.0.1:{hport} accept-proxy\n"
        '  http-request return status 200 content-type text/plain lf-string "src=%[src] '
        'port=%[src_port] xff=%[req.hdr(x-forwarded-for)]"\n'
    )
    require(HAPROXY, "haproxy")
    assert HAPROXY is not None
    async with (
        process(HAPROXY, "-db", "-f", str(cfg)),
        running_bastion(bastion_config(keys, s.access)) as bastion,
    ):
        await wait_for(lambda: _listening(hport), 20)
        config = web_agent_config(
            keys,
            bastion.port,
            f"127.0.0.1:{hport}",
            tmp_path,
            tls="files",
            cert=s.cert,
            key=s.key,
            proxy_protocol="v2",
        )
        async with running(config), client_conn(keys, bastion.port) as conn, bridge(conn) as br:
            reader, writer = await tls_open(br.port, s.pki)
            writer.write(f"GET / HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            assert head.startswith(b"HTTP/1.1 200"), head
            body = await asyncio.wait_for(reader.read(200), 20)
            assert body.decode() == f"src={CLIENT_IP} port=40001 xff={CLIENT_IP}"
            await close(writer)


async def test_passthrough_with_proxy_v1_reaches_the_target_byte_exact(
    keys: Keys, tmp_path: Path
) -> None:
    s = scene(keys, tmp_path)
    async with (
        echo_server(tmp_path, "--proxy") as echo_port,
        running_bastion(bastion_config(keys, s.access)) as bastion,
    ):
        config = web_agent_config(
            keys,
            bastion.port,
            f"127.0.0.1:{echo_port}",
            tmp_path,
            tls="passthrough",
            proxy_protocol="v1",
        )
        async with running(config), client_conn(keys, bastion.port) as conn:
            reader, writer = await conn.open_connection(
                NAME, 443, orig_host=CLIENT_IP, orig_port=40001
            )
            writer.write(
                f"GET /raw HTTP/1.1\r\nHost: {NAME}\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answer = json.loads(await reader.readexactly(length))
            await close(writer)
    expected = f"PROXY TCP4 {CLIENT_IP} 0.0.0.0 40001 443\r\n".encode()
    assert bytes.fromhex(answer["proxy"]["raw"]) == expected
    assert header(answer, "X-Forwarded-For") == ["6.6.6.6"]  # passthrough: bytes untouched


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_certificate_swap_keeps_the_live_connection(keys: Keys, tmp_path: Path) -> None:
    """New files on disk: the next connection gets the new certificate, the connection
    already open keeps its own and goes on serving requests; a reload re-reads them too,
    and refuses a key others may read (the old certificate stays in service)."""
    s = scene(keys, tmp_path)
    async with (
        echo_server(tmp_path) as echo_port,
        running_bastion(bastion_config(keys, s.access)) as bastion,
    ):
        config = web_agent_config(
            keys,
            bastion.port,
            f"127.0.0.1:{echo_port}",
            tmp_path,
            tls="files",
            cert=s.cert,
            key=s.key,
        )
        first_cert = x509.load_pem_x509_certificate(s.cert.read_bytes())
        async with (
            running(config) as ra,
            client_conn(keys, bastion.port) as conn,
            bridge(conn) as br,
        ):
            r1, w1 = await tls_open(br.port, s.pki)
            assert (await get(r1, w1, "/a"))["request"] == 1
            assert serial_of(w1) == first_cert.serial_number

            second = s.pki.issue(s.cert, s.key, days=40)
            r2, w2 = await tls_open(br.port, s.pki)
            assert serial_of(w2) == second.serial_number
            assert (await get(r2, w2, "/b"))["request"] == 1
            assert (await get(r1, w1, "/a-again"))["request"] == 2  # the live one goes on
            assert serial_of(w1) == first_cert.serial_number

            tunnels = ra.agent.snapshot()["tunnels"]
            assert tunnels[0]["tls"] == "files"
            assert tunnels[0]["cert_not_after"] == second.not_valid_after_utc.timestamp()

            third = s.pki.issue(s.cert, s.key, days=50)
            answer = await ra.agent.reload()
            assert answer["ok"], answer
            assert ra.agent.snapshot()["tunnels"][0]["cert_not_after"] == (
                third.not_valid_after_utc.timestamp()
            )

            os.chmod(s.key, 0o644)
            answer = await ra.agent.reload()
            assert not answer["ok"]
            assert "too open" in answer["error"] and "chmod 600" in answer["error"]
            r3, w3 = await tls_open(br.port, s.pki)  # still served, with the third cert
            assert serial_of(w3) == third.serial_number
            assert (await get(r3, w3, "/c"))["request"] == 1
            assert (await get(r1, w1, "/a-third"))["request"] == 3  # through both reloads
            assert serial_of(w1) == first_cert.serial_number
            for writer in (w1, w2, w3):
                await close(writer)


def test_world_readable_key_refused_at_start_with_the_fix(keys: Keys, tmp_path: Path) -> None:
    s = scene(keys, tmp_path)
    os.chmod(s.key, 0o644)
    config = web_agent_config(
        keys, 2222, "127.0.0.1:8080", tmp_path, tls="files", cert=s.cert, key=s.key
    )
    with pytest.raises(ConfigError) as caught:
        Agent(config)
    assert "too open" in caught.value.message
    assert caught.value.hint == f"chmod 600 {s.key}"


async def test_slow_or_oversized_request_heads_are_answered_and_closed(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head that never ends gets 408 once its time is up; one over 64 KiB gets 431; both
    connections are closed, and nothing reaches the target."""
    monkeypatch.setattr(httpfwd, "HEAD_TIMEOUT", 1.0)
    s = scene(keys, tmp_path)
    async with (
        echo_server(tmp_path) as echo_port,
        running_bastion(bastion_config(keys, s.access)) as bastion,
    ):
        config = web_agent_config(
            keys,
            bastion.port,
            f"127.0.0.1:{echo_port}",
            tmp_path,
            tls="files",
            cert=s.cert,
            key=s.key,
        )
        async with running(config), client_conn(keys, bastion.port) as conn, bridge(conn) as br:
            reader, writer = await tls_open(br.port, s.pki)
            writer.write(f"GET /slow HTTP/1.1\r\nHost: {NAME}\r\nX-A: 1\r\n".encode())
            answer = await asyncio.wait_for(reader.read(), 30)  # until the agent closes
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            await close(writer)

            reader, writer = await tls_open(br.port, s.pki)
            filler = "x" * 1000
            head = f"GET /big HTTP/1.1\r\nHost: {NAME}\r\n" + "".join(
                f"X-{i}: {filler}\r\n" for i in range(70)
            )
            writer.write(head.encode())
            answer = await asyncio.wait_for(reader.read(), 30)
            assert answer.startswith(b"HTTP/1.1 431 "), answer
            await close(writer)

            # plain HTTP to the TLS tunnel: an alert and a close, nothing forwarded
            reader, writer = await asyncio.open_connection("127.0.0.1", br.port)
            writer.write(f"GET / HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
            answer = await asyncio.wait_for(reader.read(), 30)
            assert answer[:1] in (b"\x15", b""), answer  # a TLS alert record, or just the close
            await close(writer)
            reader, writer = await tls_open(br.port, s.pki)  # and the tunnel still serves
            assert (await get(reader, writer, "/after"))["request"] == 1
            await close(writer)
