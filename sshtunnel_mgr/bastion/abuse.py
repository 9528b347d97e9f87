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
from sshtunnel_mgr.bastion.preauth import handshake_reason
from sshtunnel_mgr.logsetup import event

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
        event(
            log,
            logging.WARNING,
            "refused",
            conn=bc.conn_id,
            from_=bc.peer_ip,
            reason=penalty.reason,
            refusal=penalty.refused,  # the how-manieth of this cool-down
        )
        bc.state.audit.refused(bc, "penalty", penalty.reason, refused=penalty.refused)
    conn.abort()
    return True


def refuse_auth_while_cooling(bc: BastionConnection) -> bool:
    """In ``validate_public_key``: a connection that got in before its source's cool-down
    began may not log in during it (not even with a good key)."""
    penalty = bc.state.penalties.check(bc.peer_ip)
    if penalty is None:
        return False
    if penalty.worth_logging:
        event(
            log,
            logging.WARNING,
            "auth refused",
            conn=bc.conn_id,
            from_=bc.peer_ip,
            reason=penalty.reason,
        )
        bc.state.audit.refused(bc, "penalty", penalty.reason, refused=penalty.refused)
    bc.auth_attempted = False  # its source is already penalised: not counted again
    _disconnect_soon(bc.conn, asyncssh.DISC_HOST_NOT_ALLOWED_TO_CONNECT, penalty.reason)
    return True


def auth_failed(bc: BastionConnection, reason: str) -> None:
    """A refused offer (or method): audited. It is not a failure of the source by itself:
    an ssh-agent offers its keys one by one (see ``left_before_login``)."""
    bc.state.audit.refused(bc, "auth", reason)


def left_before_login(bc: BastionConnection, exc: Exception | None) -> None:
    """A connection ended without logging in: log and audit why (rate-limited per source),
    and, as OpenSSH's ``PerSourcePenalties authfail``, count ONE failed authentication
    against its source if it tried to authenticate. One that never sent an authentication
    request (a scanner, a failed key exchange, a login timeout: OpenSSH's ``noauth``) costs
    no penalty; ``max_startups_per_source`` and ``login_timeout`` bound those."""
    state = bc.state
    # What the bastion's DISCONNECT said (a failed negotiation), else what asyncssh reports.
    reason = handshake_reason(bc.disconnect_sent or (str(exc) if exc is not None else ""))
    phase = "authentication" if bc.auth_attempted else "key exchange"
    budget = state.preauth_log.hit(bc.peer_ip)
    state.counters["preauth_disconnects"] += 1
    if budget.write:  # the first 10 of a source in a minute, then every 100th
        event(
            log,
            logging.INFO,
            "left before login",
            conn=bc.conn_id,
            from_=bc.peer_ip,
            phase=phase,
            auth_failures=bc.auth_failures,
            reason=reason,
            count=budget.count,
        )
        state.audit.refused(bc, "handshake", reason, phase=phase, count=budget.count)
    if not bc.auth_attempted:
        return
    penalty = state.penalties.failed(bc.peer_ip)
    if penalty is not None and penalty.failures == state.penalties.max_failures:
        event(  # this connection started the cool-down
            log,
            logging.WARNING,
            "penalty",
            source=penalty.source,
            failures=penalty.failures,
            seconds=round(penalty.remaining),
            conn=bc.conn_id,
            reason="too many connections failed to authenticate; new connections from it "
            "are refused until the cool-down ends",
        )
        state.counters["penalties"] += 1
        state.audit.penalty(bc, penalty.source, penalty.failures, penalty.remaining)


def auth_completed(bc: BastionConnection) -> None:
    """Admit the key's connection under its per-key cap, or disconnect with the reason."""
    entry = bc.entry
    assert entry is not None
    state = bc.state
    limit = state.config.limits.max_connections_per_key
    refusal = connection_refusal(state.key_usage, entry.fingerprint, limit)
    if refusal:
        event(
            log,
            logging.WARNING,
            "refused",
            conn=bc.conn_id,
            key=entry.label,
            from_=bc.peer_ip,
            reason=refusal,
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
