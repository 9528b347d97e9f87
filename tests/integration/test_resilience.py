"""Real restarts and real failures: the tunnel comes back by itself and names never stick."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest

from tests.harness import Keys, free_port, home_sshd, wait_for
from tests.integration.conftest import logged
from tests.integration.scene import scene

FAST = {"base": 0.1, "cap": 0.5, "healthy_after": 30}


async def test_bastion_killed_and_restarted_agent_reconnects(keys: Keys, tmp_path: Path) -> None:
    async with (
        scene(keys, tmp_path, bastion=False) as s,
        s.bastion_process() as first,
        s.agent(backoff=FAST) as agent,
    ):
        result = await s.reach("echo before")
        assert result.stdout == b"before\n", result.stderr
        link = agent.agent.links[0]
        first.send_signal(signal.SIGKILL)
        await first.wait()
        await wait_for(lambda: link.status.state in ("backoff", "connecting"))
        async with s.bastion_process():
            await wait_for(lambda: link.status.connects == 2 and link.status.state == "up")
            result = await s.reach("echo after")
            assert result.stdout == b"after\n", result.stderr


async def test_agent_killed_frees_its_name_and_a_restarted_agent_takes_it(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(keys, tmp_path) as s:
        bastion = s.bastion
        acfg = s.agent_file()
        async with s.agent_process(acfg) as agent:
            assert bastion.state.routes.lookup("homebox", 22)
            agent.send_signal(signal.SIGKILL)
            await agent.wait()
        await s.wait_route(gone=True)
        assert logged(caplog, "unpublish", "name=homebox")
        result = await s.ssh("-o", "LogLevel=INFO", "-W", "homebox:22", "bastion")
        assert result.returncode == 255
        assert "homebox:22 is not published" in result.stderr
        async with s.agent_process(acfg):
            result = await s.reach("echo back")
            assert result.stdout == b"back\n", result.stderr


async def test_same_key_takes_over_from_a_stale_session_at_once(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen agent (SIGSTOP: its TCP connection stays open) must not block its name."""
    async with scene(keys, tmp_path) as s:
        bastion = s.bastion
        async with s.agent_process() as stale:
            [old] = bastion.state.routes.lookup("homebox", 22)
            stale.send_signal(signal.SIGSTOP)  # killed at teardown if the test fails
            async with s.agent():
                [new] = bastion.state.routes.lookup("homebox", 22)
                assert new.conn_id != old.conn_id
                assert logged(
                    caplog,
                    "takeover",
                    "name=homebox",
                    f"old_conn={old.conn_id}",
                    f"new_conn={new.conn_id}",
                )
                result = await s.reach("echo new-session")
                assert result.stdout == b"new-session\n", result.stderr
                # The stale connection finally dies: the new route stays.
                stale.send_signal(signal.SIGKILL)
                await stale.wait()
                await wait_for(lambda: old.conn_id not in bastion.state.connections)
                assert [r.conn_id for r in bastion.state.routes.lookup("homebox", 22)] == [
                    new.conn_id
                ]


async def test_keepalives_drop_a_dead_agent(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(
        keys, tmp_path, home=False, keepalive_interval=0.3, keepalive_count_max=2
    ) as s:
        bastion = s.bastion
        async with s.agent_process(tunnels=[("homebox", 22, "127.0.0.1:9")]) as agent:
            agent.send_signal(signal.SIGSTOP)
            await wait_for(lambda: not bastion.state.routes.lookup("homebox", 22), timeout=20)
            assert not bastion.state.connections
            assert logged(caplog, "disconnect", keys.agent.fingerprint)


async def test_local_target_down_refuses_the_channel_and_the_tunnel_survives(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home_port = free_port()  # nothing listens there yet
    async with (
        scene(keys, tmp_path, home=False) as s,
        s.agent([("homebox", 22, f"127.0.0.1:{home_port}")]) as agent,
    ):
        result = await s.ssh("-o", "LogLevel=INFO", "-W", "homebox:22", "bastion")
        assert result.returncode == 255
        assert "homebox:22: the home side refused" in result.stderr
        assert logged(caplog, "refused open", "the home side refused")
        async with home_sshd(keys, tmp_path / "home", port=home_port):
            result = await s.reach("echo now-up")
            assert result.stdout == b"now-up\n", result.stderr
        link = agent.agent.links[0]
        assert link.status.connects == 1 and link.status.state == "up"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_agent_shuts_down_cleanly_on_signal(
    keys: Keys, tmp_path: Path, sig: signal.Signals
) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        async with s.agent_process(tunnels=[("homebox", 22, "127.0.0.1:9")]) as agent:
            agent.send_signal(sig)
            assert await agent.wait(10) == 0
        await wait_for(lambda: not s.bastion.state.connections)


async def test_bulk_64_mib_each_way_arrives_intact(keys: Keys, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    with blob.open("wb") as handle:
        for _ in range(64):
            handle.write(os.urandom(1 << 20))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    async with scene(keys, tmp_path) as s, s.agent():
        down = await s.reach(f"cat {blob}", timeout=120)
        assert down.returncode == 0, down.stderr
        assert len(down.stdout) == 64 << 20
        assert hashlib.sha256(down.stdout).hexdigest() == digest
        up = await s.ssh("homebox", "sha256sum", stdin=blob.read_bytes(), timeout=120)
        assert up.returncode == 0, up.stderr
        assert up.stdout.decode().split()[0] == digest
