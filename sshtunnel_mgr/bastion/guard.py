"""The access decision's bookkeeping for one connection: ``ConnectionGuard``.

``BastionConnection`` owns one and asks it at each step: may this connection start (the
bastion is accepting, its source is not cooling down, under ``max_connections``)? may it
still log in (its source began a cool-down meanwhile)? what does a refused offer cost
(``max_auth_tries`` on the connection, one failure of the source when it leaves without
logging in, as OpenSSH's ``PerSourcePenalties authfail``)? may its key hold one more
connection or routed channel? Which key may do what is the access policy's answer
(access.py); the pure tables live in ``penalties``, ``limits`` and ``lograte``; every refusal
goes out through ``refusals``. The guard never imports the connection's module: it sees the
connection as a ``LiveConnection`` and disconnects it through a callback.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import asyncssh

from sshtunnel_mgr.bastion.audit import AuditLog
from sshtunnel_mgr.bastion.peer import LiveConnection
from sshtunnel_mgr.bastion.preauth import handshake_reason
from sshtunnel_mgr.bastion.refusals import Refusals
from sshtunnel_mgr.core.config import BastionConfig
from sshtunnel_mgr.core.limits import KeyUsage, channel_refusal, connection_refusal
from sshtunnel_mgr.core.lograte import LogRate
from sshtunnel_mgr.core.penalties import SourcePenalties
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.bastion")

Disconnect = Callable[[int, str], None]  # (SSH disconnect code, reason), sent soon


class GuardTables(Protocol):
    """The bastion-wide tables a guard reads and updates (``BastionState``)."""

    config: BastionConfig  # its limits, as reloaded
    accepting: bool
    connections: dict[int, LiveConnection]
    penalties: SourcePenalties
    key_usage: KeyUsage[LiveConnection]
    preauth_log: LogRate
    counters: Counter[str]
    audit: AuditLog


class ConnectionGuard:
    def __init__(
        self,
        tables: GuardTables,
        conn: LiveConnection,
        refusals: Refusals,
        disconnect: Disconnect,
    ) -> None:
        self._tables = tables
        self._conn = conn
        self._refusals = refusals
        self._disconnect = disconnect
        self.auth_failures = 0  # refused offers on this connection (max_auth_tries)
        self.auth_attempted = False  # sent a publickey (or other method) request
        self.key = ""  # the fingerprint counted in key_usage, once admitted under its cap
        self.disconnect_sent = ""  # the reason of the DISCONNECT the bastion sent, if any

    # Start-up ---------------------------------------------------------------------------
    def refuse_start(self, ssh: asyncssh.SSHServerConnection) -> bool:
        """In ``connection_made``, before any key exchange work: refuse (and drop) a
        connection while shutting down, from a source cooling down, or over
        ``max_connections``. Per-source and total caps on connections not logged in yet
        were applied before accept handed it to asyncssh (listener.py, admission.py)."""
        tables, refuse = self._tables, self._refusals.refuse
        if not tables.accepting:
            refuse("connection", "bastion is shutting down", level=logging.INFO, audit=False)
            ssh.close()
            return True
        penalty = tables.penalties.check(self._conn.peer_ip)
        if penalty is not None:
            refuse(
                "penalty",
                penalty.reason,
                counter="penalty_refused",
                record=penalty.worth_logging,
                refused=penalty.refused,  # the how-manieth of this cool-down
            )
            ssh.abort()  # no banner, no key exchange work
            return True
        limit = tables.config.limits.max_connections
        if len(tables.connections) >= limit:
            refuse("connection", f"too many connections (max {limit})")
            ssh.abort()  # before the banner: a DISCONNECT here would reach the client as garbage
            return True
        return False

    def disconnect_sending(self, code: int, reason: str) -> None:
        """The bastion sends a DISCONNECT (``disconnects``): kept for ``left_before_login``."""
        if not self.disconnect_sent:
            self.disconnect_sent = reason

    # Authentication ----------------------------------------------------------------------
    def refuse_auth_while_cooling(self) -> bool:
        """A connection that got in before its source's cool-down began may not log in
        during it (not even with a good key)."""
        self.auth_attempted = True
        penalty = self._tables.penalties.check(self._conn.peer_ip)
        if penalty is None:
            return False
        self._refusals.refuse(
            "penalty",
            penalty.reason,
            event="auth refused",
            record=penalty.worth_logging,
            refused=penalty.refused,
        )
        self.auth_attempted = False  # its source is already penalised: not counted again
        self._disconnect(asyncssh.DISC_HOST_NOT_ALLOWED_TO_CONNECT, penalty.reason)
        return True

    def auth_failed(self, reason: str) -> None:
        """A refused offer (or method). It is not a failure of the source by itself (an
        ssh-agent offers its keys one by one, see ``left_before_login``); ``max_auth_tries``
        of them close the connection."""
        self.auth_attempted = True
        self.auth_failures += 1
        self._refusals.refuse("auth", reason, event="auth refused", counter="auth_failures")
        if self.auth_failures >= self._tables.config.limits.max_auth_tries:
            event(
                log,
                logging.WARNING,
                "disconnect",
                conn=self._conn.conn_id,
                from_=self._conn.peer_ip,
                reason=f"too many authentication failures ({self.auth_failures})",
            )
            self._disconnect(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication failures"
            )

    def admit_key(self) -> bool:
        """Logged in: admit the key's connection under its per-key cap, or refuse it (the
        caller forgets the key) and disconnect with the reason."""
        tables, conn = self._tables, self._conn
        assert conn.entry is not None
        key = conn.entry.fingerprint
        limit = tables.config.limits.max_connections_per_key
        refusal = connection_refusal(tables.key_usage, key, limit)
        if refusal:
            self._refusals.refuse("limit", refusal, counter="key_limit_refused")
            self._disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, refusal)
            return False
        self.key = key
        tables.key_usage.add(key, conn)
        tables.penalties.succeeded(conn.peer_ip)
        tables.audit.login(conn)
        return True

    # Channels ------------------------------------------------------------------------------
    def channel_refusal(self) -> str:
        """Why one more routed channel is refused, or ``""``: ``max_channels_per_connection``
        on this connection, ``max_channels_per_key`` across its key's connections."""
        limits = self._tables.config.limits
        if self._conn.open_channels >= limits.max_channels_per_connection:
            return f"too many open channels (max {limits.max_channels_per_connection})"
        if not self.key:
            return ""
        return channel_refusal(self._tables.key_usage, self.key, limits.max_channels_per_key)

    # The end ---------------------------------------------------------------------------------
    def release(self) -> None:
        """The connection ended: free its key's slot."""
        if self.key:
            self._tables.key_usage.remove(self.key, self._conn)
            self.key = ""

    def left_before_login(self, exc: Exception | None) -> None:
        """An admitted connection ended without logging in: log and audit why (rate-limited
        per source) and, if it tried to authenticate, count ONE failed authentication
        against its source. One that never sent an authentication request (a scanner, a
        failed key exchange, a login timeout: OpenSSH's ``noauth``) costs no penalty;
        ``max_startups_per_source`` and ``login_timeout`` bound those."""
        tables, conn = self._tables, self._conn
        # What the bastion's DISCONNECT said (a failed negotiation), else what asyncssh says.
        reason = handshake_reason(self.disconnect_sent or (str(exc) if exc is not None else ""))
        phase = "authentication" if self.auth_attempted else "key exchange"
        budget = tables.preauth_log.hit(conn.peer_ip)  # the first 10 a minute, every 100th
        self._refusals.refuse(
            "handshake",
            reason,
            event="left before login",
            level=logging.INFO,
            counter="preauth_disconnects",
            record=budget.write,
            phase=phase,
            count=budget.count,
            log_only={"auth_failures": self.auth_failures},
        )
        if not self.auth_attempted:
            return
        penalty = tables.penalties.failed(conn.peer_ip)
        if penalty is not None and penalty.failures == tables.penalties.max_failures:
            event(  # this connection started the cool-down
                log,
                logging.WARNING,
                "penalty",
                source=penalty.source,
                failures=penalty.failures,
                seconds=round(penalty.remaining),
                conn=conn.conn_id,
                reason="too many connections failed to authenticate; new connections from it "
                "are refused until the cool-down ends",
            )
            tables.counters["penalties"] += 1
            tables.audit.penalty(conn, penalty.source, penalty.failures, penalty.remaining)
