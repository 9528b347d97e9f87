"""The agent's lifecycle: load key → one link per bastion → ready when a name is published
→ run (probing health) until stopped → close links."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from sshtunnel_mgr import systemd
from sshtunnel_mgr.admin import AdminServer, default_socket_path
from sshtunnel_mgr.agent.link import BastionLink
from sshtunnel_mgr.asyncutil import wait_either
from sshtunnel_mgr.config import AgentConfig
from sshtunnel_mgr.keys.store import load_private_key

log = logging.getLogger("sshtunnel_mgr.agent")


class Agent:
    def __init__(
        self, config: AgentConfig, on_ready: Callable[[Agent], None] | None = None
    ) -> None:
        self.config = config
        self.key = load_private_key(config.key)
        self._on_ready = on_ready
        self._ready = False
        self.ready_event = asyncio.Event()
        self.healthy = False
        self.links = [
            BastionLink(config, ep, self.key, on_published=self._published)
            for ep in config.bastions
        ]

    def _published(self, link: BastionLink) -> None:
        systemd.notify(f"STATUS={self.status_line()}")
        if not self._ready:
            self._ready = True
            systemd.notify("READY=1")
            self.ready_event.set()
            if self._on_ready is not None:
                self._on_ready(self)

    def status_line(self) -> str:
        parts = []
        for link in self.links:
            names = ",".join(link.status.published) or "-"
            parts.append(f"{link.endpoint.address}: {link.status.state} {names}")
        return "; ".join(parts)

    def snapshot(self) -> dict[str, Any]:
        return {
            "ok": True,
            "role": "agent",
            "healthy": self.healthy,
            "now": time.time(),
            "links": [dataclasses.asdict(link.status) for link in self.links],
        }

    async def handle_admin(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "status":
            return self.snapshot()
        return {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}

    async def check_health(self) -> bool:
        """Probe every up link through the real forwarded path; ping the watchdog only if
        at least one link is up and every up link passes."""
        timeout = self.config.connect_timeout
        results = [await link.probe(timeout) for link in self.links if link.conn is not None]
        self.healthy = bool(results) and all(results)
        if self.healthy:
            systemd.notify("WATCHDOG=1")
        systemd.notify(f"STATUS={self.status_line()}" + ("" if self.healthy else " (unhealthy)"))
        return self.healthy

    async def _health_loop(self, stop: asyncio.Event) -> None:
        interval = self.config.probe_interval
        watchdog = systemd.watchdog_interval()
        if watchdog is not None:
            interval = min(interval, watchdog)
        await wait_either(self.ready_event.wait(), stop.wait())
        while not stop.is_set():
            await self.check_health()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every link until ``stop``; a fatal error on one link stops them all."""
        admin = AdminServer(
            self.config.admin_socket or default_socket_path("agent"), self.handle_admin
        )
        await admin.start()
        try:
            async with asyncio.TaskGroup() as group:
                for link in self.links:
                    group.create_task(link.run(stop))
                group.create_task(self._health_loop(stop))
        except BaseExceptionGroup as group_exc:
            # Surface the first sshtun error as-is, so the CLI reports it plainly.
            raise group_exc.exceptions[0] from None
        finally:
            systemd.notify("STOPPING=1")
            await admin.stop()


async def serve(
    config: AgentConfig, stop: asyncio.Event, on_ready: Callable[[Agent], None] | None = None
) -> None:
    await Agent(config, on_ready).run(stop)
