"""Floods against the bastion with real peers on loopback (issue 8, items 3 and 4).

- A key-exchange flood (raw sockets from 49 source addresses, asking for the most
  expensive key exchange offered, never finishing) must not starve an established tunnel:
  the agent (a real ``sshtun up`` process) keeps its connection and its name, and a real
  ``ssh -J`` from another address gets through during the flood and right after it.
- A burst of parallel ``ssh -J`` from one address all get through: connections beyond the
  per-source cap wait (no banner, nothing read) instead of being dropped; beyond the queue
  bounds they are dropped, and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.bastion.metricsview import bastion_metrics
from sshtunnel_mgr.keys.store import load_private_key
from sshtunnel_mgr.runtime.metrics import bastion_samples
from tests.harness import (
    SSHTUN,
    Keys,
    access_text,
    agent_config,
    bastion_config,
    bastion_pub,
    home_sshd,
    process,
    run_ssh,
    running_agent,
    running_bastion,
    wait_for,
    write_ssh_config,
    write_toml,
)
from tests.integration.conftest import logged

KEXFLOOD = Path(__file__).resolve().parents[1] / "kexflood.py"


def bind_client(cfg: Path, source: str, connect_timeout: int = 10) -> Path:
    """The bastion hop of an ssh config, from ``source`` (a loopback address)."""
    text = cfg.read_text()
    text = text.replace("Host bastion\n", f"Host bastion\n  BindAddress {source}\n", 1)
    text = text.replace("ConnectTimeout 10", f"ConnectTimeout {connect_timeout}")
    cfg.write_text(text)
    return cfg


@contextlib.asynccontextmanager
async def flooding(argv: list[str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """``tests/kexflood.py`` as its own process (its stdin kept open: closing it says stop);
    killed by its PID if it is still running when the block ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(KEXFLOOD),
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def drained(proc: asyncio.subprocess.Process) -> AsyncIterator[list[str]]:
    """Keep reading a child's stderr (a full pipe would stall it); its lines, for failures."""
    lines: list[str] = []

    async def drain() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            lines.append(raw.decode(errors="replace"))

    task = asyncio.create_task(drain())
    try:
        yield lines
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_key_exchange_flood_does_not_starve_an_established_tunnel(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion_config(keys, access)) as bastion,
    ):
        # A real agent process with tight keepalives: a stalled bastion loses it fast.
        acfg = agent_config(
            keys,
            bastion.port,
            [("homebox", 22, f"127.0.0.1:{home.port}")],
            keepalive_interval=1.0,
            keepalive_count_max=3,
        )
        afile = write_toml(tmp_path / "agent.toml", "agent", acfg)
        async with (
            process(*SSHTUN, "up", "--config", str(afile)) as agent,
            drained(agent) as agent_log,
        ):
            await wait_for(lambda: bastion.state.routes.lookup("homebox", 22), 30)
            (route,) = bastion.state.routes.lookup("homebox", 22)
            cfg = bind_client(
                write_ssh_config(tmp_path / "client", keys, bastion.port), "127.0.0.60"
            )
            ok = await run_ssh(cfg, "homebox", "echo before")
            assert ok.stdout == b"before\n", ok.stderr

            # 49 addresses x 10 workers; the flood runs until told to stop (stdin closed),
            # at least 6 s (several agent keepalive periods), at most 60 s.
            argv = ["--port", str(bastion.port), "--sources", "127.0.0.2-127.0.0.50"]
            argv += ["--per-source", "10", "--interval", "0.1", "--max-connections", "60000"]
            argv += ["--min-seconds", "6", "--max-seconds", "60"]
            async with flooding(argv) as flood:
                assert flood.stdout is not None and flood.stdin is not None
                assert await asyncio.wait_for(flood.stdout.readline(), 30) == b"started\n"
                # The flood is on: many connections not logged in at the bastion.
                await wait_for(lambda: len(bastion.state.connections) >= 40, 30)
                during = await run_ssh(cfg, "homebox", "echo during", timeout=60)
                flood.stdin.close()  # stop (after 6 s at least)
                counts = json.loads(await asyncio.wait_for(flood.stdout.readline(), 90))
                await flood.wait()
            after = await run_ssh(cfg, "homebox", "echo after", timeout=60)
            print("flood:", counts, "bastion:", dict(bastion.state.counters))

            assert during.stdout == b"during\n", during.stderr
            assert after.stdout == b"after\n", after.stderr
            assert counts.get("replies", 0) >= 49  # the bastion did answer key exchanges
            # The agent's link never dropped: the same connection still holds the name.
            assert [r.conn_id for r in bastion.state.routes.lookup("homebox", 22)] == [
                route.conn_id
            ]
            assert not logged(caplog, "unpublish name=homebox")
            assert agent.returncode is None, "".join(agent_log)


async def test_a_burst_of_parallel_ssh_from_one_address_all_get_through(
    keys: Keys, tmp_path: Path
) -> None:
    """50 parallel real `ssh -J` from 127.0.0.1, with the default startup limits (10 per
    source before logging in): the other 40 wait for a slot instead of being dropped. All 50
    use one key, within the default per-key connection cap (128)."""
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    config = bastion_config(keys, access)
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(config) as bastion,
        running_agent(
            agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home.port}")])
        ),
    ):
        # No ConnectTimeout of 10 s on the bastion hop: a queued connection waits for its
        # banner (OpenSSH's default is the TCP timeout).
        cfg = bind_client(
            write_ssh_config(tmp_path / "client", keys, bastion.port), "127.0.0.1", 120
        )
        results = await asyncio.gather(
            *(run_ssh(cfg, "homebox", f"echo {i}", timeout=120) for i in range(50))
        )
        ok = [r for i, r in enumerate(results) if r.stdout == f"{i}\n".encode()]
        counters = bastion.state.counters
        print(f"burst: {len(ok)}/50 ok; queued={counters['startup_queued']}")
        assert len(ok) == 50, [r.stderr for r in results if r not in ok][:3]
        assert counters["startup_queued"] > 0  # the queue, not luck, carried the burst
        assert counters["startup_refused"] == 0
        assert bastion.listener is not None
        assert bastion.listener.admission.total_waiting == 0
        samples = {
            (name, tuple(labels.items())): v
            for name, _, _, labels, v in bastion_samples(
                bastion_metrics(bastion.state, bastion.listener)
            )
        }
        assert samples[("sshtun_bastion_startup_events", (("outcome", "queued"),))] > 0
        assert samples[("sshtun_bastion_startups", (("state", "waiting"),))] == 0


async def test_beyond_the_queue_bounds_a_flood_is_dropped_unread(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Raw sockets from two loopback addresses: 2 may start per source, 3 may wait per
    source, 4 in all; the rest are closed before a byte is sent, and counted. A waiting
    connection starts (gets the banner, then logs in) when a slot of its source frees."""
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    limits = {
        "max_startups_per_source": 2,
        "startup_queue_per_source": 3,
        "startup_queue_total": 4,
    }
    async with running_bastion(bastion_config(keys, access, limits=limits)) as bastion:
        assert bastion.listener is not None
        admission = bastion.listener.admission

        async def open_from(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", bastion.port, local_addr=(source, 0))

        a_started = [await open_from("127.0.0.1") for _ in range(2)]
        for reader, _ in a_started:
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"SSH-2.0-sshtun")
        a_waiting = [await open_from("127.0.0.1") for _ in range(3)]
        await wait_for(lambda: admission.waiting("127.0.0.1") == 3)
        a_dropped = await open_from("127.0.0.1")  # its source's queue is full
        assert await asyncio.wait_for(a_dropped[0].read(), 10) == b""

        b_started = [await open_from("127.0.0.2") for _ in range(2)]
        for reader, _ in b_started:
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"SSH-2.0-sshtun")
        b_waiting = await open_from("127.0.0.2")
        await wait_for(lambda: admission.total_waiting == 4)
        b_dropped = await open_from("127.0.0.2")  # the total queue is full
        assert await asyncio.wait_for(b_dropped[0].read(), 10) == b""

        counters = bastion.state.counters
        assert (counters["startup_refused"], counters["startup_queued"]) == (2, 4)
        assert logged(caplog, "refused connection", "(max 2, and 3 waiting)")
        assert logged(caplog, "refused connection", "waiting to start (max 4)")
        assert len(bastion.state.connections) == 4  # only the started ones reached asyncssh

        # A started one leaves: the oldest waiting one of that source starts, and it is a
        # whole SSH connection (it logs in with the client key).
        a_started[0][1].close()
        first = a_waiting[0]
        assert (await asyncio.wait_for(first[0].readline(), 10)).startswith(b"SSH-2.0-sshtun")
        assert admission.waiting("127.0.0.1") == 2
        # A real client from the same address waits too (third in the queue), then logs in
        # once the slots ahead of it are freed.
        login = asyncio.ensure_future(
            asyncssh.connect(
                "127.0.0.1",
                bastion.port,
                username="alice",
                client_keys=[load_private_key(keys.client.path)],
                known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
                config=None,
                agent_path=None,
            )
        )
        await wait_for(lambda: admission.waiting("127.0.0.1") == 3)
        for _, writer in [a_started[1], first, a_waiting[1]]:
            writer.close()
        conn = await asyncio.wait_for(login, 30)
        assert conn.get_extra_info("username") == "alice"
        conn.close()
        for _, writer in [a_waiting[2], *b_started, b_waiting, a_dropped, b_dropped]:
            writer.close()
        await wait_for(lambda: admission.total_active == 0 and admission.total_waiting == 0)


async def test_own_listeners_serve_ipv4_and_ipv6_and_stop_closes_waiting_connections(
    keys: Keys, tmp_path: Path
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    config = bastion_config(keys, access, limits={"max_startups_per_source": 1})
    config = config.model_copy(update={"listen": ["127.0.0.1:0", "[::1]:0"]})
    bastion = Bastion(config)
    await bastion.start()
    stopped = False
    try:
        assert [h for h, _ in bastion.addresses] == ["127.0.0.1", "::1"]
        for host, port in bastion.addresses:
            async with asyncssh.connect(
                host,
                port,
                username="alice",
                client_keys=[load_private_key(keys.client.path)],
                known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
                config=None,
                agent_path=None,
            ) as conn:
                assert conn.get_extra_info("username") == "alice"
        assert bastion.listener is not None
        admission = bastion.listener.admission
        host, port = bastion.addresses[1]
        started = await asyncio.open_connection(host, port)
        assert (await asyncio.wait_for(started[0].readline(), 10)).startswith(b"SSH-2.0-sshtun")
        waiting = await asyncio.open_connection(host, port)
        await wait_for(lambda: admission.waiting("::1") == 1)
        await bastion.stop()
        stopped = True
        # Stopped: the waiting connection is closed without a byte; nothing listens.
        assert await asyncio.wait_for(waiting[0].read(), 10) == b""
        assert admission.total_waiting == 0
        with pytest.raises(OSError):
            await asyncio.open_connection(host, port)
        for _, writer in (started, waiting):
            writer.close()
    finally:
        if not stopped:
            await bastion.stop()


async def test_a_connection_waits_at_most_login_timeout(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One may start per source. The started one holds its slot (login_timeout 60 s when
    it arrived); after a reload to login_timeout 0.5 s, a new connection of the same source
    waits at most that long, then is closed without a byte."""
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    config = bastion_config(keys, access, limits={"max_startups_per_source": 1})
    async with running_bastion(config) as bastion:
        assert bastion.listener is not None
        admission = bastion.listener.admission
        started = await asyncio.open_connection("127.0.0.1", bastion.port)
        assert (await asyncio.wait_for(started[0].readline(), 10)).startswith(b"SSH-2.0-sshtun")
        limits = config.limits.model_copy(update={"login_timeout": 0.5})
        assert bastion.reload(config.model_copy(update={"limits": limits}))["ok"]
        waiting = await asyncio.open_connection("127.0.0.1", bastion.port)
        await wait_for(lambda: bastion.state.counters["startup_queued"] == 1)
        assert await asyncio.wait_for(waiting[0].read(), 30) == b""
        assert bastion.state.counters["startup_wait_expired"] == 1
        assert admission.waiting("127.0.0.1") == 0
        assert admission.active("127.0.0.1") == 1
        assert logged(caplog, "refused connection", "waited login_timeout for a slot")
        for _, writer in (started, waiting):
            writer.close()
