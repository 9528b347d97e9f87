"""``sshtun demo``'s web half: a page served at home, reached over HTTPS through the bastion.

A throwaway local CA and a certificate for ``cloud.demo.test`` (``make_pki``, key 0600 in
the demo's directory); a tiny HTTP app in this process (``start_app``: h11, keep-alive)
standing in for the home box's web app; and the client side (``fetch``): Python's ssl
trusting only that CA, checking the host name, sending the name as SNI to the bastion's
HTTPS listener on loopback. The bastion routes the encrypted stream by that name to the
agent, which ends TLS with the certificate and forwards plain HTTP to the app. No name is
ever resolved: the client connects to 127.0.0.1 and only *says* the name.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import html
import re
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import h11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sshtunnel_mgr.runtime.fsutil import write_atomic

WEB_NAME = "cloud.demo.test"
OTHER_NAME = "other.demo.test"  # nobody publishes it, the bastion does not make it public
BACKGROUND = "#0b6e4f"  # the page's solid colour (a screenshot shows it)
MAX_BODY = 1 << 20
READ = 65536


@dataclass(frozen=True)
class DemoPki:
    ca: Path  # the CA certificate a client trusts (curl --cacert, a browser's trust store)
    cert: Path  # the home box's certificate for the name
    key: Path  # its private key, 0600: only the agent reads it


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path, names: tuple[str, ...] = (WEB_NAME,), days: int = 2) -> DemoPki:
    """A CA made for this run only and one server certificate for ``names``."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("sshtun demo CA (throwaway)")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = DemoPki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    pem = serialization.Encoding.PEM
    write_atomic(pki.ca, ca.public_bytes(pem), mode=0o644)
    write_atomic(pki.cert, leaf.public_bytes(pem), mode=0o644)
    private = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(pki.key, private, mode=0o600)
    return pki


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# The home box's web app -------------------------------------------------------------------
def page(client: str, proto: str) -> bytes:
    """The demo page: one solid colour and big text, so a screenshot shows it at a glance."""
    who = html.escape(client or "?")
    return (
        "<!doctype html>\n<html><head><meta charset=utf-8><title>sshtun demo</title></head>"
        f'<body style="margin:0;background:{BACKGROUND};color:#fff;font-family:sans-serif">'
        '<div style="min-height:100vh;padding:6vh 6vw;box-sizing:border-box">'
        '<h1 style="font-size:9vw;margin:0">Hello from the home box</h1>'
        f'<p style="font-size:3vw">served at home to {who} over {html.escape(proto)}; TLS '
        "ended here, the bastion only routed encrypted bytes by name.</p></div></body></html>\n"
    ).encode()


def _header(request: h11.Request, name: bytes) -> str:
    values = [v.decode("latin-1") for k, v in request.headers if k.lower() == name]
    return values[-1] if values else ""


def _answer(request: h11.Request) -> tuple[int, bytes]:
    if request.method not in (b"GET", b"HEAD"):
        return 405, b"method not allowed\n"
    if request.target.split(b"?")[0] != b"/":
        return 404, b"not found\n"
    forwarded = _header(request, b"x-forwarded-for")
    return 200, page(forwarded, _header(request, b"x-forwarded-proto") or "http")


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One keep-alive HTTP/1.1 connection (from the agent): each request answered."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(reader.read(READ), 60))
            elif isinstance(ev, h11.Request):
                status, body = _answer(ev)
                kind = b"text/html; charset=utf-8" if status == 200 else b"text/plain"
                head = [(b"Content-Type", kind), (b"Content-Length", b"%d" % len(body))]
                reason = HTTPStatus(status).phrase.encode()
                response = h11.Response(status_code=status, headers=head, reason=reason)
                writer.write(conn.send(response) or b"")
                if ev.method != b"HEAD":
                    writer.write(conn.send(h11.Data(data=body)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
            elif ev is h11.PAUSED:
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break  # "Connection: close" on either side
                conn.start_next_cycle()
            elif isinstance(ev, h11.ConnectionClosed):
                break
    except (h11.ProtocolError, TimeoutError, ConnectionError):
        pass  # a bad or idle client: the connection just ends (the demo's own app)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def start_app(tls: ssl.SSLContext | None = None) -> asyncio.Server:
    """The home box's web app on 127.0.0.1, port chosen by the system; plain HTTP (the
    agent ends TLS) unless given a server context."""
    return await asyncio.start_server(_serve, "127.0.0.1", 0, ssl=tls)


# The client ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fetched:
    status: int
    body: bytes
    issuer: str  # the served certificate's issuer CN, as the client verified it

    @property
    def headline(self) -> str:
        found = re.search(rb"<h1[^>]*>(.*?)</h1>", self.body, re.S)
        return html.unescape(found.group(1).decode()) if found else ""

    @property
    def client(self) -> str:
        found = re.search(rb"served at home to (\S+) over", self.body)
        return html.unescape(found.group(1).decode()) if found else ""


def client_context(ca: Path) -> ssl.SSLContext:
    """Trust this CA only; check the certificate's names against the one asked for."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["http/1.1"])
    return context


async def fetch(port: int, name: str, ca: Path, timeout: float = 20.0) -> Fetched:
    """``GET /`` from ``https://name:port/``, connecting to 127.0.0.1 (no DNS), as
    ``curl --resolve name:port:127.0.0.1`` does. ``ssl.SSLError`` when the handshake
    fails (the bastion refuses an unknown name with an ``unrecognized_name`` alert)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca), server_hostname=name),
        timeout,
    )
    try:
        cert = writer.get_extra_info("peercert") or {}
        issuer = dict(x[0] for x in cert.get("issuer", ())).get("commonName", "?")
        conn = h11.Connection(h11.CLIENT)
        host = name if port == 443 else f"{name}:{port}"
        request = h11.Request(
            method="GET",
            target="/",
            headers=[("Host", host), ("User-Agent", "sshtun-demo"), ("Connection", "close")],
        )
        writer.write((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        await writer.drain()
        status, body = 0, b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(reader.read(READ), timeout))
            elif isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > MAX_BODY:
                    raise ValueError(f"the page from {name} is over {MAX_BODY} bytes")
            elif isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed):
                return Fetched(status, body, str(issuer))
    finally:
        writer.close()
        with contextlib.suppress(OSError):  # ssl.SSLError is one: an unclean TLS close
            await writer.wait_closed()


async def refusal(port: int, name: str, ca: Path, timeout: float = 20.0) -> str:
    """What a client asking the bastion for ``name`` gets: the TLS error it ends with."""
    try:
        got = await fetch(port, name, ca, timeout)
    except ssl.SSLError as exc:
        return f"TLS alert {exc.reason or exc}"
    except ConnectionError as exc:
        return f"connection closed ({exc.__class__.__name__})"
    return f"NOT REFUSED (HTTP {got.status})"


def curl_command(pki: DemoPki, port: int, name: str = WEB_NAME) -> str:
    return f"curl --cacert {pki.ca} --resolve {name}:{port}:127.0.0.1 https://{name}:{port}/"
