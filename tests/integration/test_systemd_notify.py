"""sd_notify on a real notify socket: READY only once a name is published, WATCHDOG only
while the probe through the real forwarded path succeeds."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.harness import (
    Keys,
    running_bastion,
    wait_for,
)
from tests.integration.scene import scene, sshtun_process


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                break
        self.messages.extend(got)
        return got

    def count(self, text: str) -> int:
        self.drain()
        return sum(text in m for m in self.messages)

    def seen(self, text: str) -> bool:
        self.drain()
        return any(text in m for m in self.messages)


@contextlib.asynccontextmanager
async def tcp_target() -> AsyncIterator[tuple[asyncio.Server, int]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server, server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.sock.close()


async def test_ready_after_publish_and_watchdog_only_while_healthy(
    keys: Keys, tmp_path: Path, notify: NotifySocket
) -> None:
    async with (
        tcp_target() as (target, target_port),
        scene(keys, tmp_path, home=False, bastion=False) as s,
    ):
        acfg = s.agent_file(
            [("homebox", 22, f"127.0.0.1:{target_port}")],
            backoff={"base": 0.1, "cap": 0.3},
            probe_interval=0.3,
        )
        env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"}
        async with sshtun_process("up", "--config", str(acfg), env=env) as agent:
            lines = agent.lines
            # No bastion yet: the agent retries, and says nothing is ready.
            await wait_for(lambda: sum("link down" in line for line in lines) >= 2)
            assert not notify.seen("READY=1")
            assert not notify.seen("WATCHDOG=1")
            async with running_bastion(s.bastion_config()):
                await wait_for(lambda: notify.seen("READY=1"))
                await wait_for(lambda: notify.seen("WATCHDOG=1"))
                assert notify.seen("STATUS=127.0.0.1:")
                assert notify.seen("up homebox:22")
                # The local target goes down: the probe fails and the watchdog stops.
                target.close()
                await target.wait_closed()
                await wait_for(lambda: any("probe failed" in line for line in lines))
                notify.drain()
                notify.messages.clear()
                await wait_for(lambda: notify.seen("(unhealthy)"))
                notify.messages.clear()
                await wait_for(lambda: sum("probe failed" in line for line in lines) >= 4)
                assert not notify.seen("WATCHDOG=1")
                agent.send_signal(signal.SIGTERM)
                assert await agent.wait(10) == 0
            assert notify.seen("STOPPING=1")


async def test_bastion_notifies_ready_when_listening(
    keys: Keys, tmp_path: Path, notify: NotifySocket
) -> None:
    async with scene(keys, tmp_path, home=False, bastion=False) as s:
        cfg = s.bastion_file()
        env = {"NOTIFY_SOCKET": str(notify.path)}
        async with sshtun_process("bastion", "--config", str(cfg), env=env) as bastion:
            await wait_for(lambda: notify.seen("READY=1"))
            assert notify.seen("STATUS=listening on 127.0.0.1:")
            bastion.send_signal(signal.SIGTERM)
            assert await bastion.wait(10) == 0
        assert notify.seen("STOPPING=1")


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "x"},
        {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"},
    ],
)
def test_watchdog_interval_only_for_this_process(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    from sshtunnel_mgr.runtime import systemd

    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert systemd.watchdog_interval() is None


def test_notify_never_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sshtunnel_mgr.runtime import systemd

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@abstract-sshtun-test-none")
    assert systemd.notify("READY=1") is False


async def test_bastion_pings_the_watchdog(keys: Keys, tmp_path: Path, notify: NotifySocket) -> None:
    async with scene(keys, tmp_path, home=False, bastion=False) as s:
        cfg = s.bastion_file()
        env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
        async with sshtun_process("bastion", "--config", str(cfg), env=env) as bastion:
            await wait_for(lambda: notify.count("WATCHDOG=1") >= 3)
            assert notify.seen("0 names from 0 agent connections")
            bastion.send_signal(signal.SIGTERM)
            assert await bastion.wait(10) == 0
