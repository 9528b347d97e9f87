"""``workers = 2``: a supervisor and two real worker processes behind one address.

Real ``sshtun bastion`` and ``sshtun up`` processes, the real OpenSSH ``ssh -J``. Which
worker a connection lands on is chosen by its source address (the BPF program hashes the
IPv4 source modulo the number of workers): 127.0.0.1 → worker 1, 127.0.0.2 → worker 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from sshtunnel_mgr.bastion.workers.sockets import reuseport_group
from sshtunnel_mgr.runtime.admin import query
from tests.harness import Keys, access_text, write_ssh_config
from tests.integration.scene import scene

def test_one_source_lands_on_one_worker() -> None:
    """Every connection of one source reaches the same socket of the group; the other
    source (other parity) the other socket."""
    (group,) = reuseport_group("127.0.0.1", 0, 2)
    port = group[0].getsockname()[1]
    assert group[1].getsockname()[1] == port
    landed: dict[str, set[int]] = {}
    clients = []
    try:
        for i in range(40):
            source = "127.0.0.3" if i % 2 else "127.0.0.2"
            c = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
            clients.append(c)
            for index, sock in enumerate(group):
                sock.settimeout(0.2)
                try:
                    sock.accept()[0].close()
                    landed.setdefault(source, set()).add(index)
                except TimeoutError:
                    pass
    finally:
        for sock in [*clients, *group]:
            sock.close()
    assert landed == {"127.0.0.2": {0}, "127.0.0.3": {1}}


def _from(tmp: Path, keys: Keys, port: int, source: str) -> Path:
    return write_ssh_config(
        tmp / f"alice-{source}", keys, port, extra_opts=f"  BindAddress {source}\n"
    )


async def _status(sock: Path) -> dict[str, Any]:
    return await query(sock, {"cmd": "status"})


@pytest.mark.asyncio
async def test_two_workers_route_relay_restart_and_revoke(keys: Keys, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    async with scene(keys, tmp_path, bastion=False) as s:
        admin = keys.dir / f"bastion-{s.port}.sock"
        async with s.bastion_process(workers=2, audit_log=str(audit)) as bastion:
            async with s.agent_process():
                status = await _status(admin)
                assert [w["up"] for w in status["workers"]] == [True, True]
                (name,) = status["names"]
                assert (name["name"], name["worker"]) == ("homebox", 1)  # the agent: 127.0.0.1
                # A client on worker 0 (127.0.0.2) reaches the name held on worker 1.
                far = _from(tmp_path, keys, s.port, "127.0.0.2")
                near = _from(tmp_path, keys, s.port, "127.0.0.1")
                result = await s.reach(cfg=far)
                assert result.returncode == 0, result.stderr
                assert result.stdout.strip() == b"through"
                assert (await s.reach(cfg=near)).returncode == 0
                routes = [json.loads(x) for x in audit.read_text().splitlines()]
                routed = {(r["from"].split(":")[0], r["worker"]) for r in routes if r["event"] == "route"}
                assert routed == {("127.0.0.2", 0), ("127.0.0.1", 1)}
                # kill -9 worker 0: a session through worker 1 keeps flowing; worker 0 comes back.
                async with s.stream(near) as stream:
                    await stream.wait_lines(3)
                    os.kill(status["workers"][0]["pid"], signal.SIGKILL)
                    await bastion.wait_log("worker died", "worker=0")

                    async def back() -> bool:
                        rows = (await _status(admin))["workers"]
                        return rows[0]["up"] and rows[0]["restarts"] == 1

                    await _wait_async(back)
                    await stream.more(5)
                    result = await s.reach(cfg=far)
                    assert result.returncode == 0, result.stderr
                    done = await stream.finish()
                    assert done.returncode == 0
                # Reload merged across workers: alice's key revoked on both.
                s.access.write_text(access_text(keys).splitlines()[0] + "\n")
                answer = await query(admin, {"cmd": "reload"})
                assert answer["ok"] and answer["workers"] == 2
                assert answer["keys"] == 1
                for cfg in (far, near):
                    refused = await s.reach(cfg=cfg)
                    assert refused.returncode != 0


async def _wait_async(check: Any, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.2)

