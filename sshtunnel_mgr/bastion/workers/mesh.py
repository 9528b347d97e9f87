"""A worker's view of every worker's routes, and its line to the supervisor.

The worker tells the supervisor each change of its own route table (numbered), and applies
every change the supervisor sends back, in the supervisor's order, to its copy of the
global table. Its own changes that the supervisor has not echoed yet are replayed on top
of that copy, so a name this worker just published is routable here at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sshtunnel_mgr.bastion.peer import LiveConnection
from sshtunnel_mgr.bastion.refusals import Refusals
from sshtunnel_mgr.bastion.splice import Pipe
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.bastion.workers import relay, wire
from sshtunnel_mgr.core.limits import KeyUsage
from sshtunnel_mgr.core.routing import Route, RouteTable
from sshtunnel_mgr.runtime.logsetup import event

ROWS = ("routes", "standby")  # the row lists of a "table" line

log = logging.getLogger("sshtunnel_mgr.bastion")

RELOAD_TIMEOUT = 60.0
USAGE_BATCH = 0.02  # seconds a key's channel and web counts are summed before they go


class SharedKeyUsage(KeyUsage[LiveConnection]):
    """Per-key caps across workers: this worker's connections, plus what the others
    reported (through the supervisor) of the same key."""

    def __init__(self, mesh: Mesh) -> None:
        super().__init__()
        self.mesh = mesh

    def add(self, key: str, conn: LiveConnection) -> None:
        super().add(key, conn)
        self.mesh.usage(key, 1, conn.open_channels)

    def remove(self, key: str, conn: LiveConnection) -> None:
        if conn in self._by_key.get(key, ()):
            # Its channels still open are no longer counted for the key (nor reported).
            self.mesh.usage(key, -1, -conn.open_channels)
        super().remove(key, conn)

    def connections(self, key: str) -> int:
        return super().connections(key) + self.mesh.others(key)[0]

    def channels(self, key: str) -> int:
        return super().channels(key) + self.mesh.others(key)[1]


def relay_path(directory: Path, worker: int) -> Path:
    return directory / f"relay-{worker}.sock"


class Mesh:
    """``BastionState.mesh`` of a worker (the ``RouteMesh`` protocol)."""

    def __init__(self, worker: int, directory: Path, state: BastionState) -> None:
        self.worker = worker
        self.directory = directory
        self.state = state
        self.confirmed: RouteTable[int] = RouteTable()
        self._parts: list[dict[str, Any]] = []  # "table" lines until the last part
        self._pending: list[dict[str, Any]] = []  # own changes not echoed back yet
        self._view: RouteTable[int] | None = None
        self._seq = 0
        self._writer: asyncio.StreamWriter | None = None
        # Other workers' live connections, routed channels and routed web connections per
        # key: {worker: {key: [c, ch, web]}}
        self._usage: dict[int, dict[str, list[int]]] = {}
        self._reloads: dict[int, asyncio.Future[None]] = {}  # asked of the supervisor
        self._deltas: dict[str, list[int]] = {}  # usage not sent yet: [conns, chans, web]
        self._flush: asyncio.TimerHandle | None = None
        self.on_stop: Callable[[], None] | None = None

    # This worker's changes ----------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        self._seq += 1
        message["seq"] = self._seq
        self._pending.append(message)
        self._view = None
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(wire.encode(message))

    def published(self, route: Route[LiveConnection]) -> None:
        self._send({"op": "publish", "route": wire.route_fields(route)})

    def withdrawn(self, name: str, port: int, conn_id: int) -> None:
        self._send({"op": "withdraw", "name": name, "port": port, "conn": conn_id})

    def dropped(self, conn_id: int) -> None:
        self._send({"op": "drop", "conn": conn_id})

    def usage(self, key: str, connections: int, channels: int, web: int = 0) -> None:
        """Tell the supervisor (it keeps every worker's totals and sends them to all). A
        login or logout goes at once; routed channels and web connections (one claim and
        one release per request) are summed per key for USAGE_BATCH seconds first, so a
        burst of short requests costs a line or none (a claim and its release cancel),
        not two lines through the supervisor to every worker per request."""
        row = self._deltas.setdefault(key, [0, 0, 0])
        row[0] += connections
        row[1] += channels
        row[2] += web
        if connections:
            self._flush_usage()
        elif self._flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test's direct call): at once
                self._flush_usage()
                return
            self._flush = loop.call_later(USAGE_BATCH, self._flush_usage)

    def _flush_usage(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        deltas, self._deltas = self._deltas, {}
        if self._writer is None or self._writer.is_closing():
            return
        for key, (conns, chans, web) in deltas.items():
            if conns or chans or web:
                message = {"op": "usage", "key": key, "conns": conns, "chans": chans}
                if web:
                    message["web"] = web
                self._writer.write(wire.encode(message))

    def others(self, key: str) -> tuple[int, int]:
        rows = [u[key] for w, u in self._usage.items() if w != self.worker and key in u]
        return sum(r[0] for r in rows), sum(r[1] for r in rows)

    def web_claimed(self, key: str, delta: int) -> None:
        """This worker's routed web connections to ``key``'s names changed by ``delta``."""
        self.usage(key, 0, 0, delta)

    def web_elsewhere(self, key: str) -> int:
        """The routed web connections to ``key``'s names on the other workers."""
        return sum(u[key][2] for w, u in self._usage.items() if w != self.worker and key in u)

    async def reload_all(self) -> object:
        """This worker rewrote the access file (a key rotation): every worker re-reads
        it (the supervisor's reload); returns once they have."""
        if self._writer is None or self._writer.is_closing():
            return None
        self._seq += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reloads[self._seq] = done
        self._writer.write(wire.encode({"op": "reload", "id": self._seq}))
        try:
            await asyncio.wait_for(asyncio.shield(done), RELOAD_TIMEOUT)
        except TimeoutError:
            event(log, logging.WARNING, "reload of every worker not confirmed", worker=self.worker)
        finally:
            self._reloads.pop(self._seq, None)
        return None

    def ready(self) -> None:
        if self._writer is not None:
            self._writer.write(wire.encode({"op": "ready"}))

    # The global table ---------------------------------------------------------------------
    @property
    def table(self) -> RouteTable[int]:
        if self._view is None:
            view = self.confirmed
            for message in self._pending:
                view = wire.apply(view, self.worker, message)
            self._view = view
        return self._view

    def lookup(self, name: str, port: int) -> tuple[Route[int], ...]:
        return self.table.lookup(name, port)

    def received(self, message: dict[str, Any]) -> None:
        """One message of the supervisor (wire.py)."""
        op = message.get("op")
        if op == "table":  # in parts: the table is whole once "more" is false
            self._parts.append(message)
            if message.get("more"):
                return
            parts, self._parts = self._parts, []
            whole = {k: [row for part in parts for row in part.get(k, [])] for k in ROWS}
            self.confirmed = wire.table_from(whole)
        elif op == "stop":  # the supervisor stops (a second one: at once)
            if self.on_stop is not None:
                self.on_stop()
            return
        elif op == "reloaded":
            waiting = self._reloads.get(int(message["id"]))
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            return
        elif op == "usage":  # a worker's totals for one key
            row = [int(message["conns"]), int(message["chans"]), int(message.get("web", 0))]
            self._usage.setdefault(int(message["worker"]), {})[str(message["key"])] = row
            return
        else:
            if op == "gone":
                self._usage.pop(int(message.get("worker", -1)), None)
            worker = int(message.get("worker", -1))
            self.confirmed = wire.apply(self.confirmed, worker, message)
            if worker == self.worker:
                seq = int(message.get("seq", 0))
                self._pending = [m for m in self._pending if m["seq"] > seq]
        self._view = None

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Until the supervisor's end closes (the caller then stops this worker)."""
        self._writer = writer
        for message in self._pending:  # changes made before the line was up
            writer.write(wire.encode(message))
        while line := await reader.readline():
            try:
                self.received(wire.decode(line))
            except (ValueError, KeyError, TypeError) as exc:
                event(log, logging.ERROR, "bad control message", error=repr(exc))
        event(log, logging.WARNING, "supervisor gone", worker=self.worker, action="stopping")

    # Routes held by another worker -----------------------------------------------------------
    def open_remote(
        self,
        client: LiveConnection,
        refusals: Refusals,
        route: Route[int],
        orig: tuple[str, int],
        on_close: Callable[[Pipe], None],
    ) -> Awaitable[Pipe]:
        path = relay_path(self.directory, route.handle)
        return relay.open_remote(self.state, client, refusals, route, orig, on_close, path)

    async def relay_web(
        self, route: Route[int], orig: tuple[str, int], conn_id: int, end: Pipe
    ) -> str:
        """A web connection (``conn_id``, from ``orig``) onto ``route`` of another worker:
        ``end`` spliced onto the relay (``""``), or why not."""
        header = relay.header_for(route, orig, conn_id, "", orig[0])
        timeout = self.state.config.limits.open_timeout + 5
        return await relay.connect(relay_path(self.directory, route.handle), header, end, timeout)
