"""The bastion's abuse-resistance hooks, called from ``BastionConnection``'s callbacks.

They tie the pure pieces to a live connection: per-source cool-downs after failed logins
(``penalties``), per-key caps on connections and channels (``limits``), and the audit log
(``audit``). Each hook logs what it refuses with the reason, and writes it to the audit log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import asyncssh

from sshtunnel_mgr.bastion.audit import RoutedPipe, RouteRecord
from sshtunnel_mgr.bastion.limits import channel_refusal, connection_refusal

if TYPE_CHECKING:
    from sshtunnel_mgr.bastion.server import BastionConnection
    from sshtunnel_mgr.bastion.state import BastionState
    from sshtunnel_mgr.routing import Route

log = logging.getLogger("sshtunnel_mgr.bastion")


def _disconnect_soon(conn: asyncssh.SSHServerConnection | None, code: int, reason: str) -> None:
    if conn is not None:
        asyncio.get_running_loop().call_soon(conn.disconnect, code, reason)


# Connect and authentication --------------------------------------------------------------
def refuse_penalised_source(bc: BastionConnection, conn: asyncssh.SSHServerConnection) -> bool:
    """In ``connection_made``, before any key exchange: drop a source that is cooling down.
    The socket is aborted without a byte sent (no banner, no key exchange work)."""
    penalty = bc.state.penalties.check(bc.peer_ip)
    if penalty is None:
        return False
    bc.state.counters["penalty_refused"] += 1
    if penalty.worth_logging:
        log.warning(
            "refused conn=%d from=%s reason=%s (refusal %d of this cool-down)",
            bc.conn_id,
            bc.peer_ip,
            penalty.reason,
            penalty.refused,
        )
        bc.state.audit.refused(bc, "penalty", penalty.reason, refused=penalty.refused)
    conn.abort()
    return True


def refuse_startup_flood(bc: BastionConnection, conn: asyncssh.SSHServerConnection) -> bool:
    """In ``connection_made``: refuse a source that already has ``max_startups_per_source``
    connections that have not logged in (each costs a key exchange); count this one."""
    limit = bc.state.config.limits.max_startups_per_source
    if limit and bc.state.startups[bc.peer_ip] >= limit:
        reason = f"too many connections from {bc.peer_ip} not logged in yet (max {limit})"
        log.warning("refused conn=%d from=%s reason=%s", bc.conn_id, bc.peer_ip, reason)
        bc.state.counters["startup_refused"] += 1
        bc.state.audit.refused(bc, "connection", reason)
        conn.abort()
        return True
    bc.state.startups[bc.peer_ip] += 1
    bc.in_startup = True
    return False


def startup_over(bc: BastionConnection) -> None:
    """Logged in or gone: no longer counts against its source's startups."""
    if bc.in_startup:
        bc.in_startup = False
        bc.state.startups[bc.peer_ip] -= 1
        if bc.state.startups[bc.peer_ip] <= 0:
            del bc.state.startups[bc.peer_ip]


def refuse_auth_while_cooling(bc: BastionConnection) -> bool:
    """In ``validate_public_key``: a connection that got in before its source's cool-down
    began may not log in during it (not even with a good key)."""
    penalty = bc.state.penalties.check(bc.peer_ip)
    if penalty is None:
        return False
    if penalty.worth_logging:
        log.warning(
            "auth refused conn=%d from=%s reason=%s", bc.conn_id, bc.peer_ip, penalty.reason
        )
        bc.state.audit.refused(bc, "penalty", penalty.reason, refused=penalty.refused)
    _disconnect_soon(bc.conn, asyncssh.DISC_HOST_NOT_ALLOWED_TO_CONNECT, penalty.reason)
    return True


def auth_failed(bc: BastionConnection, reason: str) -> None:
    """Count a failed authentication against the source; start its cool-down at the limit."""
    bc.state.audit.refused(bc, "auth", reason)
    penalty = bc.state.penalties.failed(bc.peer_ip)
    if penalty is None:
        return
    if penalty.failures == bc.state.penalties.max_failures:  # this failure started it
        log.warning(
            "penalty source=%s failures=%d seconds=%.0f conn=%d reason=too many failed "
            "authentications; new connections from it are refused until the cool-down ends",
            penalty.source,
            penalty.failures,
            penalty.remaining,
            bc.conn_id,
        )
        bc.state.counters["penalties"] += 1
        bc.state.audit.penalty(bc, penalty.source, penalty.failures, penalty.remaining)
    _disconnect_soon(bc.conn, asyncssh.DISC_HOST_NOT_ALLOWED_TO_CONNECT, penalty.reason)


def auth_completed(bc: BastionConnection) -> None:
    """Admit the key's connection under its per-key cap, or disconnect with the reason."""
    entry = bc.entry
    assert entry is not None
    state = bc.state
    limit = state.config.limits.max_connections_per_key
    refusal = connection_refusal(state.key_usage, entry.fingerprint, limit)
    if refusal:
        log.warning(
            "refused conn=%d key=%s from=%s reason=%s", bc.conn_id, entry.label, bc.peer_ip, refusal
        )
        state.counters["key_limit_refused"] += 1
        state.audit.refused(bc, "limit", refusal)
        bc.entry = None  # nothing more for this connection before the disconnect lands
        _disconnect_soon(bc.conn, asyncssh.DISC_TOO_MANY_CONNECTIONS, refusal)
        return
    state.key_usage.add(entry.fingerprint, bc)
    state.penalties.succeeded(bc.peer_ip)
    state.audit.login(bc)


def connection_lost(bc: BastionConnection) -> None:
    if bc.entry is not None:
        bc.state.key_usage.remove(bc.entry.fingerprint, bc)


# Channels --------------------------------------------------------------------------------
def key_channel_refusal(bc: BastionConnection) -> str:
    """Why one more routed channel for this connection's key is refused, or ``""``."""
    if bc.entry is None:
        return ""
    limit = bc.state.config.limits.max_channels_per_key
    return channel_refusal(bc.state.key_usage, bc.entry.fingerprint, limit)


def route_opened(
    bc: BastionConnection, route: Route[BastionConnection], client_end: object
) -> None:
    """Remember what a routed channel reaches, for its ``route`` audit event at the end.
    An agent's probe of its own tunnel is not audited."""
    if isinstance(client_end, RoutedPipe) and route.conn_id != bc.conn_id:
        client_end.record = RouteRecord(
            route.name, route.port, route.conn_id, route.owner, time.monotonic()
        )


def listener_closed(state: BastionState, name: str, port: int, conn_id: int) -> None:
    """A published name's listener closed (``cancel-tcpip-forward`` or the agent's
    connection ended): audit the unpublish if the name was still routed to it."""
    if any(r.conn_id == conn_id for r in state.routes.lookup(name, port)):
        state.audit.unpublish(state.connections.get(conn_id), name, port, conn_id, "closed")
