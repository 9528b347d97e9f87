"""``sshtun demo`` with real peers: while it holds, the lines it prints work as printed
(real OpenSSH ``ssh -F …`` and real ``curl --cacert … --resolve …``), and its web client
really checks the certificate (the CA and the host name). ``tests/test_cli.py`` runs the
demo itself, start to end."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from sshtunnel_mgr.setup import demoweb
from sshtunnel_mgr.setup.demo import run_demo
from tests.harness import SSH, require_openssh, wait_for
from tests.integration.test_agent_tls import require

CURL = shutil.which("curl")


async def run(argv: list[str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def test_the_held_demo_serves_the_printed_curl_and_ssh_lines(tmp_path: Path) -> None:
    require(CURL, "curl")
    require_openssh()
    assert SSH is not None
    said: list[str] = []
    hold = asyncio.Event()
    demo = asyncio.create_task(run_demo(tmp_path, said.append, hold=hold))
    try:
        await wait_for(lambda: demo.done() or any(s.startswith("9. ") for s in said), 60)
        if demo.done():
            demo.result()  # failed before holding: raise it here
        held = next(s for s in said if s.startswith("9. "))
        assert "running until Ctrl-C" in held
        assert (tmp_path / "agent.sock").exists()  # its own admin socket, not a real agent's
        ssh_line = next(x.strip() for x in held.splitlines() if x.strip().startswith("ssh "))
        curl_line = next(x.strip() for x in held.splitlines() if x.strip().startswith("curl "))
        argv = shlex.split(curl_line)
        code, page, err = await run([CURL, "-sS", "--max-time", "30", *argv[1:]])
        assert code == 0, err
        assert "Hello from the home box" in page
        assert "served at home to 127.0.0.1 over https" in page  # the bastion's view
        code, out, err = await run([SSH, *shlex.split(ssh_line)[1:]])
        assert code == 0, err
        assert out.strip() == "hello from homebox, through the sshtun tunnel; you ran: hostname"
    finally:
        hold.set()
        result = await asyncio.wait_for(demo, 30)
    assert result.page.status == 200 and result.page.client == "127.0.0.1"
    assert result.web_refusal == "TLS alert TLSV1_UNRECOGNIZED_NAME"
    assert result.curl_command == curl_line
    assert said[-1].startswith("10. stopped")


async def test_the_demo_pki_and_its_client_check_the_certificate(tmp_path: Path) -> None:
    pki = demoweb.make_pki(tmp_path / "web")
    assert stat.S_IMODE(pki.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [demoweb.WEB_NAME]
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.cert, pki.key)
    app = await demoweb.start_app(server)  # the page over TLS directly, no bastion
    port = app.sockets[0].getsockname()[1]
    other = demoweb.make_pki(tmp_path / "other")  # another throwaway CA
    try:
        got = await demoweb.fetch(port, demoweb.WEB_NAME, pki.ca)
        assert (got.status, got.headline) == (200, "Hello from the home box")
        assert got.issuer == "sshtun demo CA (throwaway)"
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await demoweb.fetch(port, "elsewhere.demo.test", pki.ca)
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            await demoweb.fetch(port, demoweb.WEB_NAME, other.ca)
    finally:
        app.close()
        await app.wait_closed()
