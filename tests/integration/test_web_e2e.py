"""The web path end to end with real processes, set up the way README says: ``sshtun init``
for both roles, ``[bastion.web]`` added to the bastion's config, the agent's tunnels made
web tunnels (``cloud.test`` passed through to ``openssl s_server -www``; ``files.test``
ending TLS at home in front of a plain HTTP server), then real ``sshtun bastion`` and
``sshtun up`` processes and curl/python's ssl as browsers (``--resolve``: no DNS).

It checks what an operator sees (``sshtun status``, both metrics endpoints scraped over
HTTP), that a SIGHUP reload keeps a live keep-alive connection, that the agent and the
bastion each close an idle web connection, and that ``sshtun keys revoke`` of the agent's
key withdraws its names (the browser then gets the refusal, and the agent stops with
status 5)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import ssl
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.harness import SSHTUN, free_port, process, wait_for
from tests.integration.processes import sshtun_process
from tests.integration.test_metrics import scrape
from tests.integration.test_web_https import hello_for
from tests.integration.web_peers import Pki, curl, make_pki, tls_server

pytestmark = pytest.mark.asyncio

ECHO = Path(__file__).with_name("web_echo.py")
ROOT = Path(__file__).resolve().parents[2]


async def sshtun(*args: str) -> tuple[int, str, str]:
    """A real ``sshtun`` command; its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *SSHTUN, *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def edit_toml(path: Path, change: Any) -> None:
    data = tomllib.loads(path.read_text())
    change(data)
    path.write_text(tomli_w.dumps(data))


@contextlib.asynccontextmanager
async def echo_server(tmp_path: Path) -> AsyncIterator[int]:
    port_file = tmp_path / "echo.port"
    async with process(sys.executable, str(ECHO), str(port_file), env={"PYTHONPATH": str(ROOT)}):
        await wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 20)
        yield int(port_file.read_text())


class Browser:
    """One TLS connection to ``name`` through the bastion's HTTPS listener (python's ssl),
    HTTP/1.1 keep-alive requests on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, name: str, pki: Pki) -> Browser:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name), 20
        )
        return cls(reader, writer)

    async def get(self, path: str, *extra: str) -> tuple[bytes, bytes]:
        head = [f"GET {path} HTTP/1.1", "Host: files.test", *extra, "", ""]
        self.writer.write("\r\n".join(head).encode())
        status = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 20)
        length = int(re.search(rb"(?i)content-length: (\d+)", status).group(1))  # type: ignore[union-attr]
        return status, await asyncio.wait_for(self.reader.readexactly(length), 20)

    async def closed_by_peer(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(), 30) == b""
        except (ssl.SSLError, ConnectionError):
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def test_web_path_with_real_processes_from_init_to_revoke(tmp_path: Path) -> None:
    bdir, adir = tmp_path / "bastion", tmp_path / "agent"
    ssh_port, https, http = free_port(), free_port(), free_port()
    bmetrics, ametrics = free_port(), free_port()
    cloud = make_pki(tmp_path / "home-cloud", ["cloud.test"])
    files = make_pki(tmp_path / "home-files", ["files.test"])

    code, out, err = await sshtun(
        "init", "--role", "bastion", "--dir", str(bdir), "--listen", f"127.0.0.1:{ssh_port}"
    )
    assert code == 0, err
    host_key = out.split("Agents and clients pin this host key:\n")[1].splitlines()[0]
    audit = tmp_path / "audit.jsonl"

    def bastion_web(data: dict[str, Any]) -> None:
        data["bastion"]["admin_socket"] = str(tmp_path / "bastion.sock")
        data["bastion"]["audit_log"] = str(audit)
        data["bastion"]["metrics_listen"] = f"127.0.0.1:{bmetrics}"
        data["bastion"]["web"] = {
            "https_listen": f"127.0.0.1:{https}",
            "http_listen": f"127.0.0.1:{http}",
            "public": ["cloud.test", "files.test"],
            "idle_timeout": 3.0,  # the agent's files.test: 1.5 s
        }

    bfile = bdir / "bastion.toml"
    edit_toml(bfile, bastion_web)

    async with tls_server(cloud) as s_server, echo_server(tmp_path) as echo:
        code, out, err = await sshtun(
            "init", "--role", "agent", "--dir", str(adir),
            "--bastion", f"127.0.0.1:{ssh_port}", "--bastion-key", host_key,
            "--tunnel", f"cloud.test:443=127.0.0.1:{s_server}",
            "--tunnel", f"files.test:443=127.0.0.1:{echo}",
        )  # fmt: skip
        assert code == 0, err
        access_line = out.split("access file, then reload it:\n")[1].splitlines()[0]
        assert access_line.startswith('permitlisten="cloud.test:443,files.test:443" ')
        with (bdir / "access").open("a") as handle:
            handle.write(access_line + "\n")
        agent_fp = re.search(r"agent_key \((SHA256:[^)]+)\)", out).group(1)  # type: ignore[union-attr]

        def agent_web(data: dict[str, Any]) -> None:
            data["agent"]["admin_socket"] = str(tmp_path / "agent.sock")
            data["agent"]["metrics_listen"] = f"127.0.0.1:{ametrics}"
            cloud_t, files_t = data["agent"]["tunnels"]
            cloud_t["tls"] = "passthrough"
            files_t.update(tls="files", cert=str(files.cert), key=str(files.key))
            files_t["idle_timeout"] = 1.5

        afile = adir / "agent.toml"
        edit_toml(afile, agent_web)

        async with (
            sshtun_process("bastion", "--config", str(bfile), ready="web listening") as bastion,
            sshtun_process("up", "--config", str(afile), check=False) as agent,
        ):
            await agent.wait_log("published", "files.test:443")
            await agent.wait_log("published", "cloud.test:443")
            # curl through the bastion to openssl s_server at home (TLS passed through).
            resolve = ["--resolve", f"cloud.test:{https}:127.0.0.1", "--cacert", str(cloud.ca)]
            code, out, err = await curl(*resolve, f"https://cloud.test:{https}/")
            assert code == 0 and "s_server" in out, err

            # A live keep-alive connection to files.test (TLS ended by the agent).
            browser = await Browser.open(https, "files.test", files)
            status, body = await browser.get("/one")
            first = json.loads(body)
            assert status.startswith(b"HTTP/1.1 200") and first["request"] == 1
            assert ["X-Forwarded-For", "127.0.0.1"] in first["headers"]

            # From here on it sends a request every 0.3 s (the agent's idle timeout,
            # 1.5 s, never fires) on the same connection, while ...
            answers: list[dict[str, Any]] = []
            stop = asyncio.Event()

            async def talk() -> None:
                while not stop.is_set():
                    _, body = await browser.get(f"/talk-{len(answers)}")
                    answers.append(json.loads(body))
                    await asyncio.sleep(0.3)

            talker = asyncio.ensure_future(talk())
            # ... the operator sees the web listeners and the live route ...
            code, out, err = await sshtun("status", "--config", str(bfile))
            assert code == 0, err
            assert f"web: https 127.0.0.1:{https}, http 127.0.0.1:{http}" in out
            assert "public cloud.test, files.test" in out
            assert "1 open, 1 routed" in out, out
            rows = {line.split()[0]: line for line in out.splitlines() if ".test:443" in line}
            assert set(rows) == {"cloud.test:443", "files.test:443"}
            assert agent_fp in rows["files.test:443"]
            assert rows["files.test:443"].split()[-2].startswith("1/"), out  # OPEN/TOTAL
            # ... and the bastion reloads on SIGHUP.
            mark = bastion.mark()
            bastion.send_signal(signal.SIGHUP)
            await bastion.wait_log("reload done", start=mark)
            count = len(answers)
            await wait_for(lambda: len(answers) >= count + 2 or talker.done(), 30)
            stop.set()
            await talker  # its failure, if any, fails the test here
            assert len(answers) >= count + 2
            assert {a["connection"] for a in answers} == {first["connection"]}
            assert [a["request"] for a in answers] == list(range(2, len(answers) + 2))

            # Silent now: the agent closes the session after its idle_timeout.
            assert await browser.closed_by_peer()
            await browser.close()
            await agent.wait_log("web idle", "files.test:443")

            # A request head over 64 KiB: the agent answers 431 itself.
            browser = await Browser.open(https, "files.test", files)
            status, _ = await browser.get("/big", "X-Pad: " + "a" * 70_000)
            assert status.startswith(b"HTTP/1.1 431"), status
            await browser.close()

            code, out, err = await sshtun("status", "--config", str(afile))
            assert code == 0, err
            assert "files.test:443: " in out and "1 idle closed, answered 431:1" in out, out
            _, a = await scrape(ametrics)
            label = '{name="files.test:443"}'
            assert a[f"sshtun_agent_web_sessions_total{label}"] >= 2
            assert (
                a['sshtun_agent_web_tls_handshakes_total{name="files.test:443",outcome="ok"}'] >= 2
            )
            assert (
                a[f"sshtun_agent_web_requests_total{label}"] == len(answers) + 1
            )  # and /one (/big never reached it)
            assert a[f"sshtun_agent_web_idle_closed_total{label}"] == 1
            assert a['sshtun_agent_web_refused_total{name="files.test:443",status="431"}'] == 1
            from_client = (
                'sshtun_agent_web_bytes_total{direction="from_client",name="files.test:443"}'
            )
            assert a[from_client] > 65536
            _, m = await scrape(bmetrics)
            assert m['sshtun_bastion_web_connections_total{outcome="routed"}'] >= 3
            assert m["sshtun_bastion_web_idle_closed_total"] == 0  # the agent's was first
            # A client that sends its ClientHello for cloud.test (passed through: no idle
            # timeout at home) and then nothing: the bastion closes it after its 3 s.
            reader, writer = await asyncio.open_connection("127.0.0.1", https)
            writer.write(hello_for(b"cloud.test"))
            while await asyncio.wait_for(reader.read(65536), 30):
                pass  # the home server's hello, then the close
            writer.close()
            await bastion.wait_log("web idle", "cloud.test")
            _, m = await scrape(bmetrics)
            assert m["sshtun_bastion_web_idle_closed_total"] == 1

            # Revoke the agent's key: its names are withdrawn at once, the browser gets
            # the refusal, and the agent (its key refused) stops with status 5.
            mark = bastion.mark()
            code, out, err = await sshtun("keys", "revoke", agent_fp, "--config", str(bfile))
            assert code == 0, err
            await bastion.wait_log("unpublish", "cloud.test", start=mark)
            code, out, err = await curl(*resolve, f"https://cloud.test:{https}/")
            assert code != 0 and "s_server" not in out
            await bastion.wait_log("refused web", "cloud.test:443 is not published", start=mark)
            assert await agent.wait(60) == 5
            _, m = await scrape(bmetrics)
            unpublished = (
                'sshtun_bastion_web_connections_total{outcome="refused",reason="unpublished"}'
            )
            assert m[unpublished] >= 1
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    web_routes = [r for r in records if r["event"] == "route" and r.get("via") == "https"]
    assert {r["name"] for r in web_routes} >= {"cloud.test", "files.test"}
    assert any(
        r["event"] == "refused" and r.get("stage") == "web" and r.get("name") == "cloud.test"
        for r in records
    )
