"""One browser connection on a web listener: read its head, then answer or splice it.

A ``WebConn`` is the asyncio protocol of one accepted TCP connection. It first collects
what the client sends into one buffer, bounded in size (the reader's cap) and in time (one
deadline for the whole head: a client that trickles bytes is cut off all the same), and
asks its ``HeadReader`` (https.py: the ClientHello; http.py: the request head) what to do:

- ``Reply``: write a few bytes (a TLS alert, an HTTP response) and close;
- ``Forward``: stop reading, open a ``forwarded-tcpip`` channel down the agent's connection
  with the client's real address as originator (``routeopen.open_agent_end``, with its
  timeout and caps), replay every byte read so far, then splice the TCP connection and the
  channel. The TCP side of the splice is a ``RoutedPipe`` whose "channel" is the asyncio
  transport: it has the same calls (write, write_eof, close, is_closing, pause_reading,
  resume_reading), so the splice's bounds and backpressure (bastion/splice.py) hold here too.
  In a worker of a multi-process bastion, a name another worker holds is opened by that
  worker, through its relay socket (workers/relay.py: the same header as an SSH client's,
  originator the real client address); the relay stream is then the agent's end.

Before it opens, the connection is counted against the publishing key's
``max_channels_per_key`` (``Front.claim``; at the cap the reader's ``busy`` answer goes
out instead), and released when its splice ends. Once spliced, an ``IdleWatch`` closes it
after ``idle_timeout`` with no byte either way. A ``Forward`` with ``one_request`` (an ACME
challenge) replays its own head, sends the agent EOF and drops what the client sends next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

import asyncssh

from sshtunnel_mgr.bastion.audit import RoutedPipe, RouteRecord
from sshtunnel_mgr.bastion.peer import LiveConnection
from sshtunnel_mgr.bastion.refusals import Refusals
from sshtunnel_mgr.bastion.routeopen import RouteStats, open_agent_end
from sshtunnel_mgr.bastion.splice import Pipe
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core.access import AccessEntry
from sshtunnel_mgr.core.addrmatch import parse_peer
from sshtunnel_mgr.core.routing import Route
from sshtunnel_mgr.core.webconfig import SourceRate, WebConfig, WebPolicy
from sshtunnel_mgr.runtime.idle import IdleWatch
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.bastion")


@dataclass(frozen=True)
class Reply:
    """Answer with ``data`` and close; ``refusal`` (if any) goes to the refusal path."""

    data: bytes
    refusal: str = ""
    counter: str = ""
    name: str = ""
    note: str = ""  # what was answered (for the log): "308", "404", "alert", ...


@dataclass(frozen=True)
class Forward:
    route: Route[LiveConnection] | Route[int]  # int: held by that worker (a relay)
    name: str
    # What the agent gets instead of the bytes read (None: those bytes, as they came).
    replay: bytes | None = None
    # Pass this one request only: EOF to the agent after it, the client's later bytes
    # dropped (an ACME challenge on a name served on 443: nothing else may follow it).
    one_request: bool = False


Decision = Reply | Forward


class Front(Protocol):
    """What a connection and its reader use of the web front (``WebFront``, front.py)."""

    state: BastionState
    config: WebConfig
    policy: WebPolicy
    rate: SourceRate
    routed_open: int

    @property
    def https_port(self) -> int: ...

    def arrived(self, conn: WebConn) -> bool: ...

    def decided(self, conn: WebConn) -> None: ...

    def route_closed(self) -> None: ...

    def claim(self, key: str) -> str: ...

    def release(self, key: str) -> None: ...

    def worth_recording(self, source: str) -> bool: ...

    def left(self, conn: WebConn) -> None: ...

    def keep(self, task: asyncio.Future[None]) -> None: ...


class HeadReader(Protocol):
    via: str  # "https" or "http"
    timeout: float

    def feed(self, buffer: bytes, source_ip: str) -> Decision | None:
        """What to do with everything read so far; None: read more."""

    def timed_out(self) -> Reply:
        """What to do when the head is not complete in time."""

    def closed_early(self) -> Reply:
        """What to log when the client sends EOF before its head is complete."""

    def busy(self, reason: str, name: str) -> Reply:
        """What to answer when the publishing key holds ``max_channels_per_key`` already."""


class WebConn(asyncio.Protocol):
    """An audit ``Peer`` too (``conn``, ``from``; never a key)."""

    entry: AccessEntry | None = None

    def __init__(self, front: Front, reader: HeadReader) -> None:
        self.front = front
        self.state = front.state
        self.reader = reader
        self.conn_id = front.state.next_conn_id()
        self.peer_ip, self.peer_port = "", 0
        self.refusals = Refusals(front.state, self)
        self.transport: asyncio.Transport | None = None
        self.pipe: RoutedPipe | None = None  # the TCP end of the splice, once open
        self._buffer = bytearray()
        self._deciding = True
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._claim: str | None = None  # the publishing key this connection counts against
        self._drop_input = False  # one request passed: the client's later bytes go nowhere
        self._idle: IdleWatch | None = None
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio callbacks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        found = parse_peer(str(peer[0]))
        self.peer_ip = found.text if found is not None else str(peer[0])
        self.peer_port = int(peer[1])
        if not self.front.arrived(self):
            return
        self._timer = asyncio.get_running_loop().call_later(self.reader.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            if not self._drop_input:
                self.pipe.data_received(data, None)
            return
        if not self._deciding:
            return  # paused; a last segment may still arrive with the pause
        self._buffer += data
        decision = self.reader.feed(bytes(self._buffer), self.peer_ip)
        if decision is not None:
            self._decided(decision)

    def eof_received(self) -> bool:
        if self.pipe is not None:
            if not self._drop_input:  # else the agent has had its EOF already
                self.pipe.eof_received()
            return True
        if self._deciding:
            self._decided(self.reader.closed_early())
        return False

    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.pause_writing()

    def resume_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        if not self._gone.done():
            self._gone.set_result(None)
        if self.pipe is not None:
            self.pipe.connection_lost(exc)
        self.front.left(self)

    # what routeopen needs from "the client" ----------------------------------------------
    def is_closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        await asyncio.shield(self._gone)

    # Deciding ------------------------------------------------------------------------------
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._deciding and not self._closed:
            self._decided(self.reader.timed_out())

    def _decided(self, decision: Decision) -> None:
        self._deciding = False
        self._cancel_timer()
        self.front.decided(self)
        transport = self.transport
        assert transport is not None
        if isinstance(decision, Reply):
            self._reply(decision)
            return
        owner = decision.route.owner
        refusal = self.front.claim(owner)  # at once: no other decision slips in between
        if refusal:
            self._reply(self.reader.busy(refusal, decision.name))
            return
        self._claim = owner
        transport.pause_reading()
        self.front.keep(asyncio.ensure_future(self._forward(decision)))

    def _reply(self, reply: Reply) -> None:
        fields: dict[str, Any] = {"via": self.reader.via}
        if reply.name:
            fields["name"] = reply.name
        if reply.refusal:
            self.refusals.refuse(
                "web",
                reply.refusal,
                event="refused web",
                counter=f"web_refused_{reply.counter}" if reply.counter else "web_refused",
                record=self.front.worth_recording(self.peer_ip),
                log_only={"answer": reply.note} if reply.note else None,
                **fields,
            )
        else:
            self.state.counters[f"web_answered_{reply.note}"] += 1
            event(
                log,
                logging.INFO,
                "web answered",
                conn=self.conn_id,
                from_=self.peer_ip,
                **fields,
                answer=reply.note,
            )
        self.close(reply.data)

    def close(self, data: bytes = b"") -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if data:
            transport.write(data)
        transport.close()

    # Forwarding ----------------------------------------------------------------------------
    async def _forward(self, forward: Forward) -> None:
        """Open and splice; whatever goes wrong, the client's connection is not left
        paused and open (the front logs the failure)."""
        try:
            await self._open(forward)
        except BaseException:
            self._release()
            self.close()
            raise

    async def _open(self, forward: Forward) -> None:
        route, state = forward.route, self.state
        local = None if isinstance(route.handle, int) else route
        stats = None
        if local is not None:
            stats = local.handle.route_stats.setdefault(
                (route.name, route.port), RouteStats(state.counters)
            )
        client_end = RoutedPipe(on_close=self._pipe_closed)
        agent_end = RoutedPipe(on_close=None if stats is None else stats.closed)
        client_end.link(agent_end)
        client_end.record = RouteRecord(
            route.name, route.port, route.conn_id, route.owner, time.monotonic(), self.reader.via
        )
        self.front.routed_open += 1
        replay = bytes(self._buffer) if forward.replay is None else forward.replay
        client_end.data_received(replay, None)  # replayed once the agent opens
        self._buffer.clear()
        if forward.one_request:
            self._drop_input = True
            client_end.eof_received()  # the agent answers this one request, then closes
        orig = (self.peer_ip, self.peer_port)
        if self._closed:
            outcome, refusal = "client left during open", ""
        elif local is None:  # another worker's agent: through its relay socket
            mesh = state.mesh
            assert mesh is not None
            route_int = cast(Route[int], route)
            outcome = refusal = await mesh.relay_web(route_int, orig, self.conn_id, agent_end)
            if not outcome:
                state.counters["web_routed_relayed"] += 1
        elif (agent_conn := local.handle.conn) is None or agent_conn.is_closed():
            outcome = refusal = "agent connection lost during open"
        else:
            assert stats is not None
            result = await open_agent_end(
                agent_conn, agent_end, local, orig, stats, state.config.limits, self
            )
            outcome, refusal = result.outcome, result.refusal
        if not outcome and not self._closed:
            if stats is not None:
                stats.opened(agent_end)
            state.counters["web_routed_ok"] += 1
            transport = self.transport
            assert transport is not None
            self.pipe = client_end
            client_end.connection_made(cast(asyncssh.SSHTCPChannel[bytes], transport))
            transport.resume_reading()
            timeout = self.front.config.idle_timeout
            if timeout > 0 and not self._closed:
                self._idle = IdleWatch(
                    timeout, lambda: client_end.bytes_in + agent_end.bytes_in, self._idled
                )
            return
        client_end.never_opened(outcome or "client left during open")
        if refusal:
            self.refusals.refuse(
                "web",
                refusal,
                event="refused web",
                counter="web_refused_target",
                via=self.reader.via,
                name=forward.name,
            )
        self.close()

    def _idled(self) -> None:
        """No byte either way for ``idle_timeout``: close both ends, say so in the log, the
        counters and the route's audit record."""
        pipe, timeout = self.pipe, self.front.config.idle_timeout
        if pipe is None or self._closed:
            return
        assert isinstance(pipe, RoutedPipe)
        pipe.outcome = f"idle for {timeout:g} s"
        self.state.counters["web_idle_closed"] += 1
        record = pipe.record
        event(
            log,
            logging.INFO,
            "web idle",
            conn=self.conn_id,
            from_=self.peer_ip,
            via=self.reader.via,
            name=record.name if record is not None else "-",
            reason=pipe.outcome,
        )
        self.close()

    def _release(self) -> None:
        if self._claim is not None:
            self.front.release(self._claim)
            self._claim = None

    def _pipe_closed(self, pipe: Pipe) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._release()
        self.front.route_closed()
        self.state.audit.routed(self, pipe, not self.state.accepting)
        self.close()
