"""Real peers for the web front tests: a throwaway CA, a home TLS server (``openssl
s_server``), a home HTTP server (``python -m http.server``), and a bastion + agent on
loopback with ``[bastion.web]`` on port-0 listeners. Never a DNS lookup: curl gets
``--resolve``, python's ssl connects to 127.0.0.1 with ``server_hostname``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sshtunnel_mgr.bastion.serve import Bastion
from sshtunnel_mgr.core.webconfig import WebConfig
from tests.harness import (
    Keys,
    agent_config,
    bastion_config,
    free_port,
    process,
    read_until,
    running_agent,
    running_bastion,
    wait_for,
)

PAGE = b"hello from the home box\n"


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    cert_der: bytes


def make_pki(directory: Path, names: Sequence[str]) -> Pki:
    """A CA and one leaf for ``names``; the key is written 0600 in the home's directory."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sshtun test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem", b"")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    fd = os.open(pki.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    pki.cert_der = leaf.public_bytes(serialization.Encoding.DER)
    return pki


@contextlib.asynccontextmanager
async def tls_server(pki: Pki) -> AsyncIterator[int]:
    """``openssl s_server -www`` on loopback: the home box's TLS server (a real peer)."""
    port = free_port()
    argv = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-www", "-naccept", "100"]
    argv += ["-cert", str(pki.cert), "-key", str(pki.key)]
    async with process(*argv) as proc:
        await read_until(proc.stdout, "ACCEPT")
        assert proc.stdout is not None
        drain = asyncio.ensure_future(proc.stdout.read())  # never let its pipe fill
        try:
            yield port
        finally:
            drain.cancel()


@contextlib.asynccontextmanager
async def http_server(root: Path) -> AsyncIterator[int]:
    """``python -m http.server`` serving ``root`` on loopback: the home box's port 80."""
    port = free_port()
    argv = [sys.executable, "-u", "-m", "http.server", "-b", "127.0.0.1", "-d", str(root)]
    async with process(*argv, str(port)) as proc:
        await read_until(proc.stdout, "Serving HTTP")
        assert proc.stderr is not None
        drain = asyncio.ensure_future(proc.stderr.read())  # its request log
        try:
            yield port
        finally:
            drain.cancel()


@dataclass
class Web:
    bastion: Bastion
    https: int
    http: int
    audit: Path

    def records(self, event: str) -> list[dict[str, Any]]:
        lines = self.audit.read_text().splitlines() if self.audit.exists() else []
        return [r for r in map(json.loads, lines) if r["event"] == event]


@contextlib.asynccontextmanager
async def web_bastion(
    keys: Keys,
    tmp_path: Path,
    tunnels: Sequence[tuple[str, int, str]],
    permit: str,
    *,
    bastion: dict[str, Any] | None = None,
    **web: Any,
) -> AsyncIterator[Web]:
    """A bastion with ``[bastion.web]`` (``web``; other ``[bastion]`` keys in ``bastion``)
    and an agent publishing ``tunnels``."""
    access = tmp_path / "access"
    access.write_text(f'permitlisten="{permit}" {keys.agent.public_line}\n')
    web.setdefault("https_listen", "127.0.0.1:0")
    web.setdefault("http_listen", "127.0.0.1:0")
    audit = tmp_path / "audit.jsonl"
    config = bastion_config(keys, access, web=WebConfig(**web), audit_log=audit, **(bastion or {}))
    async with running_bastion(config) as bastion:
        front = bastion.web
        assert front is not None
        agent_cfg = agent_config(keys, bastion.port, list(tunnels))
        async with running_agent(agent_cfg):
            await wait_for(lambda: len(bastion.state.routes) == len(tunnels))
            yield Web(bastion, front.https_addresses[0][1], front.http_addresses[0][1], audit)


async def curl(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def raw_exchange(port: int, chunks: Sequence[bytes], pause: float = 0.0) -> bytes:
    """Send ``chunks`` (one TCP segment each: NODELAY), then read until the bastion closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    try:
        with contextlib.suppress(ConnectionError):  # a bastion that hung up mid-send
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
        try:
            return await asyncio.wait_for(reader.read(), 20)
        except ConnectionResetError:
            return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def tls_get(
    port: int, name: str, ca: Path, *, split: int = 0, records: int = 0
) -> tuple[bytes, bytes]:
    """A TLS client (python's ssl, over memory BIOs) that sends its ClientHello ``split``
    bytes per TCP segment and, with ``records``, re-fragmented into records of that many
    bytes; then GET /. Returns the server's certificate (DER) and the response."""
    ctx = ssl.create_default_context(cafile=str(ca))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(6, 1, 1)
    first = True
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            data = outgoing.read()
            if first and data:
                first = False
                if records:
                    data = refragment(data, records)
                step = split or len(data)
                for i in range(0, len(data), step):
                    writer.write(data[i : i + step])
                    await writer.drain()
                    await asyncio.sleep(0)
            elif data:
                writer.write(data)
            got = await asyncio.wait_for(reader.read(65536), 20)
            if not got:
                raise ConnectionError("closed during the handshake")
            incoming.write(got)
        writer.write(outgoing.read())
        tls.write(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
        writer.write(outgoing.read())
        body = b""
        while True:
            try:
                chunk = tls.read(65536)
                if not chunk:
                    break  # close_notify
                body += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            got = await asyncio.wait_for(reader.read(65536), 20)
            if not got:
                break
            incoming.write(got)
        cert = tls.getpeercert(binary_form=True)
        assert cert is not None
        return cert, body
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def refragment(data: bytes, size: int) -> bytes:
    """One handshake record as many records of ``size`` bytes (TLS allows it)."""
    head, body = data[:5], data[5 : 5 + int.from_bytes(data[3:5], "big")]
    rest = data[5 + len(body) :]
    out = b"".join(
        head[:3] + len(body[i : i + size]).to_bytes(2, "big") + body[i : i + size]
        for i in range(0, len(body), size)
    )
    return out + rest
