"""The agent's lifecycle: load key → one link per bastion → ready when a name is published
→ run (probing health) until stopped → close links."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh

from sshtunnel_mgr import sshcompat, systemd
from sshtunnel_mgr.admin import AdminServer, default_socket_path
from sshtunnel_mgr.agent.link import BastionLink
from sshtunnel_mgr.agent.rotation import Rotator
from sshtunnel_mgr.asyncutil import wait_either
from sshtunnel_mgr.config import AgentConfig
from sshtunnel_mgr.errors import SshtunError
from sshtunnel_mgr.keys.store import load_private_key
from sshtunnel_mgr.logsetup import event
from sshtunnel_mgr.metrics import MetricsServer, agent_samples

log = logging.getLogger("sshtunnel_mgr.agent")


class Agent:
    def __init__(
        self, config: AgentConfig, on_ready: Callable[[Agent], None] | None = None
    ) -> None:
        self.config = config
        self._reloader: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self.key = load_private_key(config.key)
        self._on_ready = on_ready
        self._ready = False
        self.ready_event = asyncio.Event()
        self.healthy = False
        self.links = [
            BastionLink(config, ep, self.key, on_published=self._published)
            for ep in config.bastions
        ]
        self.rotator = Rotator(self)

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
            "rotation": self.rotator.snapshot(),
            "asyncssh": sshcompat.summary("agent"),  # release, active shims, stepped aside
        }

    async def reload(self, config: AgentConfig) -> dict[str, Any]:
        """Apply a re-read config: tunnels change live; bastion or key changes need a
        restart (said in the answer and the log, never applied half-way)."""
        notes = []
        if config.bastions != self.config.bastions or config.key != self.config.key:
            notes.append("bastions/key changed: restart the agent to apply that")
            event(
                log,
                logging.WARNING,
                "reload",
                note="bastions or key changed; restart the agent to apply that",
            )
        changes = [await link.sync_tunnels(config) for link in self.links]
        self.config = self.config.model_copy(
            update={"tunnels": config.tunnels, "probe_interval": config.probe_interval}
        )
        withdrawn = sorted({x for c in changes for x in c["withdrawn"]})
        published = sorted({x for c in changes for x in c["published"]})
        event(
            log,
            logging.INFO,
            "reload done",
            withdrawn=",".join(withdrawn) or "-",
            published=",".join(published) or "-",
        )
        return {"ok": True, "withdrawn": withdrawn, "published": published, "notes": notes}

    async def handle_admin(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "status":
            return self.snapshot()
        if request.get("cmd") == "rotate":
            # The CLI hands over the new private key itself (over this 0600 socket): under
            # systemd the agent cannot read key files outside its credentials.
            try:
                new_key = asyncssh.import_private_key(str(request["key_data"]))
            except (KeyError, asyncssh.KeyImportError, ValueError) as exc:
                return {"ok": False, "error": f"the new key was not readable: {exc}"}
            return await self.rotator.rotate(
                new_key,
                str(request.get("comment", "")),
                _drain_limit(request),
                request.get("stop_after"),
                retire=request.get("retire") is True,
            )
        if request.get("cmd") == "rotate-undo":
            return await self.rotator.undo(_drain_limit(request))
        if request.get("cmd") == "reload" and self._reloader is not None:
            return await self._reloader()
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

    def reload_from(
        self, load: Callable[[], AgentConfig]
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        """A reload action that re-reads the config with ``load``; a bad file is refused
        (logged and answered) and the running config stays."""

        async def reloader() -> dict[str, Any]:
            try:
                config = load()
            except SshtunError as exc:
                event(log, logging.ERROR, "reload refused", reason=exc.message)
                return {"ok": False, "error": exc.message}
            return await self.reload(config)

        self._reloader = reloader
        return reloader

    async def run(self, stop: asyncio.Event) -> None:
        """Run every link until ``stop``; a fatal error on one link stops them all."""
        sshcompat.announce(log, "agent")  # one line: which asyncssh shims are active
        admin = AdminServer(
            self.config.admin_socket or default_socket_path("agent"), self.handle_admin
        )
        await admin.start()
        metrics = None
        if self.config.metrics_address is not None:
            metrics = MetricsServer(*self.config.metrics_address, lambda: agent_samples(self))
            await metrics.start()
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
            self.rotator.stop()
            await admin.stop()
            if metrics is not None:
                await metrics.stop()


def _drain_limit(request: dict[str, Any]) -> float | None:
    """``drain`` in a rotate request: seconds, or absent/null to wait for every session."""
    value = request.get("drain")
    return None if value is None else float(value)


async def serve(
    config: AgentConfig,
    stop: asyncio.Event,
    on_ready: Callable[[Agent], None] | None = None,
    *,
    reload: asyncio.Event | None = None,
    load: Callable[[], AgentConfig] | None = None,
) -> None:
    """Run the agent; each time ``reload`` is set (SIGHUP), re-read the config via ``load``."""
    agent = Agent(config, on_ready)
    if reload is None or load is None:
        await agent.run(stop)
        return
    reloader = agent.reload_from(load)

    async def on_hup() -> None:
        while True:
            await reload.wait()
            reload.clear()
            await reloader()

    hup = asyncio.create_task(on_hup())
    try:
        await agent.run(stop)
    finally:
        hup.cancel()
