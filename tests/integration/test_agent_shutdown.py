"""An agent stopped in the middle of its background work leaves no task behind: a link's
``run`` returns only once the home host key announcement it started and the drain of the
connection a hand-over left have ended, and the agent's ``stop`` only once a key
rotation's retiring has. Otherwise the tasks were only cancelled, and ended (or, with the
loop closed first, were destroyed while pending) after their owner had said it stopped.

The admin socket likewise: its ``stop`` lets a request being answered finish for a grace
period, then cancels it and waits for it (asyncio's ``wait_closed`` waits for none of them
on Python 3.11, so a request could run on after the service had stopped).

Real peers: an in-process sshtun bastion, the agent's link (or the whole agent) and a
routed session through it; the home target is a TCP service that never sends an SSH
banner, so the announcement of its host key stays in flight. No sleeps: each step waits
on what it observes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sshtunnel_mgr.agent.link import BastionLink
from sshtunnel_mgr.keys.store import key_fingerprint, load_private_key
from sshtunnel_mgr.runtime import admin
from sshtunnel_mgr.runtime.admin import AdminServer, query
from tests.harness import Keys, access_text, agent_config, running_agent, wait_for
from tests.integration.scene import Scene, scene, tcp_service

BACKGROUND = ("Publisher._announce_home_key", "Retiring._retire", "Rotator._retire_all")


@contextlib.asynccontextmanager
async def quiet_home() -> AsyncIterator[tuple[int, list[asyncio.Event]]]:
    """A home target that echoes and never sends an SSH banner (so the agent's host key
    announcement waits on it); one event per connection, set when it is accepted."""
    accepted: list[asyncio.Event] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(asyncio.Event())
        accepted[-1].set()
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async with tcp_service(serve) as port:
        yield port, accepted


def background(before: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    """The agent's background tasks started since ``before``."""
    return [
        t
        for t in asyncio.all_tasks() - before
        if getattr(t.get_coro(), "__qualname__", "") in BACKGROUND
    ]


def loop_complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


async def routed_session(s: Scene, keys: Keys) -> Callable[[], None]:
    """A routed session to homebox:22 through the bastion, echoing; returns its closer."""
    alice = await s.connect(keys.client.path)
    reader, writer = await alice.open_connection("homebox", 22)
    writer.write(b"ping\n")
    assert await asyncio.wait_for(reader.readline(), 15) == b"ping\n"
    return alice.close


def rotation_access(keys: Keys) -> tuple[str, Path]:
    new = keys.extra("agent_next")
    extra = [f'permitlisten="homebox:22" {new.public_line}']
    return access_text(keys, extra=extra), new.path


async def test_a_link_stopped_mid_announcement_and_mid_drain_leaves_no_task(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    access, new_key = rotation_access(keys)
    async with scene(keys, tmp_path, access=access, home=False) as s, quiet_home() as (home, seen):
        cfg = agent_config(
            keys, s.bastion.port, [("homebox", 22, f"127.0.0.1:{home}")], connect_timeout=60
        )
        link = BastionLink(cfg, cfg.bastions[0], load_private_key(keys.agent.path))
        before = asyncio.all_tasks()
        stop = asyncio.Event()
        run = asyncio.create_task(link.run(stop))
        await wait_for(lambda: link.status.state == "up")
        await wait_for(lambda: len(seen) == 1)  # the announcement waits for a banner
        close_session = await routed_session(s, keys)
        answer = await link.hand_over(load_private_key(new_key), None)
        assert answer["ok"] and answer["sessions"] == 1, answer
        assert link.draining_sessions() == 1  # the old connection drains in the background
        pending = background(before)
        kinds = {t.get_coro().__qualname__ for t in pending}  # type: ignore[union-attr]
        assert kinds == {"Publisher._announce_home_key", "Retiring._retire"}
        stop.set()
        await asyncio.wait_for(run, 30)
        assert [t for t in pending if not t.done()] == []
        assert link.draining_sessions() == 0
        close_session()
    assert loop_complaints(caplog) == []


async def test_an_agent_stopped_while_retiring_the_old_key_leaves_no_task(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    new_key = keys.extra("agent_next").path  # enrolled by the rotation itself
    async with scene(keys, tmp_path, home=False) as s, quiet_home() as (home, seen):
        cfg = agent_config(keys, s.bastion.port, [("homebox", 22, f"127.0.0.1:{home}")])
        before = asyncio.all_tasks()
        left_at_stop: list[asyncio.Task[object]] = []
        async with running_agent(cfg) as running:
            agent = running.agent
            close_session = await routed_session(s, keys)
            new = load_private_key(new_key)
            request = {"cmd": "rotate", "key_data": new.export_private_key().decode()}
            answer = await agent.handle_admin({**request, "retire": True})
            assert answer["ok"] and answer["retiring"]["links"][0]["state"] == "draining"
            assert key_fingerprint(agent.key) == answer["key"]
            pending = background(before)
            assert "Rotator._retire_all" in [
                t.get_coro().__qualname__  # type: ignore[union-attr]
                for t in pending
            ]
            stop = agent.stop

            async def stop_and_look(grace: float | None) -> None:
                await stop(grace)
                left_at_stop.extend(t for t in pending if not t.done())

            monkeypatch.setattr(agent, "stop", stop_and_look)
        assert left_at_stop == []  # nothing was still running when the agent said it stopped
        close_session()
        assert len(seen) >= 1
    assert loop_complaints(caplog) == []


@contextlib.asynccontextmanager
async def held_admin(tmp_path: Path) -> AsyncIterator[tuple[AdminServer, asyncio.Event, list[str]]]:
    """An admin socket whose handler waits for the returned event; ``ends`` gets one
    entry per request as its handler ends ("answered" or "cancelled")."""
    release = asyncio.Event()
    ends: list[str] = []

    async def handler(request: dict[str, object]) -> dict[str, object]:
        try:
            await release.wait()
        except asyncio.CancelledError:
            ends.append("cancelled")
            raise
        ends.append("answered")
        return {"ok": True, "cmd": request.get("cmd")}

    server = AdminServer(tmp_path / "run" / "admin.sock", handler)
    assert await server.start()
    try:
        yield server, release, ends
    finally:
        release.set()  # a test that failed half-way leaves no request behind either
        await server.stop()


def admin_requests(before: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks() - before
        if getattr(t.get_coro(), "__qualname__", "") == "AdminServer._serve"
    ]


async def test_the_admin_socket_stopped_lets_a_request_finish_within_its_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "STOP_GRACE", 60.0)
    async with held_admin(tmp_path) as (server, release, ends):
        before = asyncio.all_tasks()
        asked = asyncio.create_task(query(server.path, {"cmd": "status"}, timeout=60))
        await wait_for(lambda: len(admin_requests(before)) == 1)
        [serving] = admin_requests(before)
        stopping = asyncio.create_task(server.stop())
        await wait_for(lambda: not server.path.exists())  # no longer listening
        assert not stopping.done()  # ... but the request is still being answered
        release.set()
        await asyncio.wait_for(stopping, 30)
        assert serving.done() and ends == ["answered"]
        assert await asyncio.wait_for(asked, 30) == {"ok": True, "cmd": "status"}


async def test_the_admin_socket_stopped_cancels_a_request_past_its_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "STOP_GRACE", 0.0)
    async with held_admin(tmp_path) as (server, _release, ends):
        before = asyncio.all_tasks()
        asked = asyncio.create_task(query(server.path, {"cmd": "rotate"}, timeout=60))
        await wait_for(lambda: len(admin_requests(before)) == 1)
        [serving] = admin_requests(before)
        await asyncio.wait_for(server.stop(), 30)
        # Nothing outlives the stop: the handler was cancelled and its task has ended.
        assert serving.done() and ends == ["cancelled"]
        answer = await asyncio.wait_for(asked, 30)
        assert answer == {"ok": False, "error": "the service stopped before it answered"}
