"""The route decision: which agent connection a client's ``direct-tcpip`` reaches, if any.

``route_for`` answers from plain data (the access entry, the route table, the caps) and
raises ``ChannelOpenError`` with the reason the client sees; ``open_route`` then opens the
agent's end (``routeopen``) and returns the client's end of the splice, or refuses with
why the agent's end did not open. Nothing here connects to an address of its own choosing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import asyncssh
from asyncssh import ChannelOpenError

from sshtunnel_mgr.bastion.audit import RoutedPipe, RouteRecord
from sshtunnel_mgr.bastion.peer import LiveConnection
from sshtunnel_mgr.bastion.refusals import Refusals
from sshtunnel_mgr.bastion.routeopen import CLIENT_LEFT, OpenResult, RouteStats, open_agent_end
from sshtunnel_mgr.bastion.splice import Pipe
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core.access import AccessEntry
from sshtunnel_mgr.core.names import InvalidName, normalize_name
from sshtunnel_mgr.core.protocol import NOT_PUBLISHED
from sshtunnel_mgr.core.routing import Route
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.bastion")

OPEN_PROHIBITED = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
OPEN_FAILED = asyncssh.OPEN_CONNECT_FAILED
OPEN_RESOURCE = asyncssh.OPEN_RESOURCE_SHORTAGE


# A route on this bastion's own agent connection, or (a worker of a multi-process
# bastion) one held by another worker: its handle is that worker's number.
Target = Route[LiveConnection] | Route[int]


def _served(state: BastionState, name: str, port: int) -> bool:
    mesh = state.mesh
    return bool(mesh.lookup(name, port) if mesh is not None else state.routes.lookup(name, port))


def _pick(state: BastionState, name: str, port: int) -> Target | None:
    """One serving route; a worker picks among every worker's routes."""
    mesh = state.mesh
    if mesh is None:
        return state.routes.pick(name, port, state.next_pick())
    served = mesh.lookup(name, port)
    if not served:
        return None
    found = served[state.next_pick() % len(served)]
    if found.handle != mesh.worker:
        return found
    return state.routes.route_of(name, port, found.conn_id)


def route_for(
    state: BastionState,
    entry: AccessEntry | None,
    conn_id: int,
    cap_refusal: Callable[[], str],
    host: str,
    port: int,
) -> Target:
    """The route for ``host:port`` asked on connection ``conn_id`` logged in as ``entry``;
    ``cap_refusal`` says why the connection or its key may open no more channels."""
    if entry is None:
        raise ChannelOpenError(OPEN_PROHIBITED, "not authenticated")
    if not state.accepting:
        raise ChannelOpenError(OPEN_FAILED, "this bastion is shutting down")
    if refusal := cap_refusal():
        raise ChannelOpenError(OPEN_RESOURCE, refusal)
    try:
        name = normalize_name(host)
    except InvalidName as exc:
        raise ChannelOpenError(
            OPEN_PROHIBITED, f"{exc.message}; this bastion routes published names only"
        ) from None
    own = state.routes.route_of(name, port, conn_id)
    if own is not None:
        # An agent probing its own tunnel (serving or on standby): the channel loops
        # back down its own connection to its own target, so this grants nothing new.
        return own
    decision = entry.may_reach(name, port)
    if not decision:
        if entry.may_publish(name, port) and not _served(state, name, port):
            # An agent probing its own name, now gone: tell it so (it publishes again).
            raise ChannelOpenError(OPEN_FAILED, f"{name}:{port} {NOT_PUBLISHED}")
        raise ChannelOpenError(OPEN_PROHIBITED, decision.reason)
    route = _pick(state, name, port)
    if route is None:
        raise ChannelOpenError(OPEN_FAILED, f"{name}:{port} {NOT_PUBLISHED}")
    return route


async def open_route(
    state: BastionState,
    client: LiveConnection,
    refusals: Refusals,
    route: Route[LiveConnection],
    orig: tuple[str, int],
    on_close: Callable[[Pipe], None],
) -> Pipe:
    """Open the agent's channel for ``route`` and splice it to the client's, which
    asyncssh opens as soon as this returns (no await in between: early data from the
    home side is held, bounded, for it). On any other outcome the client end
    ``never_opened``: counted closed, audited, and the agent's channel, if it opens
    later, closed at once (bastion/routeopen.py)."""
    stats = route.handle.route_stats.setdefault(
        (route.name, route.port), RouteStats(state.counters)
    )
    client_end = RoutedPipe(on_close=on_close)  # RoutedPipe: for the audit log
    agent_end = RoutedPipe(on_close=stats.closed)
    client_end.link(agent_end)
    if route.conn_id != client.conn_id:  # an agent's probe of its own tunnel: not audited
        client_end.record = RouteRecord(
            route.name, route.port, route.conn_id, route.owner, time.monotonic()
        )
    agent_conn = route.handle.conn
    if client.conn is None or client.conn.is_closed():
        result = OpenResult(CLIENT_LEFT)
    elif agent_conn is None or agent_conn.is_closed():
        result = OpenResult(
            "agent connection lost during open",
            f"{route.name}:{route.port}: the agent's connection was lost",
        )
    else:
        result = await open_agent_end(
            agent_conn, agent_end, route, orig, stats, state.config.limits, client.conn
        )
    if not result.outcome:
        stats.opened(agent_end)
        state.counters["routed_ok"] += 1
        return client_end
    client_end.never_opened(result.outcome)  # counted, audited; agent end closed
    if not result.refusal:  # the client left: nobody to tell
        event(
            log,
            logging.INFO,
            "open abandoned",
            conn=client.conn_id,
            key=client.entry.label if client.entry else "-",
            name=route.name,
            port=route.port,
            agent_conn=route.conn_id,
            reason=result.outcome,
        )
        state.counters["routed_abandoned"] += 1
        raise ChannelOpenError(OPEN_FAILED, result.outcome)
    refusals.refuse(
        "open",
        result.refusal,
        event="refused open",
        counter="routed_target_failed",
        dest=f"{route.name}:{route.port}",
        log_only={"agent_conn": route.conn_id},
    )
    raise ChannelOpenError(OPEN_FAILED, result.refusal)
