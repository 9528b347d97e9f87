"""One ``BastionConnection`` per SSH connection: asyncssh's server callbacks, deny by default.

Every answer comes from the access policy and the route table; nothing here connects to
an address of its own choosing, resolves a name, or opens a listening socket per name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import asyncssh
from asyncssh import ChannelOpenError

from sshtunnel_mgr import policy
from sshtunnel_mgr.access import AccessEntry, fingerprint
from sshtunnel_mgr.bastion import abuse, expiry
from sshtunnel_mgr.bastion.audit import RoutedPipe
from sshtunnel_mgr.bastion.keyrequests import KeyRequestSession
from sshtunnel_mgr.bastion.routeopen import CLIENT_LEFT, OpenResult, RouteStats, open_agent_end
from sshtunnel_mgr.bastion.splice import Pipe
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.logsetup import event
from sshtunnel_mgr.names import InvalidName, normalize_name
from sshtunnel_mgr.protocol import NOT_PUBLISHED
from sshtunnel_mgr.routing import Route
from sshtunnel_mgr.sshcompat import disconnects, forwardreq, kexguess, sigpolicy
from sshtunnel_mgr.sshcompat.sendpath import tune_connection

log = logging.getLogger("sshtunnel_mgr.bastion")

OPEN_PROHIBITED = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
OPEN_FAILED = asyncssh.OPEN_CONNECT_FAILED
OPEN_RESOURCE = asyncssh.OPEN_RESOURCE_SHORTAGE


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
        if not self._closed:
            self._closed = True
            abuse.listener_closed(self._state, self._name, self._port, self._conn_id)
            self._state.withdraw(self._name, self._port, self._conn_id)
            event(
                log,
                logging.INFO,
                "unpublish",
                name=self._name,
                port=self._port,
                conn=self._conn_id,
            )

    async def wait_closed(self) -> None:
        return None


class BastionConnection(asyncssh.SSHServer):
    def __init__(self, state: BastionState) -> None:
        self.state = state
        self.conn_id = state.next_conn_id()
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer_ip = "?"
        self.peer_port = 0
        self.entry: AccessEntry | None = None
        self.auth_failures = 0  # refused offers on this connection (max_auth_tries)
        self.auth_attempted = False  # sent a publickey (or other method) request
        self.authenticated = False  # logged in (even if then refused by a per-key cap)
        self.expiry_timer: asyncio.TimerHandle | None = None  # the key's expiry-time
        self.disconnect_sent = ""  # the reason of the DISCONNECT the bastion sent, if any
        self.open_channels = 0
        self.open_sessions = 0  # key-request sessions (max_sessions_per_connection)
        self.sessions_refused = 0
        self.published: list[str] = []  # every name:port this connection published
        self._spellings: dict[tuple[str, int], str] = {}
        self.route_stats: dict[tuple[str, int], RouteStats] = {}
        self.since = state.now()
        # Host keys of the services behind this connection's names (sshtun-hostkey).
        self.home_host_keys: dict[tuple[str, int], str] = {}

    # Connection --------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer_ip, self.peer_port = str(peer[0]), int(peer[1])
        limits = self.state.config.limits
        if not self.state.accepting:
            event(
                log,
                logging.INFO,
                "refused",
                conn=self.conn_id,
                from_=self.peer_ip,
                reason="bastion is shutting down",
            )
            conn.close()
            return
        if abuse.refuse_penalised_source(self, conn):  # before any key exchange work
            return
        if len(self.state.connections) >= limits.max_connections:
            event(
                log,
                logging.WARNING,
                "refused",
                conn=self.conn_id,
                from_=self.peer_ip,
                reason=f"too many connections (max {limits.max_connections})",
            )
            self.state.audit.refused(self, "connection", "too many connections")
            conn.abort()  # before the banner: a DISCONNECT here would reach the client as garbage
            return
        # Per-source and total caps on connections not logged in yet were applied before
        # accept handed this one to asyncssh (listener.py, admission.py).
        self.state.connections[self.conn_id] = self
        forwardreq.remember_bind_spellings(conn, self._spellings)  # as the agent spelt it
        self.tuning = tune_connection(conn)  # cheaper packets, same wire (sshcompat)
        sigpolicy.install(conn, self.signature_refused)  # no ssh-rsa (SHA-1) signatures
        disconnects.install(conn, self._disconnect_sent)  # for left_before_login's reason
        kexguess.install(conn)  # guessed first kex packets judged by RFC 4253 (Dropbear)
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
        abuse.connection_lost(self)
        if admitted and not self.authenticated:
            abuse.left_before_login(self, exc)  # logged (rate-limited), audited, penalised
            return
        if not admitted:
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

    def _disconnect_sent(self, code: int, reason: str) -> None:
        if not self.disconnect_sent:
            self.disconnect_sent = reason

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
        connection; the source's cool-down counts connections, not offers (``abuse``)."""
        self.auth_attempted = True
        if abuse.refuse_auth_while_cooling(self):
            return False
        blob = key.public_data
        refusal = policy.key_refusal(key.get_algorithm(), blob)
        if refusal:
            self.auth_failed(f"key {fingerprint(blob)}: {refusal} (user {username!r})")
            return False
        decision = self.state.access.authenticate(blob, self.peer_ip, self.state.wall())
        if decision:
            self.entry = self.state.access.find(blob)
            return True
        self.auth_failed(f"{decision.reason} (user {username!r})")
        return False

    def signature_refused(self, username: str, key_data: bytes, algorithm: str, why: str) -> None:
        """A signed request made with an algorithm the policy refuses (``sigpolicy``); a
        key the policy refuses anyway is refused for what it is (an ECDSA key)."""
        self.auth_attempted = True
        key_type = sigpolicy.signature_algorithm(key_data)  # a key blob starts the same way
        why = policy.key_refusal(key_type, key_data) or why
        self.auth_failed(f"key {fingerprint(key_data)}: {why} (user {username!r})")

    def auth_method_refused(self, method: str, username: str) -> None:
        """Called for password, keyboard-interactive, ... (see ``authlog``)."""
        self.auth_attempted = True
        self.auth_failed(
            f"{method} authentication is not accepted, only publickey (user {username!r})"
        )

    def auth_failed(self, reason: str) -> None:
        self.auth_failures += 1
        self.state.counters["auth_failures"] += 1
        max_tries = self.state.config.limits.max_auth_tries
        event(
            log,
            logging.WARNING,
            "auth refused",
            conn=self.conn_id,
            from_=self.peer_ip,
            reason=reason,
        )
        abuse.auth_failed(self, reason)  # per-source cool-down, audit
        if self.auth_failures >= max_tries and self.conn is not None:
            event(
                log,
                logging.WARNING,
                "disconnect",
                conn=self.conn_id,
                from_=self.peer_ip,
                reason=f"too many authentication failures ({self.auth_failures})",
            )
            conn = self.conn
            asyncio.get_running_loop().call_soon(
                conn.disconnect,
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                "Too many authentication failures",
            )

    def revoke(self, reason: str) -> None:
        """Close this connection at once: its key is no longer allowed (a reload, or its
        expiry-time passed)."""
        expiry.cancel(self)
        event(
            log,
            logging.WARNING,
            "revoked",
            conn=self.conn_id,
            key=self.entry.label if self.entry else "-",
            from_=self.peer_ip,
            reason=reason,
        )
        self.state.audit.refused(self, "revoked", reason)
        if self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, f"access revoked: {reason}")

    def reapply(self, entry: AccessEntry) -> list[str]:
        """Adopt a reloaded access entry; withdraw names it no longer allows publishing.
        Live routed sessions stay; new requests are judged by the new entry."""
        self.entry = entry
        expiry.schedule(self)  # the reloaded expiry-time (extended, shortened, removed)
        withdrawn = []
        for name, port in self.state.routes.names_of(self.conn_id):
            decision = entry.may_publish(name, port)
            if not decision:
                self.state.withdraw(name, port, self.conn_id)
                withdrawn.append(f"{name}:{port}")
                self.state.audit.unpublish(self, name, port, self.conn_id, decision.reason)
                event(
                    log,
                    logging.WARNING,
                    "unpublish",
                    name=name,
                    port=port,
                    conn=self.conn_id,
                    reason=decision.reason,
                )
        return withdrawn

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
        abuse.auth_completed(self)  # per-key connection cap, audit
        expiry.schedule(self)  # closed when its key's expiry-time passes

    # Sessions: no shell, pty, subsystem, agent or X11; only a key's own rotation requests.
    def session_requested(self) -> asyncssh.SSHServerSession[str] | bool:
        if self.entry is None:
            return False
        limit = self.state.config.limits.max_sessions_per_connection
        if self.open_sessions >= limit:
            self.sessions_refused += 1
            self.state.counters["sessions_refused"] += 1
            reason = f"too many sessions on this connection (max {limit})"
            if self.sessions_refused <= 10 or self.sessions_refused % 100 == 0:
                # Logged and audited for the first 10 of a connection, then every 100th.
                self.log_refused_session(reason, refused=self.sessions_refused)
            raise ChannelOpenError(OPEN_RESOURCE, reason)
        self.open_sessions += 1
        return KeyRequestSession(self, self.state.config.limits.key_request_timeout)

    def session_closed(self) -> None:
        self.open_sessions -= 1

    def log_refused_session(self, reason: str, **extra: Any) -> None:
        event(
            log,
            logging.WARNING,
            "refused session",
            conn=self.conn_id,
            key=self.entry.label if self.entry else "-",
            from_=self.peer_ip,
            reason=reason,
            note="no shell, exec or subsystem here",
            **extra,
        )
        self.state.audit.refused(self, "session", reason, **extra)

    def log_key_request(
        self, verb: str, detail: str, *, ok: bool, result: dict[str, Any] | None = None
    ) -> None:
        if ok:
            self.state.audit.key_request(self, verb, result or {})
        else:
            self.state.audit.refused(self, "key_request", detail, request=verb)
        event(
            log,
            logging.INFO if ok else logging.WARNING,
            "key request" if ok else "refused key request",
            conn=self.conn_id,
            key=self.entry.label if self.entry else "-",
            from_=self.peer_ip,
            request=verb,
            **{"result" if ok else "reason": detail},  # type: ignore[arg-type]
        )

    # Publishing (tcpip-forward from an agent) --------------------------------------------
    def server_requested(self, listen_host: str, listen_port: int) -> asyncssh.SSHListener | bool:
        spelling = self._spellings.pop((listen_host, listen_port), listen_host)
        entry = self.entry
        if entry is None or self.conn is None:
            return False
        refusal = self._publish_refusal(entry, listen_host, listen_port)
        if refusal:
            event(
                log,
                logging.WARNING,
                "refused publish",
                conn=self.conn_id,
                key=entry.label,
                from_=self.peer_ip,
                name=listen_host,
                port=listen_port,
                reason=refusal,
            )
            self.state.counters["publish_refused"] += 1
            self.state.audit.refused(self, "publish", refusal, name=listen_host, port=listen_port)
            return False
        name = normalize_name(listen_host)
        self.state.publish(
            Route(
                name=name,
                port=listen_port,
                owner=entry.fingerprint,
                conn_id=self.conn_id,
                handle=self,
                spelling=spelling,
                since=self.state.now(),
            )
        )
        self.published.append(f"{name}:{listen_port}")
        event(
            log,
            logging.INFO,
            "publish",
            conn=self.conn_id,
            key=entry.label,
            from_=self.peer_ip,
            name=name,
            port=listen_port,
        )
        self.state.audit.publish(self, name, listen_port)
        return VirtualListener(self.state, name, listen_port, self.conn_id)

    @staticmethod
    def _publish_refusal(entry: AccessEntry, host: str, port: int) -> str:
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

    # Routing (direct-tcpip from a client) -------------------------------------------------
    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        entry = self.entry
        who = entry.label if entry else "-"
        try:
            route = self._route_for(entry, dest_host, dest_port)
        except ChannelOpenError as exc:
            event(
                log,
                logging.WARNING,
                "refused open",
                conn=self.conn_id,
                key=who,
                from_=self.peer_ip,
                dest=f"{dest_host}:{dest_port}",
                reason=exc.reason,
            )
            self.state.counters["routed_refused"] += 1
            self.state.audit.refused(self, "open", exc.reason, dest=f"{dest_host}:{dest_port}")
            raise
        self.open_channels += 1
        probe = route.conn_id == self.conn_id
        event(
            log,
            logging.DEBUG if probe else logging.INFO,
            "probe" if probe else "route",
            conn=self.conn_id,
            key=who,
            from_=self.peer_ip,
            name=route.name,
            port=route.port,
            agent_conn=route.conn_id,
        )
        return self._splice(route, orig_host, orig_port)

    def _route_for(
        self, entry: AccessEntry | None, host: str, port: int
    ) -> Route[BastionConnection]:
        if entry is None:
            raise ChannelOpenError(OPEN_PROHIBITED, "not authenticated")
        if not self.state.accepting:
            raise ChannelOpenError(OPEN_FAILED, "this bastion is shutting down")
        limit = self.state.config.limits.max_channels_per_connection
        if self.open_channels >= limit:
            raise ChannelOpenError(OPEN_RESOURCE, f"too many open channels (max {limit})")
        if key_refusal := abuse.key_channel_refusal(self):  # across the key's connections
            raise ChannelOpenError(OPEN_RESOURCE, key_refusal)
        try:
            name = normalize_name(host)
        except InvalidName as exc:
            raise ChannelOpenError(
                OPEN_PROHIBITED, f"{exc.message}; this bastion routes published names only"
            ) from None
        own = self.state.routes.route_of(name, port, self.conn_id)
        if own is not None:
            # An agent probing its own tunnel (serving or on standby): the channel loops
            # back down its own connection to its own target, so this grants nothing new.
            return own
        decision = entry.may_reach(name, port)
        if not decision:
            if entry.may_publish(name, port) and not self.state.routes.lookup(name, port):
                # An agent probing its own name, now gone: tell it so (it publishes again).
                raise ChannelOpenError(OPEN_FAILED, f"{name}:{port} {NOT_PUBLISHED}")
            raise ChannelOpenError(OPEN_PROHIBITED, decision.reason)
        route = self.state.routes.pick(name, port, self.state.next_pick())
        if route is None:
            raise ChannelOpenError(OPEN_FAILED, f"{name}:{port} {NOT_PUBLISHED}")
        return route

    async def _splice(
        self, route: Route[BastionConnection], orig_host: str, orig_port: int
    ) -> Pipe:
        """Open the agent's channel for ``route`` and splice it to the client's, which
        asyncssh opens as soon as this returns (no await in between: early data from the
        home side is held, bounded, for it). On any other outcome the client end
        ``never_opened``: counted closed, audited, and the agent's channel, if it opens
        later, closed at once (bastion/routeopen.py)."""
        stats = route.handle.route_stats.setdefault(
            (route.name, route.port), RouteStats(self.state.counters)
        )
        client_end = RoutedPipe(on_close=self._channel_closed)  # RoutedPipe: for the audit log
        agent_end = RoutedPipe(on_close=stats.closed)
        client_end.link(agent_end)
        abuse.route_opened(self, route, client_end)
        agent_conn = route.handle.conn
        client = self.conn
        if client is None or client.is_closed():
            result = OpenResult(CLIENT_LEFT)
        elif agent_conn is None or agent_conn.is_closed():
            result = OpenResult(
                "agent connection lost during open",
                f"{route.name}:{route.port}: the agent's connection was lost",
            )
        else:
            result = await open_agent_end(
                agent_conn,
                agent_end,
                route,
                (orig_host, orig_port),
                stats,
                self.state.config.limits,
                client,
            )
        if not result.outcome:
            stats.opened(agent_end)
            self.state.counters["routed_ok"] += 1
            return client_end
        client_end.never_opened(result.outcome)  # counted, audited; agent end closed
        left = not result.refusal  # the client left: nobody to tell
        event(
            log,
            logging.INFO if left else logging.WARNING,
            "open abandoned" if left else "refused open",
            conn=self.conn_id,
            key=self.entry.label if self.entry else "-",
            name=route.name,
            port=route.port,
            agent_conn=route.conn_id,
            reason=result.outcome if left else result.refusal,
        )
        if left:
            self.state.counters["routed_abandoned"] += 1
            raise ChannelOpenError(OPEN_FAILED, result.outcome)
        self.state.counters["routed_target_failed"] += 1
        self.state.audit.refused(self, "open", result.refusal, dest=f"{route.name}:{route.port}")
        raise ChannelOpenError(OPEN_FAILED, result.refusal)

    def _channel_closed(self, pipe: Pipe) -> None:
        self.open_channels -= 1
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
