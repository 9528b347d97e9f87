"""One agent ↔ bastion link: connect, verify the pinned host key, publish every tunnel,
stay up with keepalives, and reconnect forever with backoff when the connection drops.

Connection errors are retried; a host key mismatch or a refused login is fatal (retrying
cannot fix it and must not hammer the bastion). A refused forward (a name the bastion does
not allow this key) is reported and retried only at the backoff cap, never in a tight loop.

Every change to what the link publishes goes through one lock, so none interleaves with
another across an await: the publishing after each (re)connect, a reload's
``sync_tunnels``, a rotation's ``hand_over`` and key requests, and a probe's republish.
The pieces live beside this loop: publish.py (the names), handover.py (moving to a new
connection and retiring the old), hostkeys.py (the bastion's host-key announcements),
forward.py (each routed session and their count), client.py (the asyncssh client object).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncssh

from sshtunnel_mgr.agent import handover, hostkeys
from sshtunnel_mgr.agent.client import LinkClient, channels_of, describe, known_hosts_arg
from sshtunnel_mgr.agent.keyrequest import run_key_request
from sshtunnel_mgr.agent.publish import Publisher, label_of
from sshtunnel_mgr.agent.status import LinkStatus
from sshtunnel_mgr.agent.web import WebFront
from sshtunnel_mgr.core import policy
from sshtunnel_mgr.core.backoff import Backoff
from sshtunnel_mgr.core.config import AgentConfig, BastionEndpoint
from sshtunnel_mgr.core.errors import HostKeyError, PermissionRefused
from sshtunnel_mgr.runtime.asyncutil import wait_either
from sshtunnel_mgr.runtime.crashpoints import crashpoint
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.agent")


class BastionLink:
    def __init__(
        self,
        config: AgentConfig,
        endpoint: BastionEndpoint,
        key: asyncssh.SSHKey,
        *,
        on_published: Callable[[BastionLink], None] | None = None,
        backoff: Backoff | None = None,
        web: WebFront | None = None,
        dial: str | None = None,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        # The address to connect to when the endpoint names a host that resolves to several
        # (agent/resolve.py): one link per address, each checking the key under the name.
        self.dial = dial
        self.label = endpoint.address if dial is None else f"{endpoint.address}/{dial}"
        self.key = key
        self.on_published = on_published
        self.backoff = backoff or Backoff(
            base=config.backoff.base,
            cap=config.backoff.cap,
            healthy_after=config.backoff.healthy_after,
        )
        self.status = LinkStatus(bastion=self.label)
        self.publisher = Publisher(self.status, web)
        self.retiring = handover.Retiring(self.label)
        self._known_hosts = known_hosts_arg(endpoint)
        self._changing = asyncio.Lock()  # held by every change to what the link publishes
        self._drain_notice = asyncio.Event()
        self._handover = asyncio.Event()
        self._leave = asyncio.Event()  # leave(): stop for good once the sessions end
        self._lost_reason = ""  # why the current connection ended, from asyncssh

    @property
    def conn(self) -> asyncssh.SSHClientConnection | None:
        """The connection that serves the link's names now, if any."""
        return self.publisher.conn

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the link up until ``stop`` is set; raise only on fatal errors."""
        try:
            while not stop.is_set() and not self._leave.is_set():
                delay = await self._run_once(stop)
                if stop.is_set() or self._leave.is_set():
                    break
                self.status.state = "backoff"
                self.status.next_retry_at = time.time() + delay
                event(
                    log,
                    logging.INFO,
                    "reconnect",
                    bastion=self.label,
                    in_=f"{delay:.1f}s",
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wait_either(stop.wait(), self._leave.wait()), delay)
            if self._leave.is_set() and not stop.is_set():
                await wait_either(self.retiring.wait_drained(), stop.wait())
        finally:  # what the link started ends before it says it stopped
            await self.retiring.aclose()
            await self.publisher.aclose()
        self.status.state = "stopped"

    async def _run_once(self, stop: asyncio.Event) -> float:
        """One connection's life; returns the delay before the next attempt."""
        self.status.state = "connecting"
        self._lost_reason = ""
        try:
            conn = await self._connect()
        except asyncssh.HostKeyNotVerifiable as exc:
            self.status.state = "failed"
            self.status.last_error = f"host key mismatch: {exc}"
            raise HostKeyError(
                f"bastion {self.label} presented a host key that does not match the "
                f"pinned one ({exc})",
                hint="if the bastion's key really changed, verify the new key out of band and "
                "update host_key/known_hosts; never disable the check",
            ) from None
        except asyncssh.PermissionDenied as exc:
            self.status.state = "failed"
            self.status.last_error = f"login refused: {exc}"
            raise PermissionRefused(
                f"bastion {self.label} refused key {self.config.key} ({exc.reason})",
                hint="add the agent's public key with a permitlisten=... option to the "
                "bastion's access file",
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            self._failed(f"connect: {describe(exc)}")
            return self.backoff.next_delay()

        self.backoff.connected()
        self.status.connects += 1
        self.status.last_connected_at = time.time()
        try:
            async with self._changing:
                if self._leave.is_set():  # left while connecting
                    conn.close()
                    return 0.0
                self.publisher.start(conn)
                await self.publisher.publish(self.config.tunnels, self.config.connect_timeout)
                if not self.status.published:
                    event(
                        log,
                        logging.ERROR,
                        "no tunnel could be published",
                        bastion=self.label,
                        retry_in=f"{self.backoff.cap:g}s",
                    )
                    conn.close()
                    return self.backoff.cap
                self.status.state = "up"
                self.status.up_since = time.time()
                self.status.next_retry_at = None
            if self.on_published is not None:
                self.on_published(self)
            while True:
                await wait_either(
                    conn.wait_closed(),
                    stop.wait(),
                    self._drain_notice.wait(),
                    self._handover.wait(),
                    self._leave.wait(),
                )
                if not self._handover.is_set() or stop.is_set():
                    break
                # Make before break: a new connection (a new key) already serves every
                # name; it becomes this link's connection, the old one is retired apart.
                self._handover.clear()
                assert self.conn is not None
                conn = self.conn
        except (OSError, asyncssh.Error) as exc:
            self._failed(describe(exc))
        finally:
            if self._leave.is_set():
                pass  # leave() retired the connection: it closes once its sessions end
            elif self._drain_notice.is_set() and not stop.is_set():
                # The bastion is draining: leave this connection to finish its routed
                # sessions (the bastion closes it) and reconnect now.
                self._drain_notice.clear()
                self.retiring.leave(conn)
                self._failed("bastion is shutting down; reconnecting")
                self.backoff.reset()
            else:
                conn.close()
            self.publisher.lost()
            self.backoff.disconnected()
        if not stop.is_set() and not self._leave.is_set():
            self._failed(f"connection to bastion lost: {self._lost_reason or 'closed'}")
        return 0.0 if stop.is_set() else self.backoff.next_delay()

    async def _connect(self, key: asyncssh.SSHKey | None = None) -> asyncssh.SSHClientConnection:
        ep = self.endpoint
        event(log, logging.INFO, "connect", bastion=self.label)
        # A resolved address is dialled; its host key is still checked under the name.
        alias = {} if self.dial is None else {"host_key_alias": ep.host}
        return await asyncssh.connect(
            ep.host if self.dial is None else self.dial,
            ep.port,
            client_factory=lambda: LinkClient(self._heard_drain_notice, self._connection_lost),
            username=ep.user,
            client_keys=[key or self.key],
            known_hosts=self._known_hosts,
            agent_path=None,
            server_host_keys_handler=self._host_keys_announced,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_count_max=self.config.keepalive_count_max,
            connect_timeout=self.config.connect_timeout,
            login_timeout=self.config.connect_timeout,
            **alias,
            **policy.key_only_login(),
        )

    # Changes, one at a time -------------------------------------------------------------
    async def sync_tunnels(self, config: AgentConfig) -> dict[str, list[str]]:
        """Apply a reloaded config's tunnels to the live connection: withdraw the ones
        that are gone or changed, publish the new ones; leave the rest (and their live
        sessions) alone. Waits for a change under way (a reconnect's publishing, a
        hand-over) to finish first, and applies to whatever connection it left."""
        async with self._changing:
            old = {(t.name, t.port): t for t in self.config.tunnels}
            new = {(t.name, t.port): t for t in config.tunnels}
            self.config = config
            removed = [k for k, t in old.items() if new.get(k) != t]
            added = [t for k, t in new.items() if old.get(k) != t]
            self.publisher.withdraw([f"{n}:{p}" for n, p in removed], "config reload")
            if self.conn is not None and self.status.state == "up":
                try:
                    await self.publisher.publish(added, config.connect_timeout)
                except (OSError, asyncssh.Error) as exc:
                    # The connection is going; the reconnect publishes the new config.
                    self._failed(f"publish: {describe(exc)}")
        return {
            "withdrawn": [f"{n}:{p}" for n, p in removed],
            "published": [label_of(t) for t in added],
        }

    async def leave(self, reason: str) -> None:
        """Stop this link for good without cutting a routed session (its address is no
        longer one the bastion's name resolves to): withdraw every name, so the bastion
        routes new sessions elsewhere (as a reload's withdraw does), stop reconnecting, and
        close the connection once its routed sessions have ended. ``run`` returns then
        (or at the agent's stop, which closes it at once)."""
        async with self._changing:
            self._leave.set()
            self.status.state = "leaving"
            self.status.next_retry_at = None
            conn = self.conn
            sessions = 0 if conn is None else channels_of(conn).value
            event(
                log,
                logging.INFO,
                "link leaving",
                bastion=self.label,
                reason=reason,
                sessions=sessions,
            )
            if conn is None:
                return
            self.publisher.withdraw(list(self.publisher.listeners), reason)
            self.retiring.retire(conn, None)

    async def key_request(self, command: str, timeout: float = 30) -> dict[str, Any]:
        """Run one of the bastion's key requests (see bastion/keyrequests.py) over the
        live connection; the bastion's JSON answer, or ``{"ok": False, "error": ...}``."""
        async with self._changing:
            conn = self.conn
            if conn is None or self.status.state != "up":
                return {"ok": False, "error": f"no live connection to {self.label}"}
            return await run_key_request(conn, command, timeout)

    async def hand_over(self, key: asyncssh.SSHKey, drain_timeout: float | None) -> dict[str, Any]:
        """Move this link to ``key`` with no moment in which its names are unserved:
        connect with the new key and publish every tunnel (the bastion then serves each
        name from both connections), make that the link's connection, withdraw the names
        from the old one, and leave it to drain in the background: it closes once its
        routed sessions have ended (or after ``drain_timeout`` seconds, when one is set).
        The answer does not wait for that: the session that asked may be one of them
        (``keys rotate`` run over ``ssh homebox``). If the new connection fails, the old
        one is left exactly as it was."""
        async with self._changing:
            old = self.conn
            if old is None or self.status.state != "up":
                return {"ok": False, "error": f"no live connection to {self.label}"}
            ready = await handover.prepare(
                self._connect,
                self.publisher,
                key,
                self.config.tunnels,
                list(self.status.published),
                self.config.connect_timeout,
            )
            if isinstance(ready, str):
                return {"ok": False, "error": ready}
            new, listeners = ready
            if self.conn is not old:
                new.close()
                return {
                    "ok": False,
                    "error": f"the connection to {self.label} dropped during the "
                    "hand-over; run it again",
                }
            old_listeners = self.publisher.adopt(new, listeners)
            self.key = key
            self._handover.set()  # the run loop now watches the new connection
            event(
                log,
                logging.INFO,
                "handover",
                bastion=self.label,
                names=",".join(listeners),
            )
            crashpoint("agent:handover-published")
            for listener in old_listeners.values():
                listener.close()  # cancel-tcpip-forward: new sessions go to the new connection
            sessions = self.retiring.retire(old, drain_timeout)
            return {"ok": True, "names": sorted(listeners), "sessions": sessions}

    async def probe(self, timeout: float) -> bool:
        """Prove each published name works end to end: open it through the bastion, which
        routes it back down this very connection to the local target. A name the bastion
        no longer routes is published again."""
        conn = self.conn
        if conn is None or self.status.state != "up":
            self.status.probe_ok = False
            return False
        gone = await self.publisher.probe(timeout)
        if gone is not None:
            async with self._changing:
                tunnel = next((t for t in self.config.tunnels if label_of(t) == gone), None)
                if tunnel is not None and self.conn is conn:
                    await self.publisher.republish(tunnel, self.config.connect_timeout)
        return self.status.probe_ok

    # Sessions ---------------------------------------------------------------------------
    def routed_sessions(self) -> int:
        """Routed sessions open on the link's connection now."""
        conn = self.conn
        return 0 if conn is None else channels_of(conn).value

    def draining_sessions(self) -> int:
        """Routed sessions still open on connections this link is retiring."""
        return self.retiring.sessions()

    async def wait_drained(self) -> None:
        """Until every connection this link handed over from has drained and closed."""
        await self.retiring.wait_drained()

    # asyncssh's callbacks ---------------------------------------------------------------
    def _heard_drain_notice(self, conn: asyncssh.SSHClientConnection) -> None:
        if conn is self.conn:
            event(log, logging.INFO, "drain notice", bastion=self.label)
            self._drain_notice.set()

    def _connection_lost(self, conn: asyncssh.SSHClientConnection, exc: Exception | None) -> None:
        if conn is self.conn:
            self._lost_reason = describe(exc) if exc else "closed by the bastion"
        self.retiring.closed(conn)

    def _host_keys_announced(
        self,
        added: list[asyncssh.SSHKey],
        removed: list[asyncssh.SSHKey],
        retained: list[asyncssh.SSHKey],
        revoked: list[asyncssh.SSHKey],
    ) -> None:
        """The bastion listed its host keys after login (hostkeys.py)."""
        if self.dial is not None:
            # Other bastions behind the same name may hold keys this one does not list:
            # never remove a key from the pinning for a name's link.
            removed = []
        pinned = hostkeys.follow(self.endpoint, added, removed, retained)
        if pinned is not None:
            self._known_hosts = pinned

    def _failed(self, message: str) -> None:
        self.status.last_error = message
        event(log, logging.WARNING, "link down", bastion=self.label, error=message)
