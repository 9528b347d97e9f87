"""Reaching a name held on another worker: a unix socket between the two workers.

Worker A (where the client logged in and was allowed) connects to worker B's relay socket
and sends one header line: the route (name, port, B's agent connection), the originator
address and, for B's log, the client's key and source. B checks that the route is still
its own, opens the ``forwarded-tcpip`` channel down its agent's connection
(``routeopen.open_agent_end``: its timeout and caps), answers one line (``{"ok": true}`` or
the refusal), then both splice raw bytes: the client's SSH channel on A, the agent's on B,
the unix stream between them is a splice end whose "channel" is the transport (as the web
front's TCP side). No second SSH encryption; the access decision stays on A.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, cast

import asyncssh
from asyncssh import ChannelOpenError

from sshtunnel_mgr.bastion.audit import RoutedPipe, RouteRecord
from sshtunnel_mgr.bastion.peer import LiveConnection
from sshtunnel_mgr.bastion.refusals import Refusals
from sshtunnel_mgr.bastion.routeopen import RouteStats, open_agent_end
from sshtunnel_mgr.bastion.splice import Pipe
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core.routing import Route
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.bastion")

MAX_HEADER = 4096
Callback = Any  # Callable[[Pipe], None]


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # nobody may wait for a header any more (its peer went)


class _Stream(asyncio.Protocol):
    """One end of a relay connection: a header line first, then the splice's bytes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pipe: RoutedPipe | None = None  # the stream's end of the splice, once known
        self.header: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.header.add_done_callback(_retrieved)
        self._buffer = bytearray()  # the header, then what comes before the splice
        self._eof_held = False
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.data_received(data, None)
            return
        self._buffer += data  # held (bounded by the header's cap and by the peer's window)
        if self.header.done():
            return
        line, found, rest = bytes(self._buffer).partition(b"\n")
        if not found:
            if len(self._buffer) > MAX_HEADER:
                self.header.set_exception(ValueError("relay header too long"))
            return
        self._buffer = bytearray(rest)
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("relay header is not an object")
        except ValueError as exc:
            self.header.set_exception(exc)
            return
        self.header.set_result(message)

    def eof_received(self) -> bool:
        if self.pipe is not None:
            self.pipe.eof_received()
        else:
            self._eof_held = True
        return True

    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.pause_writing()

    def resume_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.header.done():
            self.header.set_exception(ConnectionError("relay connection closed"))
        if not self._gone.done():
            self._gone.set_result(None)
        if self.pipe is not None:
            self.pipe.connection_lost(exc)

    # what routeopen needs from "the client" ----------------------------------------------
    def is_closed(self) -> bool:
        return self.closed

    async def wait_closed(self) -> None:
        await asyncio.shield(self._gone)

    def splice(self, pipe: RoutedPipe) -> None:
        """From now on the stream is ``pipe``'s channel (what came after the header is
        handed on first)."""
        self.pipe = pipe
        if self._buffer:
            pipe.data_received(bytes(self._buffer), None)
            self._buffer.clear()
        if self._eof_held:
            pipe.eof_received()
        assert self.transport is not None
        pipe.connection_made(cast(asyncssh.SSHTCPChannel[bytes], self.transport))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


# Worker A: the client's side --------------------------------------------------------------
async def connect(path: Path, header: dict[str, Any], end: Pipe, timeout: float) -> str:
    """Ask the worker at ``path`` to open ``header``'s route; on its ok, ``end`` is spliced
    onto the relay stream and ``""`` returned, else the reason (the stream closed)."""
    dest = f"{header['name']}:{header['port']}"
    stream: _Stream | None = None
    try:
        loop = asyncio.get_running_loop()
        _, opened = await asyncio.wait_for(loop.create_unix_connection(_Stream, str(path)), 5)
        stream = opened
        assert opened.transport is not None
        opened.transport.write(json.dumps(header).encode() + b"\n")
        answer = await asyncio.wait_for(asyncio.shield(opened.header), timeout)
    except (OSError, ValueError, TimeoutError) as exc:
        if stream is not None:
            stream.close()
        refusal = f"{dest}: the worker holding it did not answer ({exc or type(exc).__name__})"
        answer = {"ok": False, "reason": refusal}
    if answer.get("ok") is True and stream is not None and not stream.closed:
        stream.splice(cast(RoutedPipe, end))
        return ""
    if stream is not None:
        stream.close()
    return str(answer.get("reason") or f"{dest}: relay closed")


def header_for(
    route: Route[int], orig: tuple[str, int], conn_id: int, key: str, source: str
) -> dict[str, Any]:
    """The relay header: the route, the originator address the agent is told (the real
    client's), and for the holding worker's log the client's connection, key ("" for a
    web connection: a browser has none) and source."""
    return {
        "name": route.name,
        "port": route.port,
        "conn": route.conn_id,
        "orig": list(orig),
        "client_conn": conn_id,
        "key": key,
        "from": source,
    }


async def open_remote(
    state: BastionState,
    client: LiveConnection,
    refusals: Refusals,
    route: Route[int],
    orig: tuple[str, int],
    on_close: Callback,
    path: Path,
) -> Pipe:
    """The client's end of a splice onto ``route``, held by the worker at ``path``."""
    client_end = RoutedPipe(on_close=on_close)
    stream_end = RoutedPipe()
    client_end.link(stream_end)
    client_end.record = RouteRecord(
        route.name, route.port, route.conn_id, route.owner, time.monotonic()
    )
    dest = f"{route.name}:{route.port}"
    key = client.entry.fingerprint if client.entry else ""
    header = header_for(route, orig, client.conn_id, key, client.peer_ip)
    timeout = state.config.limits.open_timeout + 5  # B's own open is bounded by open_timeout
    reason = await connect(path, header, stream_end, timeout)
    if not reason:
        state.counters["routed_ok"] += 1
        state.counters["routed_relayed"] += 1
        return client_end
    client_end.never_opened(reason)
    refusals.refuse(
        "open",
        reason,
        event="refused open",
        counter="routed_target_failed",
        dest=dest,
        log_only={"agent_conn": route.conn_id},
    )
    raise ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason)


# Worker B: the agent's side -----------------------------------------------------------------
class RelayServer:
    """This worker's relay socket (mode 0600, in the supervisor's private directory)."""

    def __init__(self, state: BastionState, path: Path) -> None:
        self.state = state
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # a previous run of this worker's
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._accepted, str(self.path))
        os.chmod(self.path, 0o600)

    def _accepted(self) -> _Stream:
        stream = _Stream()
        task = asyncio.ensure_future(self._serve(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return stream

    async def _serve(self, stream: _Stream) -> None:
        answer: dict[str, Any] | None
        try:
            header = await asyncio.wait_for(asyncio.shield(stream.header), 10)
            answer = await self._open(stream, header)
        except (ValueError, ConnectionError, TimeoutError, KeyError, TypeError) as exc:
            event(log, logging.WARNING, "relay refused", reason=repr(exc))
            stream.close()
            return
        except Exception as exc:  # a bug: logged, the client's open refused
            event(log, logging.ERROR, "relay failed", error=repr(exc), exc_info=exc)
            answer = {"ok": False, "reason": "relay failed"}
        if answer is not None and stream.transport is not None:
            if not stream.transport.is_closing():
                stream.transport.write(json.dumps(answer).encode() + b"\n")
            stream.close()

    async def _open(self, stream: _Stream, header: dict[str, Any]) -> dict[str, Any] | None:
        """Open and splice (None), or the refusal to answer."""
        name, port, conn_id = str(header["name"]), int(header["port"]), int(header["conn"])
        dest = f"{name}:{port}"
        route = self.state.routes.route_of(name, port, conn_id)
        agent_conn = route.handle.conn if route is not None else None
        if route is None or agent_conn is None or agent_conn.is_closed():
            return {"ok": False, "reason": f"{dest} is not published here any more"}
        stats = route.handle.route_stats.setdefault((name, port), RouteStats(self.state.counters))
        stream_end = RoutedPipe(on_close=lambda _pipe: self._ended(stream))
        agent_end = RoutedPipe(on_close=stats.closed)
        stream_end.link(agent_end)
        orig = header.get("orig") or ["", 0]
        result = await open_agent_end(
            agent_conn,
            agent_end,
            route,
            (str(orig[0]), int(orig[1])),
            stats,
            self.state.config.limits,
            stream,
        )
        if result.outcome or stream.closed:
            stream_end.never_opened(result.outcome or "client left during open")
            return {"ok": False, "reason": result.refusal or result.outcome}
        stats.opened(agent_end)
        self.state.relayed += 1  # drained by a stop as a routed channel is
        fields: dict[str, Any] = {"client_conn": header.get("client_conn")}
        if header.get("key"):  # a web connection's browser has no key
            fields["key"] = header["key"]
        event(
            log,
            logging.INFO,
            "relayed",
            name=name,
            port=port,
            agent_conn=conn_id,
            agent_key=route.owner,  # the publishing key, as the audit's route records
            **fields,
            from_=header.get("from"),
        )
        assert stream.transport is not None
        stream.transport.write(b'{"ok":true}\n')  # before any byte of the home side
        stream.splice(stream_end)
        return None

    def _ended(self, stream: _Stream) -> None:
        if stream.pipe is not None:  # it was spliced (counted), not refused
            self.state.relayed -= 1
            self.state.channel_closed()
        stream.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.path.unlink(missing_ok=True)

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
