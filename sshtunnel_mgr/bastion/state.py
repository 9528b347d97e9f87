"""Everything a running bastion knows, in one object: access policy, routes, connections.

Connections are held as ``LiveConnection`` (peer.py), so this module never imports the
connection's own (server.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sshtunnel_mgr.bastion.audit import AuditLog
from sshtunnel_mgr.bastion.peer import LiveConnection
from sshtunnel_mgr.bastion.refusals import Refusals
from sshtunnel_mgr.bastion.splice import Pipe
from sshtunnel_mgr.core.access import AccessPolicy
from sshtunnel_mgr.core.config import BastionConfig
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.limits import KeyUsage
from sshtunnel_mgr.core.lograte import LogRate
from sshtunnel_mgr.core.penalties import SourcePenalties
from sshtunnel_mgr.core.routing import Route, RouteTable
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.bastion")


class RouteMesh(Protocol):
    """The routes of every worker of a multi-process bastion (bastion/workers/mesh.py):
    told of this worker's changes, answers from the table of all of them (each route's
    handle is the worker that holds it)."""

    worker: int

    def published(self, route: Route[LiveConnection]) -> None: ...

    def withdrawn(self, name: str, port: int, conn_id: int) -> None: ...

    def dropped(self, conn_id: int) -> None: ...

    def lookup(self, name: str, port: int) -> tuple[Route[int], ...]: ...

    def usage(self, key: str, connections: int, channels: int) -> None:
        """This worker's connections and routed channels of ``key`` changed by these."""

    def open_remote(
        self,
        client: LiveConnection,
        refusals: Refusals,
        route: Route[int],
        orig: tuple[str, int],
        on_close: Callable[[Pipe], None],
    ) -> Awaitable[Pipe]:
        """Open ``route`` through the worker that holds it (a relay); the client's end."""

    def web_claimed(self, key: str, delta: int) -> None:
        """This worker's routed web connections to ``key``'s names changed by ``delta``."""

    def web_elsewhere(self, key: str) -> int:
        """The routed web connections to ``key``'s names on the other workers."""

    def relay_web(
        self, route: Route[int], orig: tuple[str, int], conn_id: int, end: Pipe
    ) -> Awaitable[str]:
        """A web connection onto ``route`` of another worker: ``end`` spliced onto the
        relay (``""``), or why not (bastion/web/conn.py)."""


@dataclass
class BastionState:
    config: BastionConfig
    access: AccessPolicy
    routes: RouteTable[LiveConnection] = field(default_factory=RouteTable)
    connections: dict[int, LiveConnection] = field(default_factory=dict)
    accepting: bool = True
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    # Event counters for metrics: plain integer increments, read only when scraped.
    counters: Counter[str] = field(default_factory=Counter)
    # Awaited after the bastion itself rewrote the access file (key rotation): re-read it.
    access_changed: Callable[[], Awaitable[object]] = field(default=lambda: asyncio.sleep(0))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _picks: itertools.count[int] = field(default_factory=itertools.count)
    # Abuse resistance: failed logins per source, live connections per key, the audit log.
    penalties: SourcePenalties = field(init=False)
    key_usage: KeyUsage[LiveConnection] = field(default_factory=KeyUsage)
    audit: AuditLog = field(default_factory=AuditLog)
    # Connections that leave before logging in: logged and audited, rate-limited per source.
    preauth_log: LogRate = field(default_factory=LogRate)
    # Key requests in flight (bastion/keyrequests.py): kept here, awaited by Bastion.stop().
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Wall clock for access decisions (expiry-time); tests replace it.
    wall: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # A worker of a multi-process bastion: every worker's routes (None: one process).
    mesh: RouteMesh | None = None
    relayed: int = 0  # channels opened here for another worker's clients (workers/relay.py)

    def __post_init__(self) -> None:
        limits = self.config.limits
        self.penalties = SourcePenalties(
            limits.max_auth_failures_per_source,
            limits.penalty_seconds,
            exempt=limits.penalty_exempt,
        )

    def reconfigure(self, config: BastionConfig) -> list[str]:
        """Apply reloaded limits and reopen the audit log (log rotation); notes for the
        caller. A cool-down already running keeps its deadline."""
        self.config = config
        limits = config.limits
        self.penalties.configure(
            limits.max_auth_failures_per_source, limits.penalty_seconds, limits.penalty_exempt
        )
        try:
            self.audit.reopen(config.audit_log)
        except ConfigError as exc:
            event(
                log,
                logging.ERROR,
                "reload",
                reason=exc.message,
                note=f"the audit log stays {self.audit.path}",
            )
            return [exc.message]
        return []

    def next_conn_id(self) -> int:
        return next(self._ids)

    def number_from(self, first: int) -> None:
        """Number connections from ``first`` on (workers: ids unique across workers)."""
        self._ids = itertools.count(first)

    def next_pick(self) -> int:
        return next(self._picks)

    def publish(self, route: Route[LiveConnection]) -> None:
        self.routes, replaced = self.routes.publish(route)
        if self.mesh is not None:
            self.mesh.published(route)
        for old in replaced:
            if old.conn_id != route.conn_id:
                event(
                    log,
                    logging.INFO,
                    "takeover",
                    name=route.name,
                    port=route.port,
                    key=route.owner,
                    old_conn=old.conn_id,
                    new_conn=route.conn_id,
                )

    def withdraw(self, name: str, port: int, conn_id: int) -> None:
        self._swap(self.routes.withdraw(name, port, conn_id), conn_id)
        if self.mesh is not None:
            self.mesh.withdrawn(name, port, conn_id)

    def _swap(self, routes: RouteTable[LiveConnection], gone: int) -> None:
        """Install a new route table; say which standby connections serve again (only
        the names ``gone`` had can change: no scan of the whole table)."""
        keys = self.routes.names_of(gone)
        before = {(k, r.conn_id) for k in keys for r in self.routes.lookup(*k)}
        self.routes = routes
        for route in (r for k in keys for r in routes.lookup(*k)):
            if ((route.name, route.port), route.conn_id) not in before:
                event(
                    log,
                    logging.INFO,
                    "standby serves again",
                    name=route.name,
                    port=route.port,
                    key=route.owner,
                    conn=route.conn_id,
                    old_conn=gone,
                )

    def routed_channels(self) -> int:
        """Client channels currently spliced onto an agent."""
        return sum(c.open_channels for c in self.connections.values())

    def in_flight(self) -> int:
        """What a stop drains: routed channels, and those relayed for another worker."""
        return self.routed_channels() + self.relayed

    def channel_closed(self) -> None:
        if not self.accepting and self.in_flight() == 0:
            self.drained.set()

    def drop_connection(self, conn_id: int) -> None:
        conn = self.connections.pop(conn_id, None)
        self._swap(self.routes.withdraw_connection(conn_id), conn_id)
        if self.mesh is not None and conn is not None and conn.published:
            self.mesh.dropped(conn_id)

    @staticmethod
    def now() -> float:
        return time.time()
