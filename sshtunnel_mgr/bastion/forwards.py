"""Publishing: an agent's ``tcpip-forward`` for a name, and what it registers.

``publish_refusal`` is the publish decision (plain data: the key's entry, the name, the
port). ``publish`` applies it: a refused request is refused (``refusals``); an allowed one
puts a route in the table and returns a ``VirtualListener``, which opens no socket and
withdraws the route when asyncssh closes it (``cancel-tcpip-forward``, connection loss).
``withdraw_disallowed`` applies a reloaded entry to what a connection already published.
"""

from __future__ import annotations

import logging

import asyncssh

from sshtunnel_mgr.bastion.peer import LiveConnection
from sshtunnel_mgr.bastion.refusals import Refusals
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core.access import AccessEntry
from sshtunnel_mgr.core.names import InvalidName, normalize_name
from sshtunnel_mgr.core.routing import Route
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.bastion")


class VirtualListener(asyncssh.SSHListener):
    """What ``server_requested`` returns for a published name: it registers a route and
    opens no socket. asyncssh closes it on ``cancel-tcpip-forward`` and connection loss."""

    def __init__(self, state: BastionState, name: str, port: int, conn_id: int) -> None:
        super().__init__()
        self._state, self._name, self._port, self._conn_id = state, name, port, conn_id
        self._closed = False

    def get_port(self) -> int:
        return self._port

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        state, name, port, conn_id = self._state, self._name, self._port, self._conn_id
        if any(r.conn_id == conn_id for r in state.routes.lookup(name, port)):
            # Still routed to this connection (not withdrawn by a reload): audited.
            state.audit.unpublish(state.connections.get(conn_id), name, port, conn_id, "closed")
        state.withdraw(name, port, conn_id)
        event(log, logging.INFO, "unpublish", name=name, port=port, conn=conn_id)

    async def wait_closed(self) -> None:
        return None


def publish_refusal(entry: AccessEntry, host: str, port: int) -> str:
    """Why ``entry`` may not publish ``host:port``, or ``""``."""
    if port == 0:
        return "port 0 (a dynamic port) cannot be published; name a fixed port"
    if host in ("", "*", "0.0.0.0", "::"):
        return "wildcard bind address; publish a name, like -R homebox:22:localhost:22"
    try:
        name = normalize_name(host)
    except InvalidName as exc:
        return exc.message
    decision = entry.may_publish(name, port)
    return "" if decision else decision.reason


def publish(
    state: BastionState,
    conn: LiveConnection,
    refusals: Refusals,
    host: str,
    port: int,
    spelling: str,
) -> asyncssh.SSHListener | bool:
    """Publish ``host:port`` for ``conn`` (logged in), answered as ``spelling``."""
    entry = conn.entry
    if entry is None or conn.conn is None:
        return False
    refusal = publish_refusal(entry, host, port)
    if refusal:
        refusals.refuse(
            "publish",
            refusal,
            event="refused publish",
            counter="publish_refused",
            name=host,
            port=port,
        )
        return False
    name = normalize_name(host)
    state.publish(
        Route(
            name=name,
            port=port,
            owner=entry.fingerprint,
            conn_id=conn.conn_id,
            handle=conn,
            spelling=spelling,
            since=state.now(),
        )
    )
    conn.published.append(f"{name}:{port}")
    event(
        log,
        logging.INFO,
        "publish",
        conn=conn.conn_id,
        key=entry.label,
        from_=conn.peer_ip,
        name=name,
        port=port,
    )
    state.audit.publish(conn, name, port)
    return VirtualListener(state, name, port, conn.conn_id)


def withdraw_disallowed(state: BastionState, conn: LiveConnection, entry: AccessEntry) -> list[str]:
    """Withdraw the names ``conn`` published that a reloaded ``entry`` no longer allows;
    they are returned as ``name:port``. Live routed sessions stay."""
    withdrawn = []
    for name, port in state.routes.names_of(conn.conn_id):
        decision = entry.may_publish(name, port)
        if not decision:
            state.withdraw(name, port, conn.conn_id)
            withdrawn.append(f"{name}:{port}")
            state.audit.unpublish(conn, name, port, conn.conn_id, decision.reason)
            event(
                log,
                logging.WARNING,
                "unpublish",
                name=name,
                port=port,
                conn=conn.conn_id,
                reason=decision.reason,
            )
    return withdrawn
