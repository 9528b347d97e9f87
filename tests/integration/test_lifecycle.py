"""One service lifecycle for both roles (``runtime.service``): a start-up failure leaves
nothing behind, a reload that raises does not end reloading, a second SIGINT forces the
stop, and no task outlives ``serve()``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshtunnel_mgr.agent import serve as agent_serve
from sshtunnel_mgr.agent.link import BastionLink
from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.bastion.run import serve as bastion_serve
from sshtunnel_mgr.core.config import AgentConfig
from sshtunnel_mgr.core.errors import EXIT_FORCED, SshtunError
from sshtunnel_mgr.runtime.admin import query
from tests.harness import (
    SSH,
    Keys,
    access_text,
    agent_config,
    bastion_config,
    free_port,
    process,
    run_ssh,
    running_bastion,
    wait_for,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


@pytest.mark.parametrize("taken", ["listen", "metrics", "host key"])
async def test_a_start_up_failure_leaves_no_admin_socket_no_port_and_no_task(
    keys: Keys, tmp_path: Path, taken: str
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    admin = keys.dir / "bastion.sock"
    with taken_port() as busy:
        port = busy if taken == "listen" else free_port()
        metrics = busy if taken == "metrics" else free_port()
        cfg = bastion_config(keys, access, port, admin_socket=admin, metrics_listen=str(metrics))
        if taken == "host key":
            keys.bastion_host_path.write_text("not a key\n")
        hup = asyncio.Event()
        with pytest.raises(SshtunError):  # ConfigError, or KeyFileError for the host key
            await bastion_serve(cfg, asyncio.Event(), reload=hup)
        assert not admin.exists()  # the admin socket was started, and removed again
        if taken != "metrics":
            assert not listening(metrics)
        if taken != "listen":
            assert not listening(port)
        assert other_tasks() == set()  # no orphaned reload loop, accept loop or server


async def test_a_reload_that_raises_is_logged_and_answered_and_the_next_one_works(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent on SIGHUP (its event), the bastion over the admin socket (`sshtun reload`)."""
    access = tmp_path / "access"
    access.write_text(access_text(keys, listen="homebox:22,nas:22"))
    bcfg = bastion_config(keys, access, free_port())
    failures = iter([RuntimeError("a bug in sync_tunnels")])
    real_sync = BastionLink.sync_tunnels

    async def sync_once_broken(self: BastionLink, config: AgentConfig) -> dict[str, list[str]]:
        for exc in failures:
            raise exc
        return await real_sync(self, config)

    monkeypatch.setattr(BastionLink, "sync_tunnels", sync_once_broken)
    async with running_bastion(bcfg) as bastion:
        acfg = agent_config(keys, bastion.port, [("homebox", 22, "127.0.0.1:9")])
        wanted = acfg.model_copy(
            update={"tunnels": [*acfg.tunnels, acfg.tunnels[0].model_copy(update={"name": "nas"})]}
        )
        stop, hup = asyncio.Event(), asyncio.Event()
        agent = asyncio.create_task(agent_serve(acfg, stop, reload=hup, load=lambda: wanted))
        try:
            await wait_for(lambda: bastion.state.routes.lookup("homebox", 22))
            hup.set()
            await wait_for(lambda: logged(caplog, "reload failed", "a bug in sync_tunnels"))
            assert not agent.done()
            hup.set()  # the next SIGHUP is still served
            await wait_for(lambda: bastion.state.routes.lookup("nas", 22))
        finally:
            stop.set()
            await asyncio.wait_for(agent, 15)

    # The bastion: a reload over the admin socket that raises gets an answer, not silence.
    admin = keys.dir / "lifecycle-bastion.sock"
    bcfg = bcfg.model_copy(update={"admin_socket": admin})
    apply_failures = iter([RuntimeError("a bug in apply")])
    real_apply = Bastion._apply

    def apply_once_broken(self: Bastion, files: object) -> dict[str, object]:
        for exc in apply_failures:
            raise exc
        return real_apply(self, files)  # type: ignore[arg-type]

    monkeypatch.setattr(Bastion, "_apply", apply_once_broken)
    stop = asyncio.Event()
    ready = asyncio.Event()
    served = asyncio.create_task(
        bastion_serve(bcfg, stop, lambda _: ready.set(), load=lambda: bcfg)
    )
    try:
        await asyncio.wait_for(ready.wait(), 15)
        answer = await query(admin, {"cmd": "reload"})
        assert answer["ok"] is False and "a bug in apply" in answer["error"]
        assert (await query(admin, {"cmd": "reload"}))["ok"] is True
    finally:
        stop.set()
        await asyncio.wait_for(served, 15)


async def test_sigint_drains_and_a_second_sigint_stops_at_once(keys: Keys, tmp_path: Path) -> None:
    """A real `sshtun bastion`: the first SIGINT drains (a routed session keeps flowing),
    the second cuts it and the process exits with EXIT_FORCED."""
    async with (
        scene(keys, tmp_path, bastion=False) as s,
        s.bastion_process(shutdown_grace=300, admin_socket=keys.dir / "b.sock") as bastion,
        s.agent_process() as agent,
    ):
        client = s.client_cfg
        assert SSH is not None
        script = "for i in $(seq 1 6000); do echo line$i; sleep 0.05; done"
        async with process(SSH, "-F", str(client), "homebox", script) as ssh:
            assert ssh.stdout is not None
            assert await asyncio.wait_for(ssh.stdout.readline(), 30) == b"line1\n"
            bastion.send_signal(signal.SIGINT)
            await bastion.wait_log("draining routed_channels=1")
            # Draining: the session still flows, line after line.
            for _ in range(5):
                assert (await asyncio.wait_for(ssh.stdout.readline(), 30)).startswith(b"line")
            assert bastion.returncode is None
            bastion.send_signal(signal.SIGINT)
            assert await bastion.wait(30) == EXIT_FORCED
            rest = await asyncio.wait_for(ssh.stdout.read(), 30)
            assert b"line6000" not in rest  # cut, not finished
            assert await asyncio.wait_for(ssh.wait(), 30) != 0
        await bastion.wait_log("stopped at once by a second signal")
        assert bastion.logged("forced stop")
        assert not (keys.dir / "b.sock").exists()
        agent.send_signal(signal.SIGTERM)
        assert await agent.wait(30) == 0


async def test_no_task_is_left_when_serve_returns(keys: Keys, tmp_path: Path) -> None:
    async with scene(keys, tmp_path, bastion=False) as s:
        client = s.client_cfg
        bcfg = s.bastion_config(metrics_listen=str(free_port()))
        bstop, hup = asyncio.Event(), asyncio.Event()
        bastion_ready = asyncio.Event()
        bastions: list[Bastion] = []

        def on_ready(b: Bastion) -> None:
            bastions.append(b)
            bastion_ready.set()

        before = other_tasks()
        served = asyncio.create_task(
            bastion_serve(bcfg, bstop, on_ready, reload=hup, load=lambda: bcfg)
        )
        await asyncio.wait_for(bastion_ready.wait(), 15)
        acfg = s.agent_config(metrics_listen=str(free_port()), probe_interval=0.2)
        astop = asyncio.Event()
        agent = asyncio.create_task(agent_serve(acfg, astop))
        await wait_for(lambda: bastions[0].state.routes.lookup("homebox", 22))
        assert (await run_ssh(client, "homebox", "echo hi")).stdout == b"hi\n"
        hup.set()  # one reload through the loop
        await wait_for(lambda: not hup.is_set())
        stream = asyncio.create_task(run_ssh(client, "homebox", "sleep 30"))
        await wait_for(lambda: bastions[0].state.routed_channels() == 1)
        astop.set()
        bstop.set()
        await asyncio.wait_for(asyncio.gather(agent, served), 30)
        left = {
            t
            for t in other_tasks() - before - {stream}
            # the test's own ssh client (run_ssh), not the service's
            if not t.get_coro().__qualname__.startswith("Process.")  # type: ignore[union-attr]
        }
        assert left == set()
        assert (await asyncio.wait_for(stream, 30)).returncode != 0
