"""``tls = "acme"`` end to end, run inside a network namespace of its own (test_agent_acme.py
starts it with ``unshare -n``): real peers only, and no validation shortcut.

- ``pebble`` (the ACME test CA from Debian) serves its directory over HTTPS with a
  certificate from a CA made here (the agent trusts it through ``acme_ca_bundle``) and
  resolves names through ``pebble-challtestsrv``'s DNS, which answers 127.0.0.1 for every
  name: the bastion's address in this namespace.
- The sshtun bastion (in-process) has ``[bastion.web]`` on port 80 and 443 of 127.0.0.1;
  pebble's HTTP-01 check connects to port 80 for real and the bastion passes it to the
  agent's ``cloud.test:80`` publication.
- The agent (in-process) publishes ``cloud.test:443`` with ``tls = "acme"`` in front of a
  plain HTTP app; once the certificate is issued, curl fetches ``https://cloud.test/``
  through the bastion trusting only pebble's root (fetched from pebble's management port).
- A second name, ``bad.test``, resolves to 127.0.0.2 where nothing listens on port 80: its
  challenge fails and the agent logs the CA's reason.
- A restarted agent serves the saved certificate without a new order.

Prints one JSON object with what was seen, for the test to judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sshtunnel_mgr.agent import Agent
from sshtunnel_mgr.agent.web.acmerenew import AcmeRenewer
from sshtunnel_mgr.core.config import AgentConfig, BastionEndpoint, TunnelConfig
from sshtunnel_mgr.core.webconfig import WebConfig
from tests.harness import Keys, bastion_config, bastion_pub, running_bastion

DIRECTORY = "https://127.0.0.1:14000/dir"
ROOTS = "https://127.0.0.1:15000/roots/0"
CHALLTEST = "http://127.0.0.1:8055"
PAGE = b"hello from the home box\n"


def tls_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it (pebble's own HTTPS)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme scene CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "pebble-cert.pem", directory / "pebble-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(paths[2], 0o600)
    return paths


@contextlib.asynccontextmanager
async def peer(*argv: str, log: Path, env: dict[str, str] | None = None) -> AsyncIterator[None]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def until(what: str, check: Any, timeout: float = 60) -> Any:
    """Poll ``check()`` (blocking calls go to a thread) until it gives a true value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            found = await asyncio.to_thread(check)
            if found:
                return found
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def fetch(url: str, ca: Path, data: bytes | None = None) -> bytes:
    context = ssl.create_default_context(cafile=str(ca)) if url.startswith("https") else None
    with urllib.request.urlopen(url, data=data, timeout=10, context=context) as answer:
        body: bytes = answer.read()
        return body


async def home_app() -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(PAGE)
                + PAGE
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def tls_to_bastion(root: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A TLS connection to cloud.test through the bastion's port 443: (streams, the serial
    of the certificate it was served)."""
    context = ssl.create_default_context(cafile=str(root))
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", 443, ssl=context, server_hostname="cloud.test"), 30
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return reader, writer, x509.load_der_x509_certificate(der).serial_number


async def renewal(renewer: AcmeRenewer, root: Path) -> dict[str, Any]:
    """A renewal (the order the renewer makes when due, for real against pebble) under a
    live TLS connection: new connections get the new certificate, the live one goes on."""
    reader, writer, before = await tls_to_bastion(root)
    failed = await renewer.attempt()
    _, fresh, after = await tls_to_bastion(root)
    fresh.close()
    writer.write(b"GET / HTTP/1.1\r\nHost: cloud.test\r\n\r\n")  # on the old connection
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return {"failed": failed, "before": before, "after": after, "old_conn": answer.decode()}


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


async def scene(work: Path) -> dict[str, Any]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    ca, pebble_cert, pebble_key = tls_ca(work)
    (work / "pebble.json").write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": "127.0.0.1:14000",
                    "managementListenAddress": "127.0.0.1:15000",
                    "certificate": str(pebble_cert),
                    "privateKey": str(pebble_key),
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    keys = Keys.create(work / "keys")
    access = work / "access"
    access.write_text(
        'permitlisten="cloud.test:443",permitlisten="cloud.test:80",'
        'permitlisten="bad.test:443",permitlisten="bad.test:80" '
        f"{keys.agent.public_line}\n"
    )
    captured = Captured()
    captured.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("sshtunnel_mgr").addHandler(captured)
    logging.getLogger("sshtunnel_mgr").setLevel(logging.INFO)
    result: dict[str, Any] = {}
    web = WebConfig(
        https_listen="127.0.0.1:443", http_listen="127.0.0.1:80", public=["cloud.test", "bad.test"]
    )
    challtest = [
        "pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
        "-dns01", "127.0.0.1:8053", "-http01", "", "-https01", "", "-tlsalpn01", "",
        "-management", "127.0.0.1:8055",
    ]  # fmt: skip
    # no random nonce rejections; the renewal always reuses the valid authorization, as
    # Let's Encrypt does for 30 days (the client must not answer it again)
    pebble_env = {
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",
        "PEBBLE_AUTHZREUSE": "100",
    }
    async with (
        peer(*challtest, log=work / "challtestsrv.log"),
        peer(
            "pebble",
            "-config",
            str(work / "pebble.json"),
            "-dnsserver",
            "127.0.0.1:8053",
            log=work / "pebble.log",
            env=pebble_env,
        ),  # fmt: skip
        running_bastion(bastion_config(keys, access, web=web)) as bastion,
    ):
        await until("pebble's directory", lambda: fetch(DIRECTORY, ca))
        await until(
            "challtestsrv",
            lambda: (
                fetch(
                    f"{CHALLTEST}/add-a",
                    ca,
                    json.dumps({"host": "bad.test", "addresses": ["127.0.0.2"]}).encode(),
                )
                is not None
            ),
        )
        app, app_port = await home_app()
        state = work / "state"

        def agent_config() -> AgentConfig:
            acme = {"acme_directory": DIRECTORY, "acme_ca_bundle": ca, "acme_email": "a@b.test"}
            return AgentConfig(
                key=keys.agent.path,
                bastions=[
                    BastionEndpoint(address=f"127.0.0.1:{bastion.port}", host_key=bastion_pub(keys))
                ],
                tunnels=[
                    TunnelConfig(
                        name=n, port=443, target=f"127.0.0.1:{app_port}", tls="acme", **acme
                    )
                    for n in ("cloud.test", "bad.test")
                ],
                state_dir=state,
                admin_socket=keys.dir / "agent.sock",
            )

        async def run_agent(first: bool) -> dict[str, Any]:
            agent = Agent(agent_config())
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            seen: dict[str, Any] = {
                "saved_served_at_start": agent.web.stores["cloud.test:443"].context is not None
            }
            try:
                await until("the agent's names", lambda: agent.ready_event.is_set(), 30)
                store = agent.web.stores["cloud.test:443"]
                await until("the certificate", lambda: store.context is not None, 60)
                if first:
                    renewer = agent.web.acme.renewers["bad.test:443"][0]
                    await until("bad.test's failure", lambda: renewer.failures > 0, 60)
                    seen["bad_error"] = renewer.last_error
                    seen["bad_next"] = renewer.next_at
                roots = await asyncio.to_thread(fetch, ROOTS, ca)
                (work / "pebble-root.pem").write_bytes(roots)
                curl = await asyncio.create_subprocess_exec(
                    "curl", "-sS", "--resolve", "cloud.test:443:127.0.0.1",
                    "--cacert", str(work / "pebble-root.pem"), "https://cloud.test/",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await asyncio.wait_for(curl.communicate(), 30)
                seen["curl_rc"], seen["curl_out"], seen["curl_err"] = (
                    curl.returncode, out.decode(), err.decode()
                )  # fmt: skip
                redirect = await asyncio.create_subprocess_exec(
                    "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                    "--resolve", "cloud.test:80:127.0.0.1", "http://cloud.test/page",
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                seen["http"] = (await asyncio.wait_for(redirect.communicate(), 30))[0].decode()
                cert = x509.load_pem_x509_certificate(store.files.cert.read_bytes())
                seen["serial"] = cert.serial_number
                seen["issuer"] = cert.issuer.rfc4514_string()
                seen["cert_mode"] = oct(store.files.cert.stat().st_mode & 0o777)
                seen["account_mode"] = oct(store.files.account_key.stat().st_mode & 0o777)
                seen["dir_mode"] = oct(store.files.dir.stat().st_mode & 0o777)
                seen["snapshot"] = agent.snapshot()["tunnels"]
                if not first:
                    renewer = agent.web.acme.renewers["cloud.test:443"][0]
                    seen["renewal"] = await renewal(renewer, work / "pebble-root.pem")
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
            return seen

        result["first"] = await run_agent(True)
        result["second"] = await run_agent(False)
        app.close()
    result["log"] = captured.records
    pebble_log = (work / "pebble.log").read_text(errors="replace").splitlines()
    result["pebble_log"] = [line for line in pebble_log if "validat" in line or "VALID" in line]
    return result


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sshtun-acme-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        result = asyncio.run(scene(work))
    json.dump(result, sys.stdout, default=str)


if __name__ == "__main__":
    main()
