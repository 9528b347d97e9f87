"""The agent's role: load key → one link per bastion → ready when a name is published →
probe health while running → close links. ``runtime.service`` runs it (signals, admin
socket, metrics, reloads, the stop sequence)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh

from sshtunnel_mgr import sshcompat
from sshtunnel_mgr.agent.link import BastionLink
from sshtunnel_mgr.agent.resolve import NameFollower, Resolve, system_resolve
from sshtunnel_mgr.agent.rotation import Rotator
from sshtunnel_mgr.agent.web import WebFront
from sshtunnel_mgr.core.addrset import is_ip_literal
from sshtunnel_mgr.core.backoff import Backoff
from sshtunnel_mgr.core.config import AgentConfig, BastionEndpoint
from sshtunnel_mgr.core.errors import SshtunError
from sshtunnel_mgr.keys.store import load_private_key
from sshtunnel_mgr.runtime import systemd
from sshtunnel_mgr.runtime.admin import default_socket_path
from sshtunnel_mgr.runtime.asyncutil import TaskSet
from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.runtime.metrics import agent_samples
from sshtunnel_mgr.runtime.service import Service

log = logging.getLogger("sshtunnel_mgr.agent")

# How long links may take to close their connections when the agent stops.
STOP_GRACE = 10.0


class Agent:
    """The agent's role logic (``runtime.service.Role``); ``run(stop)`` serves it in-process."""

    def __init__(
        self,
        config: AgentConfig,
        on_ready: Callable[[Agent], None] | None = None,
        load: Callable[[], AgentConfig] | None = None,
        *,
        resolve: Resolve = system_resolve,
    ) -> None:
        self.config = config
        self._load = load
        self.key = load_private_key(config.key)
        self.web = WebFront()  # tls/proxy_protocol tunnels; their certificates load now
        self.web.use(WebFront.prepare(config.tunnels, config.state_dir))
        self._on_ready = on_ready
        self._ready = False
        self.ready_event = asyncio.Event()
        self.healthy = False
        # A bastion given by IP address has one link; one given by name has one link per
        # address the name resolves to, followed as the records change (agent/resolve.py).
        self._fixed = [
            BastionLink(config, ep, self.key, on_published=self._published, web=self.web)
            for ep in config.bastions
            if is_ip_literal(ep.host)
        ]
        self.followers = [
            NameFollower(
                ep,
                self._link_maker(ep),
                interval=lambda: self.config.resolve_interval,
                retry=Backoff(base=config.backoff.base, cap=config.backoff.cap),
                resolve=resolve,
                on_change=self._links_changed,
            )
            for ep in config.bastions
            if not is_ip_literal(ep.host)
        ]
        self.links: list[BastionLink] = list(self._fixed)  # swapped whole on a change
        self.rotator = Rotator(self)
        self._stop = asyncio.Event()
        self._link_tasks: list[asyncio.Task[Any]] = []

    def _link_maker(self, endpoint: BastionEndpoint) -> Callable[[str], BastionLink]:
        def new_link(address: str) -> BastionLink:
            return BastionLink(
                self.config,
                endpoint,
                self.key,
                on_published=self._published,
                web=self.web,
                dial=address,
            )

        return new_link

    def _links_changed(self) -> None:
        """A name's addresses changed: the list of links is rebuilt (and swapped whole)."""
        self.links = [*self._fixed, *(link for f in self.followers for link in f.all_links())]
        systemd.notify(f"STATUS={self.status_line()}")

    def _published(self, link: BastionLink) -> None:
        systemd.notify(f"STATUS={self.status_line()}")
        if not self._ready:
            self._ready = True
            self.ready_event.set()
            if self._on_ready is not None:
                self._on_ready(self)

    # The service's Role ------------------------------------------------------------------
    @property
    def check_interval(self) -> float:
        return self.config.probe_interval

    async def start(self, tasks: TaskSet) -> None:
        """One task per bastion link; a fatal error on one (host key, refused key) stops
        the service, which raises it."""
        self._stop = asyncio.Event()
        sshcompat.announce(log, "agent")  # one line: which asyncssh shims are active
        self.web.start()  # tls = "acme": order and renew certificates
        self._link_tasks = [
            tasks.spawn(link.run(self._stop), f"link {link.label}") for link in self._fixed
        ]

        def spawn(coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task[Any]:
            task = tasks.spawn(coro, name)
            self._link_tasks = [t for t in self._link_tasks if not t.done()]
            self._link_tasks.append(task)
            return task

        for follower in self.followers:
            spawn(follower.run(self._stop, spawn), f"resolve {follower.endpoint.address}")

    async def ready(self) -> None:
        await self.ready_event.wait()

    @property
    def stopping(self) -> bool:
        """The stop has begun (a key rotation asked for now is refused)."""
        return self._stop.is_set()

    async def stop(self, grace: float | None) -> None:
        """Cancel a key rotation under way and wait for it (a hand-over closes the new
        connection it was making; the rotation is left as a crash there leaves it, for a
        rerun to finish), close every link (each closes its connection); wait for them at
        most ``grace`` seconds (None: ``STOP_GRACE``), the service cancels what is left."""
        self._stop.set()
        await self.rotator.aclose()
        grace = STOP_GRACE if grace is None else grace
        if self._link_tasks and grace > 0:
            await asyncio.wait(self._link_tasks, timeout=grace)
        await self.web.close()

    def status(self) -> str:
        return self.status_line() + ("" if self.healthy else " (unhealthy)")

    def status_line(self) -> str:
        parts = []
        for link in self.links:
            names = ",".join(link.status.published) or "-"
            parts.append(f"{link.label}: {link.status.state} {names}")
        return "; ".join(parts)

    def snapshot(self) -> dict[str, Any]:
        return {
            "ok": True,
            "role": "agent",
            "healthy": self.healthy,
            "now": time.time(),
            "links": [dataclasses.asdict(link.status) for link in self.links],
            "names": [f.snapshot() for f in self.followers],  # bastions given by name
            "tunnels": self.web.snapshot(self.config.tunnels),  # TLS mode, certificate expiry
            "rotation": self.rotator.snapshot(),
            "asyncssh": sshcompat.summary("agent"),  # release, active shims, stepped aside
        }

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file (in a worker thread) and apply it; a bad file is
        refused (logged and answered) and the running config stays."""
        if self._load is None:
            return {"ok": False, "error": "this agent has no config file to re-read"}
        try:
            config = await asyncio.to_thread(self._load)
            stores = await asyncio.to_thread(WebFront.prepare, config.tunnels, config.state_dir)
        except SshtunError as exc:
            event(log, logging.ERROR, "reload refused", reason=exc.message)
            return {"ok": False, "error": exc.message}
        self.web.use(stores)
        return await self.apply(config)

    async def apply(self, config: AgentConfig) -> dict[str, Any]:
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
        self.config = self.config.model_copy(  # before the links: new ones take it
            update={
                "tunnels": config.tunnels,
                "probe_interval": config.probe_interval,
                "resolve_interval": config.resolve_interval,
            }
        )
        changes = [await link.sync_tunnels(config) for link in list(self.links)]
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
        if request.get("cmd") == "reload":
            return await self.reload()
        return {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}

    async def check(self) -> bool:
        """Probe every up link through the real forwarded path: healthy (the service pings
        the watchdog) only if at least one link is up and every up link passes."""
        timeout = self.config.connect_timeout
        await self.web.refresh()  # certificate files changed on disk: serve the new ones
        results = [await link.probe(timeout) for link in self.links if link.conn is not None]
        self.healthy = bool(results) and all(results)
        return self.healthy

    async def run(self, stop: asyncio.Event) -> None:
        """Serve in-process until ``stop`` (tests, the demo): no signal handlers, no
        SIGHUP; a fatal error on one link stops them all and is raised."""
        await self._service(stop, None, None, handle_signals=False).run()

    def _service(
        self,
        stop: asyncio.Event | None,
        reload: asyncio.Event | None,
        on_ready: Callable[[Agent], None] | None,
        *,
        handle_signals: bool,
    ) -> Service:
        return Service(
            self,
            admin_socket=self.config.admin_socket or default_socket_path("agent"),
            admin_handler=self.handle_admin,
            metrics_address=self.config.metrics_address,
            samples=lambda: agent_samples(
                self.healthy, [link.status for link in self.links], self.web.stats.snapshot()
            ),
            stop=stop,
            reload=reload,
            on_ready=None if on_ready is None else lambda: on_ready(self),
            handle_signals=handle_signals,
        )


def _drain_limit(request: dict[str, Any]) -> float | None:
    """``drain`` in a rotate request: seconds, or absent/null to wait for every session."""
    value = request.get("drain")
    return None if value is None else float(value)


async def serve(
    config: AgentConfig,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Agent], None] | None = None,
    *,
    reload: asyncio.Event | None = None,
    load: Callable[[], AgentConfig] | None = None,
    handle_signals: bool = False,
) -> None:
    """Run the agent until ``stop`` (or, with ``handle_signals``, SIGINT/SIGTERM; a second
    one forces the stop); each SIGHUP or ``reload`` re-reads the config via ``load``."""
    agent = Agent(config, load=load)
    await agent._service(stop, reload, on_ready, handle_signals=handle_signals).run()
