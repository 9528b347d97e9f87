"""The web listeners of a bastion (``[bastion.web]``), and every connection on them.

``WebFront.start()`` binds ``https_listen`` and ``http_listen`` (each off unless set), or
serves the sockets a worker's supervisor bound for them (``inherited``); each accepted
connection is a ``WebConn`` (conn.py) with the reader of its listener. The front holds
them all: the ones still sending their head, counted per source (a source
over ``max_pending_per_source`` is refused at once: many slow heads cost it, not us), and
the tasks that open agent channels. ``close()`` stops accepting and closes every
connection still deciding; spliced ones end with their agent's channel (or ``close_all``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from typing import Any

from sshtunnel_mgr.bastion.listener import bind
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.bastion.web.conn import HeadReader, WebConn
from sshtunnel_mgr.bastion.web.http import HttpReader
from sshtunnel_mgr.bastion.web.https import HelloReader
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.lograte import LogRate
from sshtunnel_mgr.core.webconfig import SourceRate, WebConfig, WebPolicy
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.bastion")


def keep_listeners(running: WebConfig, new: WebConfig, notes: list[str]) -> WebConfig:
    """Reload: ``new`` with the running listen addresses (changing them takes a restart:
    said in ``notes`` and logged)."""
    if (new.https_listen, new.http_listen) == (running.https_listen, running.http_listen):
        return new
    notes.append("web listen changed: restart the bastion to apply that")
    event(log, logging.WARNING, "reload", note="web listen changed; restart to apply that")
    kept = {"https_listen": running.https_listen, "http_listen": running.http_listen}
    return new.model_copy(update=kept)


async def drained(ssh: asyncio.Event | None, web: WebFront | None) -> None:
    """Once the routed SSH channels (``ssh``; None when none were open) and the routed web
    connections have all ended: the bastion's drain on shutdown."""
    if ssh is not None:
        await ssh.wait()
    if web is not None:
        await web.idle()


class WebFront:
    def __init__(
        self,
        state: BastionState,
        config: WebConfig,
        inherited: dict[str, list[socket.socket]] | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.inherited = inherited  # a worker's: "https"/"http" sockets, never bound here
        self.policy = WebPolicy(config)
        self.rate = SourceRate()
        self.servers: list[asyncio.Server] = []
        self.https_addresses: list[tuple[str, int]] = []
        self.http_addresses: list[tuple[str, int]] = []
        self.conns: set[WebConn] = set()
        self.pending: Counter[str] = Counter()  # per source: connections still deciding
        self._deciding: set[WebConn] = set()
        self.routed_open = 0  # splices open now (or opening)
        # Per publishing key (fingerprint): web connections routed to its names now. With
        # the SSH channels the key opened itself, they count against max_channels_per_key.
        self.key_channels: Counter[str] = Counter()
        self._idle = asyncio.Event()  # set when routed_open falls to 0
        self._tasks: set[asyncio.Future[None]] = set()
        self._flood_log = LogRate()

    @property
    def enabled(self) -> bool:
        return self.config.https_listen is not None or self.config.http_listen is not None

    def reconfigure(self, config: WebConfig) -> None:
        """Reload: new public names, rules and bounds (listen addresses need a restart)."""
        self.config = config
        self.policy = WebPolicy(config)

    async def start(self) -> None:
        https, http = self.config.https_address, self.config.http_address
        if self.inherited is not None:
            got = self.inherited
            self.https_addresses = await self._serve(got.get("https", []), self._https_reader)
            self.http_addresses = await self._serve(got.get("http", []), self._http_reader)
        else:
            if https is not None:
                self.https_addresses = await self._listen(https, self._https_reader)
            if http is not None:
                self.http_addresses = await self._listen(http, self._http_reader)
        if self.enabled:
            event(
                log,
                logging.INFO,
                "web listening",
                https=",".join(f"{h}:{p}" for h, p in self.https_addresses) or "-",
                http=",".join(f"{h}:{p}" for h, p in self.http_addresses) or "-",
                public=",".join(self.config.public) or "-",
            )

    def _https_reader(self) -> HeadReader:
        return HelloReader(self)

    def _http_reader(self) -> HeadReader:
        return HttpReader(self)

    async def _listen(self, address: tuple[str, int], reader: Any) -> list[tuple[str, int]]:
        host, port = address
        try:
            socks = bind(host, port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="check bastion.web https_listen/http_listen; is another server there?",
            ) from None
        return await self._serve(socks, reader)

    async def _serve(self, socks: list[socket.socket], reader: Any) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        bound = []
        for sock in socks:
            server = await loop.create_server(lambda: WebConn(self, reader()), sock=sock)
            self.servers.append(server)
            name = sock.getsockname()
            bound.append((str(name[0]), int(name[1])))
        return bound

    @property
    def https_port(self) -> int:
        """The port redirects name: the one configured, or the one bound for port 0."""
        configured = self.config.https_address
        if configured is not None and configured[1]:
            return configured[1]
        return self.https_addresses[0][1] if self.https_addresses else 443

    # Connections -------------------------------------------------------------------------
    def arrived(self, conn: WebConn) -> bool:
        """Count a new connection; refuse it when its source has too many deciding."""
        if not self.state.accepting:
            conn.close()
            return False
        source = conn.peer_ip
        if self.pending[source] >= self.config.max_pending_per_source:
            conn.refusals.refuse(
                "web",
                f"{source} has {self.pending[source]} connections still sending their head",
                event="refused web",
                counter="web_refused_pending",
                record=self.worth_recording(source),
                via=conn.reader.via,
            )
            conn.close()
            return False
        self.conns.add(conn)
        self._deciding.add(conn)
        self.pending[source] += 1
        return True

    def worth_recording(self, source: str) -> bool:
        """Whether a refusal from ``source`` is logged and audited (always counted): the
        first ten a minute from a source, then every hundredth (core/lograte.py)."""
        return self._flood_log.hit(source).write

    def decided(self, conn: WebConn) -> None:
        if conn in self._deciding:
            self._deciding.discard(conn)
            self.pending[conn.peer_ip] -= 1
            if self.pending[conn.peer_ip] <= 0:
                del self.pending[conn.peer_ip]

    def left(self, conn: WebConn) -> None:
        self.decided(conn)
        self.conns.discard(conn)

    def claim(self, key: str) -> str:
        """Count one more web connection against the publishing ``key``; or why not: the
        key holds ``max_channels_per_key`` (its own SSH channels and web connections routed
        to its names, together) already. The key's SSH channels are capped on their own
        count only (guard.py), so a web flood never starves its agent's health probes."""
        limit = self.state.config.limits.max_channels_per_key
        mesh = self.state.mesh  # a worker's: the key's SSH channels and web connections
        elsewhere = 0 if mesh is None else mesh.web_elsewhere(key)  # on every worker
        held = self.key_channels[key] + self.state.key_usage.channels(key) + elsewhere
        if held >= limit:
            return (
                f"publishing key {key} holds {held} routed channels and web connections "
                f"(max_channels_per_key {limit})"
            )
        self.key_channels[key] += 1
        if mesh is not None:
            mesh.web_claimed(key, 1)
        return ""

    def release(self, key: str) -> None:
        if self.state.mesh is not None:
            self.state.mesh.web_claimed(key, -1)
        self.key_channels[key] -= 1
        if self.key_channels[key] <= 0:
            del self.key_channels[key]

    def route_closed(self) -> None:
        self.routed_open -= 1
        if self.routed_open <= 0:
            self._idle.set()

    async def idle(self) -> None:
        """Once no connection is routed (spliced or being opened)."""
        while self.routed_open > 0:
            self._idle.clear()
            await self._idle.wait()

    def keep(self, task: asyncio.Future[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            event(log, logging.ERROR, "web route failed", error=repr(exc))

    # Lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop accepting; close the connections still sending their head."""
        for server in self.servers:
            server.close()
        for conn in list(self._deciding):
            conn.close()

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "https": [f"{h}:{p}" for h, p in self.https_addresses],
            "http": [f"{h}:{p}" for h, p in self.http_addresses],
            "public": list(self.config.public),
            "connections": len(self.conns),
            "deciding": len(self._deciding),
            "routed_open": self.routed_open,
            "idle_timeout": self.config.idle_timeout,
            "by_key": dict(self.key_channels),  # routed web connections per publishing key
        }
