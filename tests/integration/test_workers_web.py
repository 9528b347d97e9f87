"""``workers = 2`` with ``[bastion.web]``: the supervisor's reuseport groups for the web
listeners, each worker serving its share, a name held on the other worker reached through
its relay socket.

Real processes: ``sshtun bastion`` (a supervisor and two workers), ``sshtun up`` publishing
``cloud.test:443`` onto ``openssl s_server -WWW`` (TLS ends at home), curl as the browser
with ``--resolve`` (no DNS) and ``--interface`` (its source picks the worker: the BPF
program takes the IPv4 source modulo 2, so 127.0.0.2 → worker 0, 127.0.0.3 → worker 1; the
agent, from 127.0.0.1, lands on worker 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sshtunnel_mgr.runtime.admin import query
from tests.harness import Keys, free_port
from tests.integration.scene import scene, sshtun_process
from tests.integration.test_workers import _status, _until
from tests.integration.web_peers import Pki, curl, make_pki

pytestmark = pytest.mark.asyncio

FAR, NEAR = "127.0.0.2", "127.0.0.3"  # worker 0 (not the agent's), worker 1 (the agent's)
PAGE = b"<html>the home box's page</html>\n"


@contextlib.asynccontextmanager
async def files_server(pki: Pki, root: Path) -> AsyncIterator[int]:
    """``openssl s_server -WWW`` serving the files of ``root`` (its cwd) on loopback."""
    port = free_port()
    argv = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-WWW", "-quiet"]
    argv += ["-cert", str(pki.cert), "-key", str(pki.key)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=root,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _listening(port)
        yield port
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"openssl s_server never listened on {port}")


def _https(source: str, port: int, ca: Path, path: str) -> list[str]:
    return [
        "--interface", source,
        "--resolve", f"cloud.test:{port}:127.0.0.1",
        "--cacert", str(ca),
        f"https://cloud.test:{port}/{path}",
    ]  # fmt: skip


def _web_routes(audit: Path) -> set[tuple[str, int]]:
    lines = audit.read_text().splitlines() if audit.exists() else []
    records = [json.loads(line) for line in lines]
    return {
        (r["from"].split(":")[0], r["worker"])
        for r in records
        if r["event"] == "route" and r.get("via") == "https"
    }


async def test_web_front_across_two_workers(keys: Keys, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(PAGE)
    big = os.urandom(6 << 20)
    (root / "big.bin").write_bytes(big)
    audit = tmp_path / "audit.log"
    async with scene(keys, tmp_path, bastion=False) as s, files_server(pki, root) as home:
        s.access.write_text(f'permitlisten="cloud.test:443" {keys.agent.public_line}\n')
        web = {"https_listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0", "public": ["*.test"]}
        toml = s.bastion_file(workers=2, audit_log=str(audit), web=web)
        serving = sshtun_process(
            "bastion", "--config", str(toml), ready="listening on", timeout=120
        )
        agent_toml = s.agent_file([("cloud.test", 443, f"127.0.0.1:{home}")])
        agent = sshtun_process("up", "--config", str(agent_toml), ready="published", timeout=60)
        async with serving as bastion, agent:
            status = await _status(s)
            assert [(n["name"], n["worker"]) for n in status["names"]] == [("cloud.test", 1)]
            front: dict[str, Any] = status["web"]
            assert [w["worker"] for w in front["workers"]] == [0, 1]
            https = int(front["https"][0].rsplit(":", 1)[1])
            http = int(front["http"][0].rsplit(":", 1)[1])
            # The page from both sources: worker 0 relays to worker 1, worker 1 serves it.
            for source in (FAR, NEAR):
                code, out, err = await curl(*_https(source, https, pki.ca, "index.html"))
                assert code == 0, f"{source}: {err}"
                assert out.encode() == PAGE

            async def audited() -> bool:  # a web route is written when it has ended
                return _web_routes(audit) == {(FAR, 0), (NEAR, 1)}

            await _until(audited)
            # Port 80: the redirect to https, from both workers.
            for source in (FAR, NEAR):
                code, out, err = await curl(
                    "--interface", source,
                    "--resolve", f"cloud.test:{http}:127.0.0.1",
                    "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                    f"http://cloud.test:{http}/a/b?c=1",
                )  # fmt: skip
                assert code == 0, err
                assert out == f"308 https://cloud.test:{https}/a/b?c=1", source
            # The publishing key's cap counts its web connections on every worker: with
            # one held open on worker 1 and the cap at 1, worker 0 refuses a second one.
            sock = f"bastion-{s.port}.sock"
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            _, held = await asyncio.open_connection(
                "127.0.0.1", https, ssl=ctx, server_hostname="cloud.test", local_addr=(NEAR, 0)
            )
            try:

                async def routed() -> bool:
                    found = (await _status(s))["web"]
                    rows = [(r["worker"], r["routed_open"]) for r in found["workers"]]
                    return rows == [(0, 0), (1, 1)] and found["by_key"] == {fingerprint: 1}

                fingerprint = keys.agent.fingerprint
                await _until(routed)
                limits = {"max_channels_per_key": 1}
                s.bastion_file(workers=2, audit_log=str(audit), web=web, limits=limits)
                assert (await query(s.keys.dir / sock, {"cmd": "reload"}))["ok"]
                code, _, err = await curl(*_https(FAR, https, pki.ca, "index.html"))
                assert code != 0 and "unrecognized" in err.lower(), err
            finally:
                held.close()
            s.bastion_file(workers=2, audit_log=str(audit), web=web)
            assert (await query(s.keys.dir / sock, {"cmd": "reload"}))["ok"]
            # kill -9 worker 0 (no agent there) while a download flows through worker 1.
            got = tmp_path / "got.bin"
            argv = [
                "curl", "-sS", "--max-time", "60", "--limit-rate", "2M", "-o", str(got),
                *_https(NEAR, https, pki.ca, "big.bin"),
            ]  # fmt: skip
            download = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            try:

                async def flowing() -> bool:
                    return got.exists() and got.stat().st_size > 256 << 10

                await _until(flowing)
                os.kill(status["workers"][0]["pid"], signal.SIGKILL)
                await bastion.wait_log("worker died", "worker=0")
                _, err_bytes = await asyncio.wait_for(download.communicate(), 90)
                assert download.returncode == 0, err_bytes.decode()
            finally:
                if download.returncode is None:
                    download.kill()
                    await download.wait()
            assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(big).digest()

            # Worker 0, restarted, serves the web listener's sockets it inherited again.
            async def back() -> bool:
                row = (await _status(s))["workers"][0]
                return bool(row["up"] and row["restarts"] == 1)

            await _until(back)
            code, out, err = await curl(*_https(FAR, https, pki.ca, "index.html"))
            assert code == 0 and out.encode() == PAGE, err


async def test_a_relayed_web_connection_is_logged_with_the_publishing_key(
    keys: Keys, tmp_path: Path
) -> None:
    """The worker holding the agent logs a web connection relayed from the other worker
    with the publishing key (``agent_key``, as every worker's audit record of a web route
    has it), not with an empty client ``key``: a browser has no key."""
    pki = make_pki(tmp_path / "home", ["cloud.test"])
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(PAGE)
    audit = tmp_path / "audit.log"
    async with scene(keys, tmp_path, bastion=False) as s, files_server(pki, root) as home:
        s.access.write_text(f'permitlisten="cloud.test:443" {keys.agent.public_line}\n')
        web = {"https_listen": "127.0.0.1:0", "public": ["*.test"]}
        toml = s.bastion_file(workers=2, audit_log=str(audit), web=web)
        serving = sshtun_process(
            "bastion", "--config", str(toml), ready="listening on", timeout=120
        )
        agent_toml = s.agent_file([("cloud.test", 443, f"127.0.0.1:{home}")])
        agent = sshtun_process("up", "--config", str(agent_toml), ready="published", timeout=60)
        async with serving as bastion, agent:
            status = await _status(s)
            https = int(status["web"]["https"][0].rsplit(":", 1)[1])
            code, out, err = await curl(*_https(FAR, https, pki.ca, "index.html"))
            assert code == 0 and out.encode() == PAGE, err
            line = await bastion.wait_log("relayed", "name=cloud.test", "worker=1")
            assert f"agent_key={keys.agent.fingerprint}" in line, line
            assert 'key=""' not in line and f"from={FAR}" in line, line

            async def audited() -> bool:
                return _web_routes(audit) == {(FAR, 0)}

            await _until(audited)
            [route] = [
                r for r in map(json.loads, audit.read_text().splitlines()) if r["event"] == "route"
            ]
            assert route["agent_key"] == keys.agent.fingerprint
