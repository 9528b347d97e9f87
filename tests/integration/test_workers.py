"""``workers = 2``: a supervisor and two real worker processes behind one address.

Real ``sshtun bastion`` and ``sshtun up`` processes, real OpenSSH ``ssh -J`` and ``ssh -R``.
Which worker a connection lands on is chosen by its source address (the BPF program takes
the IPv4 source modulo the number of workers): 127.0.0.1 → worker 1, 127.0.0.2 → worker 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from sshtunnel_mgr.bastion.workers.sockets import reuseport_group
from sshtunnel_mgr.keys.store import load_private_key
from sshtunnel_mgr.runtime.admin import query
from tests.harness import (
    SSH,
    Keys,
    access_text,
    bastion_config,
    bastion_pub,
    free_port,
    process,
    write_ssh_config,
)
from tests.integration.scene import Scene, SshtunProcess, scene, sshtun_process
from tests.integration.test_metrics import scrape
from tests.integration.test_rotation import sshtun

FAR, NEAR = "127.0.0.2", "127.0.0.1"  # worker 0, worker 1


def test_one_source_lands_on_one_worker() -> None:
    """Every connection of one source reaches the same socket of the group; a source of
    the other parity the other socket."""
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
            ready, _, _ = select.select(group, [], [], 10)  # where it landed (no fixed wait)
            assert ready, "the connection reached no socket of the group"
            for sock in ready:
                sock.accept()[0].close()
                landed.setdefault(source, set()).add(group.index(sock))
    finally:
        for sock in [*clients, *group]:
            sock.close()
    assert landed == {"127.0.0.2": {0}, "127.0.0.3": {1}}


def test_ipv6_source_hash() -> None:
    """IPv6: the program XORs the source address's four words (::1 -> 1, so socket 1)."""
    try:
        (group,) = reuseport_group("::1", 0, 2)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    port = group[0].getsockname()[1]
    landed: set[int] = set()
    clients = []
    try:
        for _ in range(10):
            clients.append(socket.create_connection(("::1", port), timeout=5))
            for index, sock in enumerate(group):
                sock.settimeout(0.2)
                try:
                    sock.accept()[0].close()
                    landed.add(index)
                except TimeoutError:
                    pass
    finally:
        for sock in [*clients, *group]:
            sock.close()
    assert landed == {1}


def _from(s: Scene, source: str, who: str = "alice", identity: Path | None = None) -> Path:
    """An ssh config whose connections leave from ``source`` (so: one worker)."""
    return write_ssh_config(
        s.tmp / f"{who}-{source}",
        s.keys,
        s.port,
        identity=identity,
        extra_opts=f"  BindAddress {source}\n",
    )


def _bastion(s: Scene, **kw: Any) -> AbstractAsyncContextManager[SshtunProcess]:
    """``sshtun bastion`` with workers: ready once every worker serves (a worker process
    starting on a machine loaded by parallel tests may take long: a generous bound)."""
    toml = s.bastion_file(**kw)
    return sshtun_process("bastion", "--config", str(toml), ready="listening on", timeout=120)


async def _login(s: Scene, key: Path, source: str) -> asyncssh.SSHClientConnection:
    """An asyncssh login from ``source`` (so: to one worker), the host key pinned."""
    return await asyncssh.connect(
        "127.0.0.1",
        s.port,
        local_addr=(source, 0),
        username="alice",
        client_keys=[load_private_key(key)],
        known_hosts=([asyncssh.import_public_key(bastion_pub(s.keys))], [], []),
        config=None,
        agent_path=None,
    )


async def _logs_in(s: Scene, key: Path, source: str) -> bool:
    try:
        conn = await _login(s, key, source)
    except asyncssh.PermissionDenied:
        return False
    conn.close()
    return True


async def _status(s: Scene) -> dict[str, Any]:
    return await query(s.keys.dir / f"bastion-{s.port}.sock", {"cmd": "status"})


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


def _routes(audit: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    return [r for r in records if r["event"] == "route"]


async def _count(audit: Path, n: int) -> bool:
    return audit.exists() and len(_routes(audit)) >= n


async def test_two_workers_route_relay_restart_and_revoke(keys: Keys, tmp_path: Path) -> None:
    audit, mport = tmp_path / "audit.log", free_port()
    async with scene(keys, tmp_path, bastion=False) as s:
        kw: dict[str, Any] = {"workers": 2, "audit_log": str(audit), "metrics_listen": str(mport)}
        async with _bastion(s, **kw) as bastion, s.agent_process():
            status = await _status(s)
            assert [w["up"] for w in status["workers"]] == [True, True]
            (name,) = status["names"]
            assert (name["name"], name["worker"]) == ("homebox", 1)  # the agent: 127.0.0.1
            # A client on worker 0 reaches the name held on worker 1 (relayed), and one on 1.
            far, near = _from(s, FAR), _from(s, NEAR)
            result = await s.reach(cfg=far)
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == b"through"
            assert (await s.reach(cfg=near)).returncode == 0

            async def audited() -> bool:  # a route is written when its channel has closed
                routed = {(r["from"].split(":")[0], r["worker"]) for r in _routes(audit)}
                return routed == {(FAR, 0), (NEAR, 1)}

            await _until(audited)

            async def summed() -> bool:  # metrics: both workers' numbers, and each worker
                _, values = await scrape(mport)
                return (
                    values.get("sshtun_bastion_published_names") == 1
                    and values.get('sshtun_bastion_worker_up{worker="0"}') == 1
                    and values.get('sshtun_bastion_worker_up{worker="1"}') == 1
                    and values.get('sshtun_bastion_routed_connections_total{outcome="ok"}', 0) >= 2
                )

            await _until(summed)
            # kill -9 worker 0: a session through worker 1 keeps flowing; worker 0 comes back.
            async with s.stream(near) as stream:
                await stream.wait_lines(3)
                os.kill(status["workers"][0]["pid"], signal.SIGKILL)
                await bastion.wait_log("worker died", "worker=0")

                async def back() -> bool:
                    rows = (await _status(s))["workers"]
                    return bool(rows[0]["up"] and rows[0]["restarts"] == 1)

                await _until(back)
                await stream.more(5)
                result = await s.reach(cfg=far)
                assert result.returncode == 0, result.stderr
                assert (await stream.finish()).returncode == 0
            # kill -9 the agent's worker: its route leaves the table at once, the agent
            # reconnects (to the restarted worker 1, by its source) and serves again.
            os.kill((await _status(s))["workers"][1]["pid"], signal.SIGKILL)
            await bastion.wait_log("worker died", "worker=1")
            assert (await s.reach(cfg=far)).returncode != 0

            async def served() -> bool:
                found = await _status(s)
                return [(n["name"], n["worker"]) for n in found["names"]] == [("homebox", 1)]

            await _until(served)
            assert (await s.reach(cfg=far)).returncode == 0
            # Reload merged across workers: alice's key revoked on both.
            s.access.write_text(access_text(keys).splitlines()[0] + "\n")
            answer = await query(s.keys.dir / f"bastion-{s.port}.sock", {"cmd": "reload"})
            assert answer["ok"] and answer["workers"] == 2 and answer["keys"] == 1
            for cfg in (far, near):
                assert (await s.reach(cfg=cfg)).returncode != 0
            # SIGTERM (to the supervisor only, or to every process as systemd does): the
            # workers drain and end, the supervisor exits 0.
            pids = [w["pid"] for w in (await _status(s))["workers"]]
            for pid in pids:
                os.kill(pid, signal.SIGTERM)  # ignored by a worker: its supervisor decides
            assert await bastion.stop() == 0
            for pid in pids:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)


async def test_a_restarted_worker_gets_a_table_of_many_names(keys: Keys, tmp_path: Path) -> None:
    """The supervisor hands a (re)started worker every route: 600 names are far more than
    one 64 KiB control line (and a status answer over 64 KiB). Worker 0 is killed and
    comes back; a client on it reaches a name held on worker 1 through the relay."""
    count = 600
    async with scene(keys, tmp_path, bastion=False) as s:
        s.access.write_text(access_text(keys, listen="*.many.test:22", open_="*.many.test:22"))
        async with _bastion(s, workers=2) as bastion:
            agent = await _login(s, keys.agent.path, NEAR)  # publishes from worker 1
            try:
                for i in range(count):
                    await agent.forward_remote_port(f"n{i}.many.test", 22, "127.0.0.1", s.home.port)

                async def published() -> bool:
                    answer = await _status(s)
                    assert answer.get("ok"), answer
                    return len(answer["names"]) == count

                await _until(published)
                os.kill((await _status(s))["workers"][0]["pid"], signal.SIGKILL)
                await bastion.wait_log("worker died", "worker=0")

                async def back() -> bool:
                    rows = (await _status(s))["workers"]
                    return bool(rows[0]["up"] and rows[0]["restarts"] == 1)

                await _until(back)
                client = await _login(s, keys.client.path, FAR)  # worker 0, restarted
                try:
                    reader, writer = await client.open_connection(f"n{count - 1}.many.test", 22)
                    banner = await asyncio.wait_for(reader.readline(), 30)
                    assert banner.startswith(b"SSH-2.0-OpenSSH"), banner
                    writer.close()
                finally:
                    client.close()
            finally:
                agent.close()


async def test_takeover_and_per_key_cap_across_workers(keys: Keys, tmp_path: Path) -> None:
    """The agent key publishing again from another worker takes the name over (the old
    route on standby, serving again when the new one leaves); a key's connection cap
    counts its connections on every worker."""
    audit = tmp_path / "audit.log"
    limits = {"max_connections_per_key": 1}
    bastion_kw: dict[str, Any] = {"workers": 2, "audit_log": str(audit), "limits": limits}
    async with scene(keys, tmp_path, bastion=False) as s, _bastion(s, **bastion_kw):
        async with s.agent_process():  # from 127.0.0.1: worker 1
            first = (await _status(s))["names"][0]["conn"]
            assert SSH is not None
            cfg = _from(s, FAR, "stock-agent", identity=keys.agent.path)
            forward = ["-N", "-o", "ExitOnForwardFailure=yes", "-R", f"homebox:22:{s.target}"]
            # The agent key has one connection on worker 1: its cap refuses one on 0.
            async with process(SSH, "-F", str(cfg), *forward, "bastion") as stock:
                assert await asyncio.wait_for(stock.wait(), 30) != 0
            limits["max_connections_per_key"] = 2
            s.bastion_file(workers=2, audit_log=str(audit), limits=limits)
            await query(s.keys.dir / f"bastion-{s.port}.sock", {"cmd": "reload"})
            async with process(SSH, "-F", str(cfg), *forward, "bastion") as stock:

                async def taken() -> bool:
                    names = (await _status(s))["names"]
                    return {(n["worker"], n["serving"]) for n in names} == {
                        (0, True),
                        (1, False),
                    }

                await _until(taken)
                shown = await sshtun("status", "--config", str(s.tmp / "bastion.toml"))
                assert shown.returncode == 0, shown.stderr
                assert shown.stdout.decode().count("homebox") >= 2  # a route on each worker
                assert (await s.reach(cfg=_from(s, NEAR))).returncode == 0
                await _until(lambda: _count(audit, 1))
                assert _routes(audit)[-1]["agent_conn"] != first  # the newest: worker 0
                stock.send_signal(signal.SIGTERM)
                await stock.wait()

            async def back() -> bool:
                names = (await _status(s))["names"]
                return [(n["conn"], n["serving"]) for n in names] == [(first, True)]

            await _until(back)
            assert (await s.reach(cfg=_from(s, FAR))).returncode == 0
            await _until(lambda: _count(audit, 2))
            assert _routes(audit)[-1]["agent_conn"] == first
        # The client key's cap (1) holds across workers too.

        async def login(source: str) -> asyncssh.SSHClientConnection:
            return await _login(s, keys.client.path, source)

        limits["max_connections_per_key"] = 1
        s.bastion_file(workers=2, audit_log=str(audit), limits=limits)
        await query(s.keys.dir / f"bastion-{s.port}.sock", {"cmd": "reload"})
        async with await login(FAR) as held:
            second = await login(NEAR)
            await asyncio.wait_for(second.wait_closed(), 30)  # refused after login
            assert not held.is_closed()


async def test_key_rotation_on_one_worker_reaches_every_worker(keys: Keys, tmp_path: Path) -> None:
    """``sshtun keys rotate`` (agent stopped: over its own connection, from 127.0.0.1, so
    worker 1 rewrites the access file): worker 0 refuses the old key and takes the new one
    at once, because every worker re-read the file before the rotation answered."""
    async with scene(keys, tmp_path, bastion=False) as s, _bastion(s, workers=2):
        agent_toml = s.agent_file([("homebox", 22, "127.0.0.1:1")])
        old_copy = tmp_path / "old_agent_key"
        old_copy.write_bytes(keys.agent.path.read_bytes())
        old_copy.chmod(0o600)
        assert await _logs_in(s, old_copy, FAR)
        rotate = ["keys", "rotate", "--config", str(agent_toml), "--drain", "10"]
        result = await sshtun(*rotate, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "rotated:" in result.stdout.decode()
        for source in (FAR, NEAR):
            assert not await _logs_in(s, old_copy, source)
            assert await _logs_in(s, keys.agent.path, source)


async def test_stop_drains_a_session_relayed_between_workers(keys: Keys, tmp_path: Path) -> None:
    """SIGTERM on the supervisor: a session relayed from worker 0 (the client) to worker 1
    (the agent) keeps flowing until it ends, on both sides, then everything exits 0."""
    async with (
        scene(keys, tmp_path, bastion=False) as s,
        _bastion(s, workers=2, shutdown_grace=60.0) as bastion,
        s.agent_process(),
    ):
        async with s.stream(_from(s, FAR)) as stream:
            await stream.wait_lines(3)
            start = bastion.mark()
            bastion.send_signal(signal.SIGTERM)
            await bastion.wait_log("draining", "worker=0", start=start)
            await bastion.wait_log("draining", "worker=1", start=start)
            await stream.more(10)
            done = await stream.finish()
            assert done.returncode == 0 and done.stdout == stream.expected()
        assert await bastion.wait(60) == 0


async def test_a_worker_that_cannot_start_stops_the_bastion(keys: Keys, tmp_path: Path) -> None:
    """A worker that fails before it serves (here: no host key file) is not restarted in a
    loop: the supervisor exits with the worker's status and says so."""
    async with scene(keys, tmp_path, bastion=False, home=False) as s:
        toml = s.bastion_file(workers=2, host_key=str(tmp_path / "missing_host_key"))
        async with sshtun_process("bastion", "--config", str(toml), check=False) as bastion:
            status = await bastion.wait(120)
            assert status != 0
            assert bastion.logged("failed to start")


def test_workers_key(keys: Keys, tmp_path: Path) -> None:
    """``workers``: a number from 1, or "auto" (the cores this process may run on)."""
    access = tmp_path / "access"
    assert bastion_config(keys, access).worker_count == 1  # the default: one process
    auto = bastion_config(keys, access, workers="auto")
    assert auto.worker_count == len(os.sched_getaffinity(0))
    for bad in (0, "2", "many"):
        with pytest.raises(ValueError, match="workers"):
            bastion_config(keys, access, workers=bad)
