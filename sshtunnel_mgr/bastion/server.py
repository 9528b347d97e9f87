"""One ``BastionConnection`` per SSH connection: asyncssh's server callbacks, deny by default.

Thin: each callback asks the piece that decides and answers what it says.

- the access decision: ``validate_public_key`` asks the access policy (access.py) which
  key may log in; its ``ConnectionGuard`` (guard.py) applies the caps, cool-downs and
  per-key admission around it;
- publishing: ``server_requested`` → forwards.py (the publish decision, the route);
- the route decision: ``connection_requested`` → routes.py (which agent a client reaches,
  then the splice);
- sessions: only a key's own rotation requests (keyrequests.py).

Every "no" goes out through ``Refusals.refuse`` (refusals.py): logged, counted, audited.
Nothing here connects to an address of its own choosing, resolves a name, or opens a
listening socket per name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, cast

import asyncssh
from asyncssh import ChannelOpenError

from sshtunnel_mgr.bastion import expiry, forwards, routes
from sshtunnel_mgr.bastion.guard import ConnectionGuard
from sshtunnel_mgr.bastion.keyrequests import KeyRequestSession
from sshtunnel_mgr.bastion.peer import LiveConnection
from sshtunnel_mgr.bastion.refusals import Refusals
from sshtunnel_mgr.bastion.routeopen import RouteStats
from sshtunnel_mgr.bastion.splice import Pipe
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core import policy
from sshtunnel_mgr.core.access import AccessEntry, fingerprint
from sshtunnel_mgr.core.routing import Route
from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.sshcompat import disconnects, forwardreq, kexguess, noreload, sigpolicy
from sshtunnel_mgr.sshcompat.sendpath import tune_connection

log = logging.getLogger("sshtunnel_mgr.bastion")

OPEN_RESOURCE = asyncssh.OPEN_RESOURCE_SHORTAGE


class BastionConnection(asyncssh.SSHServer):
    def __init__(self, state: BastionState) -> None:
        self.state = state
        self.conn_id = state.next_conn_id()
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer_ip = "?"
        self.peer_port = 0
        self.entry: AccessEntry | None = None
        self.authenticated = False  # logged in (even if then refused by a per-key cap)
        self.expiry_timer: asyncio.TimerHandle | None = None  # the key's expiry-time
        self.open_channels = 0
        self.open_sessions = 0  # key-request sessions (max_sessions_per_connection)
        self.sessions_refused = 0
        self.published: list[str] = []  # every name:port this connection published
        self._spellings: dict[tuple[str, int], str] = {}
        self.route_stats: dict[tuple[str, int], RouteStats] = {}
        self.since = state.now()
        # Host keys of the services behind this connection's names (sshtun-hostkey).
        self.home_host_keys: dict[tuple[str, int], str] = {}
        self.refusals = Refusals(state, self)
        self.guard = ConnectionGuard(state, self, self.refusals, self._disconnect_soon)

    def _disconnect_soon(self, code: int, reason: str) -> None:
        if self.conn is not None:
            asyncio.get_running_loop().call_soon(self.conn.disconnect, code, reason)

    # Connection --------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer_ip, self.peer_port = str(peer[0]), int(peer[1])
        if self.guard.refuse_start(conn):  # shutting down, cooling down, max_connections
            return
        self.state.connections[self.conn_id] = self
        forwardreq.remember_bind_spellings(conn, self._spellings)  # as the agent spelt it
        self.tuning = tune_connection(conn)  # cheaper packets, same wire (sshcompat)
        sigpolicy.install(conn, self.signature_refused)  # no ssh-rsa (SHA-1) signatures
        disconnects.install(conn, self.guard.disconnect_sending)  # left_before_login's reason
        kexguess.install(conn)  # guessed first kex packets judged by RFC 4253 (Dropbear)
        noreload.install(conn)  # no second options object per login (no config to re-read)
        event(
            log,
            logging.DEBUG,
            "connect",
            conn=self.conn_id,
            from_=self.peer_ip,
            port=self.peer_port,
        )

    def connection_lost(self, exc: Exception | None) -> None:
        admitted = self.conn_id in self.state.connections  # not refused in connection_made
        self.state.drop_connection(self.conn_id)
        expiry.cancel(self)
        self.guard.release()
        if not admitted:
            return
        if not self.authenticated:
            self.guard.left_before_login(exc)  # logged (rate-limited), audited, penalised
            return
        event(
            log,
            logging.INFO,
            "disconnect",
            conn=self.conn_id,
            key=self.entry.label if self.entry else "-",
            from_=self.peer_ip,
            names=",".join(self.published) or "-",
            reason=str(exc) if exc else "closed",
        )

    # Authentication: public key only -----------------------------------------------
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """A key offer (a query, or a signed request: asyncssh checks the signature after
        this says yes). A refused offer counts toward ``max_auth_tries`` on this
        connection; the source's cool-down counts connections, not offers (guard.py)."""
        if self.guard.refuse_auth_while_cooling():
            return False
        blob = key.public_data
        refusal = policy.key_refusal(key.get_algorithm(), blob)
        if refusal:
            self.guard.auth_failed(f"key {fingerprint(blob)}: {refusal} (user {username!r})")
            return False
        decision = self.state.access.authenticate(blob, self.peer_ip, self.state.wall())
        if decision:
            self.entry = self.state.access.find(blob)
            return True
        self.guard.auth_failed(f"{decision.reason} (user {username!r})")
        return False

    def signature_refused(self, username: str, key_data: bytes, algorithm: str, why: str) -> None:
        """A signed request made with an algorithm the policy refuses (``sigpolicy``); a
        key the policy refuses anyway is refused for what it is (an ECDSA key)."""
        key_type = sigpolicy.signature_algorithm(key_data)  # a key blob starts the same way
        why = policy.key_refusal(key_type, key_data) or why
        self.guard.auth_failed(f"key {fingerprint(key_data)}: {why} (user {username!r})")

    def auth_method_refused(self, method: str, username: str) -> None:
        """Called for password, keyboard-interactive, ... (see ``authlog``)."""
        self.guard.auth_failed(
            f"{method} authentication is not accepted, only publickey (user {username!r})"
        )

    def auth_completed(self) -> None:
        assert self.entry is not None
        self.authenticated = True
        event(
            log,
            logging.INFO,
            "auth ok",
            conn=self.conn_id,
            key=self.entry.label,
            from_=self.peer_ip,
        )
        if not self.guard.admit_key():  # per-key connection cap: refused, disconnecting
            self.entry = None  # nothing more for this connection before the disconnect lands
            return
        expiry.schedule(self)  # closed when its key's expiry-time passes

    def revoke(self, reason: str) -> None:
        """Close this connection at once: its key is no longer allowed (a reload, or its
        expiry-time passed)."""
        expiry.cancel(self)
        self.refusals.refuse("revoked", reason, event="revoked")
        if self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, f"access revoked: {reason}")

    def reapply(self, entry: AccessEntry) -> list[str]:
        """Adopt a reloaded access entry; withdraw names it no longer allows publishing.
        Live routed sessions stay; new requests are judged by the new entry."""
        self.entry = entry
        expiry.schedule(self)  # the reloaded expiry-time (extended, shortened, removed)
        return forwards.withdraw_disallowed(self.state, self, entry)

    # Sessions: no shell, pty, subsystem, agent or X11; only a key's own rotation requests.
    def session_requested(self) -> asyncssh.SSHServerSession[str] | bool:
        if self.entry is None:
            return False
        limit = self.state.config.limits.max_sessions_per_connection
        if self.open_sessions >= limit:
            self.sessions_refused += 1
            n = self.sessions_refused
            reason = f"too many sessions on this connection (max {limit})"
            self.log_refused_session(
                reason,
                counter="sessions_refused",
                record=n <= 10 or n % 100 == 0,  # the first 10 of a connection, every 100th
                refused=n,
            )
            raise ChannelOpenError(
                OPEN_RESOURCE, f"too many sessions on this connection (max {limit})"
            )
        self.open_sessions += 1
        return KeyRequestSession(self, self.state.config.limits.key_request_timeout)

    def session_closed(self) -> None:
        self.open_sessions -= 1

    def log_refused_session(self, reason: str, **extra: Any) -> None:
        self.refusals.refuse(
            "session",
            reason,
            event="refused session",
            log_only={"note": "no shell, exec or subsystem here"},
            **extra,
        )

    def log_key_request(
        self, verb: str, detail: str, *, ok: bool, result: dict[str, Any] | None = None
    ) -> None:
        if not ok:
            self.refusals.refuse("key_request", detail, event="refused key request", request=verb)
            return
        self.state.audit.key_request(self, verb, result or {})
        event(
            log,
            logging.INFO,
            "key request",
            conn=self.conn_id,
            key=self.entry.label if self.entry else "-",
            from_=self.peer_ip,
            request=verb,
            result=detail,
        )

    # Publishing (tcpip-forward from an agent): forwards.py ------------------------------
    def server_requested(self, listen_host: str, listen_port: int) -> asyncssh.SSHListener | bool:
        spelling = self._spellings.pop((listen_host, listen_port), listen_host)
        return forwards.publish(self.state, self, self.refusals, listen_host, listen_port, spelling)

    # Routing (direct-tcpip from a client): routes.py ----------------------------------------
    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        try:
            route = routes.route_for(
                self.state,
                self.entry,
                self.conn_id,
                self.guard.channel_refusal,
                dest_host,
                dest_port,
            )
        except ChannelOpenError as exc:
            self.refusals.refuse(
                "open",
                exc.reason,
                event="refused open",
                counter="routed_refused",
                dest=f"{dest_host}:{dest_port}",
            )
            raise
        self.open_channels += 1
        if self.state.mesh is not None and self.guard.key:  # per-key caps across workers
            self.state.mesh.usage(self.guard.key, 0, 1)
        probe = route.conn_id == self.conn_id
        event(
            log,
            logging.DEBUG if probe else logging.INFO,
            "probe" if probe else "route",
            conn=self.conn_id,
            key=self.entry.label if self.entry else "-",
            from_=self.peer_ip,
            name=route.name,
            port=route.port,
            agent_conn=route.conn_id,
        )
        orig = (orig_host, orig_port)
        if self.state.mesh is not None and isinstance(route.handle, int):  # another worker's
            return self.state.mesh.open_remote(
                self, self.refusals, route, orig, self._channel_closed
            )
        local = cast(Route[LiveConnection], route)
        return routes.open_route(self.state, self, self.refusals, local, orig, self._channel_closed)

    def _channel_closed(self, pipe: Pipe) -> None:
        self.open_channels -= 1
        if self.state.mesh is not None and self.guard.key:
            self.state.mesh.usage(self.guard.key, 0, -1)
        self.state.channel_closed()
        self.state.audit.routed(self, pipe, not self.state.accepting)
        peer_bytes = pipe.peer.bytes_in if pipe.peer else 0
        event(
            log,
            logging.DEBUG,
            "channel closed",
            conn=self.conn_id,
            bytes_up=pipe.bytes_in,
            bytes_down=peer_bytes,
        )
