"""One agent ↔ bastion link: connect, verify the pinned host key, publish every tunnel,
stay up with keepalives, and reconnect forever with backoff when the connection drops.

Connection errors are retried; a host key mismatch or a refused login is fatal (retrying
cannot fix it and must not hammer the bastion). A refused forward (a name the bastion does
not allow this key) is reported and retried only at the backoff cap, never in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from sshtunnel_mgr import policy
from sshtunnel_mgr.asyncutil import wait_either
from sshtunnel_mgr.backoff import Backoff
from sshtunnel_mgr.config import AgentConfig, BastionEndpoint, TunnelConfig
from sshtunnel_mgr.crashpoints import crashpoint
from sshtunnel_mgr.errors import ConfigError, HostKeyError, PermissionRefused
from sshtunnel_mgr.fsutil import edit_atomic
from sshtunnel_mgr.keys.store import key_fingerprint, public_line
from sshtunnel_mgr.knownhosts import host_pattern, update_known_hosts
from sshtunnel_mgr.logsetup import event
from sshtunnel_mgr.protocol import DRAIN_NOTICE, NOT_PUBLISHED
from sshtunnel_mgr.sshcompat import kexguess
from sshtunnel_mgr.sshcompat.sendpath import tune_connection

log = logging.getLogger("sshtunnel_mgr.agent")


@dataclass
class LinkStatus:
    """What the agent knows about one bastion link (read by status reporting)."""

    bastion: str
    state: str = "connecting"  # connecting | up | backoff | failed | stopped
    up_since: float | None = None
    last_error: str = ""
    next_retry_at: float | None = None
    published: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    connects: int = 0
    last_connected_at: float | None = None
    probe_ok: bool = False
    last_probe_at: float | None = None
    probe_error: str = ""


def known_hosts_arg(endpoint: BastionEndpoint) -> object:
    """asyncssh's known_hosts argument: the pinned key, or the named known_hosts file."""
    if endpoint.host_key is not None:
        try:
            key = asyncssh.import_public_key(endpoint.host_key)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise ConfigError(
                f"agent.bastions: host_key for {endpoint.address} is not a valid public key: {exc}"
            ) from None
        return ([key], [], [])
    assert endpoint.known_hosts is not None
    if not endpoint.known_hosts.exists():
        raise ConfigError(
            f"known_hosts file {endpoint.known_hosts} does not exist",
            hint="pin the bastion's host key there (ssh-keyscan output, checked)",
        )
    return str(endpoint.known_hosts)


class BastionLink:
    def __init__(
        self,
        config: AgentConfig,
        endpoint: BastionEndpoint,
        key: asyncssh.SSHKey,
        *,
        on_published: Callable[[BastionLink], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.key = key
        self.on_published = on_published
        self.backoff = backoff or Backoff(
            base=config.backoff.base,
            cap=config.backoff.cap,
            healthy_after=config.backoff.healthy_after,
        )
        self.status = LinkStatus(bastion=endpoint.address)
        self.conn: asyncssh.SSHClientConnection | None = None
        self._listeners: dict[str, asyncssh.SSHListener] = {}
        self._drain_notice = asyncio.Event()
        self._draining: set[asyncssh.SSHClientConnection] = set()
        self._known_hosts = known_hosts_arg(endpoint)
        self._handover = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._drains: set[asyncio.Task[None]] = set()  # connections handed over from
        self._lost_reason = ""  # why the current connection ended, from asyncssh

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the link up until ``stop`` is set; raise only on fatal errors."""
        while not stop.is_set():
            delay = await self._run_once(stop)
            if stop.is_set():
                break
            self.status.state = "backoff"
            self.status.next_retry_at = time.time() + delay
            event(
                log, logging.INFO, "reconnect", bastion=self.endpoint.address, in_=f"{delay:.1f}s"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        for old in list(self._draining):
            old.close()
        for task in [*self._tasks, *self._drains]:
            task.cancel()
        self.status.state = "stopped"

    async def _run_once(self, stop: asyncio.Event) -> float:
        """One connection's life; returns the delay before the next attempt."""
        self.status.state = "connecting"
        try:
            conn = await self._connect()
        except asyncssh.HostKeyNotVerifiable as exc:
            self.status.state = "failed"
            self.status.last_error = f"host key mismatch: {exc}"
            raise HostKeyError(
                f"bastion {self.endpoint.address} presented a host key that does not match the "
                f"pinned one ({exc})",
                hint="if the bastion's key really changed, verify the new key out of band and "
                "update host_key/known_hosts; never disable the check",
            ) from None
        except asyncssh.PermissionDenied as exc:
            self.status.state = "failed"
            self.status.last_error = f"login refused: {exc}"
            raise PermissionRefused(
                f"bastion {self.endpoint.address} refused key {self.config.key} ({exc.reason})",
                hint="add the agent's public key with a permitlisten=... option to the "
                "bastion's access file",
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            self._failed(f"connect: {_describe(exc)}")
            return self.backoff.next_delay()

        self.conn = conn
        self.backoff.connected()
        self.status.connects += 1
        self.status.last_connected_at = time.time()
        try:
            published = await self._publish_all(conn)
            if not published:
                event(
                    log,
                    logging.ERROR,
                    "no tunnel could be published",
                    bastion=self.endpoint.address,
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
                )
                if not self._handover.is_set() or stop.is_set():
                    break
                # Make before break: a new connection (a new key) already serves every
                # name; it becomes this link's connection, the old one is retired apart.
                self._handover.clear()
                assert self.conn is not None
                conn = self.conn
        except (OSError, asyncssh.Error) as exc:
            self._failed(_describe(exc))
        finally:
            if self._drain_notice.is_set() and not stop.is_set():
                # The bastion is draining: leave this connection to finish its routed
                # sessions (the bastion closes it) and reconnect now.
                self._drain_notice.clear()
                self._draining.add(conn)
                self._failed("bastion is shutting down; reconnecting")
                self.backoff.reset()
            else:
                conn.close()
            self.conn = None
            self.status.published = []
            self.status.probe_ok = False
            self.backoff.disconnected()
        if not stop.is_set():
            self._failed(f"connection to bastion lost: {self._lost_reason or 'closed'}")
        return 0.0 if stop.is_set() else self.backoff.next_delay()

    async def _connect(self, key: asyncssh.SSHKey | None = None) -> asyncssh.SSHClientConnection:
        ep = self.endpoint
        event(log, logging.INFO, "connect", bastion=ep.address)
        return await asyncssh.connect(
            ep.host,
            ep.port,
            client_factory=lambda: _LinkClient(self),
            username=ep.user,
            client_keys=[key or self.key],
            known_hosts=self._known_hosts,
            config=None,
            agent_path=None,
            password=None,
            kbdint_auth=False,
            gss_auth=False,
            host_based_auth=False,
            preferred_auth="publickey",
            server_host_keys_handler=self._host_keys_announced,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_count_max=self.config.keepalive_count_max,
            connect_timeout=self.config.connect_timeout,
            login_timeout=self.config.connect_timeout,
            **policy.client_options(),
        )

    async def _publish_all(self, conn: asyncssh.SSHClientConnection) -> list[str]:
        self.status.published = []
        self.status.refused = {}
        self._listeners = {}
        await self._publish_tunnels(conn, self.config.tunnels)
        return self.status.published

    async def sync_tunnels(self, config: AgentConfig) -> dict[str, list[str]]:
        """Apply a reloaded config's tunnels to the live connection: withdraw the ones
        that are gone or changed, publish the new ones; leave the rest (and their live
        sessions) alone."""
        old = {(t.name, t.port): t for t in self.config.tunnels}
        new = {(t.name, t.port): t for t in config.tunnels}
        self.config = config
        conn = self.conn
        removed = [k for k, t in old.items() if new.get(k) != t]
        added = [t for k, t in new.items() if old.get(k) != t]
        for name, port in removed:
            label = f"{name}:{port}"
            listener = self._listeners.pop(label, None)
            if listener is not None:
                listener.close()
            if label in self.status.published:
                self.status.published.remove(label)
            self.status.refused.pop(label, None)
            event(
                log,
                logging.INFO,
                "withdrawn",
                bastion=self.endpoint.address,
                name=label,
                reason="config reload",
            )
        if conn is not None and self.status.state == "up":
            await self._publish_tunnels(conn, added)
        return {
            "withdrawn": [f"{n}:{p}" for n, p in removed],
            "published": [f"{t.name}:{t.port}" for t in added],
        }

    async def _publish_tunnels(
        self, conn: asyncssh.SSHClientConnection, tunnels: list[TunnelConfig]
    ) -> None:
        listeners, refused = await self._publish_on(conn, tunnels)
        self._listeners.update(listeners)
        self.status.refused.update(refused)
        for label, reason in refused.items():
            event(
                log,
                logging.ERROR,
                "publish refused",
                bastion=self.endpoint.address,
                name=label,
                reason=reason,
                hint=f'the bastion\'s access file needs permitlisten="{label}" on this key',
            )
        for tunnel in tunnels:
            label = f"{tunnel.name}:{tunnel.port}"
            if label in listeners:
                self.status.published.append(label)
                event(
                    log,
                    logging.INFO,
                    "published",
                    bastion=self.endpoint.address,
                    name=label,
                    target=tunnel.target,
                )

    async def _publish_on(
        self, conn: asyncssh.SSHClientConnection, tunnels: list[TunnelConfig]
    ) -> tuple[dict[str, asyncssh.SSHListener], dict[str, str]]:
        """Ask for each tunnel's remote forward on ``conn``: (listeners, refusals) by
        ``name:port``. A published port-22 name also gets its home host key announced."""
        listeners: dict[str, asyncssh.SSHListener] = {}
        refused: dict[str, str] = {}
        for tunnel in tunnels:
            label = f"{tunnel.name}:{tunnel.port}"
            try:
                listeners[label] = await conn.forward_remote_port(
                    tunnel.name, tunnel.port, tunnel.target_host, tunnel.target_port
                )
            except asyncssh.ChannelListenError as exc:
                refused[label] = str(exc) or "refused"
                continue
            if tunnel.port == 22:
                task = asyncio.create_task(self._announce_home_key(conn, tunnel))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return listeners, refused

    def _host_keys_announced(
        self,
        added: list[asyncssh.SSHKey],
        removed: list[asyncssh.SSHKey],
        retained: list[asyncssh.SSHKey],
        revoked: list[asyncssh.SSHKey],
    ) -> None:
        """The bastion listed its host keys after login and proved it holds the new ones
        (hostkeys-00/prove-00, asyncssh checked the signatures): follow a host key rotation
        as OpenSSH's UpdateHostKeys does. A known_hosts file is updated in place; an inline
        ``host_key`` cannot be, so the new key is trusted for this run and the log says
        what to pin."""
        if not added and not removed:
            return
        ep = self.endpoint
        lines = [public_line(k, "") for k in added]
        gone = [public_line(k, "") for k in removed]
        if ep.known_hosts is not None:
            path = ep.known_hosts
            pattern = host_pattern(ep.host, ep.port)
            try:
                edit_atomic(path, lambda text: update_known_hosts(text, pattern, lines, gone)[0])
            except OSError as exc:
                event(log, logging.WARNING, "cannot update known_hosts", path=path, error=exc)
                return
            event(
                log,
                logging.INFO,
                "host keys updated",
                bastion=ep.address,
                known_hosts=path,
                added=",".join(key_fingerprint(k) for k in added) or "-",
                removed=",".join(key_fingerprint(k) for k in removed) or "-",
            )
            return
        trusted = [k for k in [*retained, *added] if k not in removed]
        self._known_hosts = (trusted, [], [])
        if added:
            event(
                log,
                logging.WARNING,
                "new host key",
                bastion=ep.address,
                key=",".join(key_fingerprint(k) for k in added),
                note="trusted for this run (proven by the pinned key); pin it in the config",
                host_key=lines[0],
            )

    async def _announce_home_key(
        self, conn: asyncssh.SSHClientConnection, tunnel: TunnelConfig
    ) -> None:
        """Tell the bastion the SSH host key of the service behind a port-22 name, read
        from that service itself over the local path, so `sshtun ssh-config` can pin the
        inner hop. Best effort: a target that does not speak SSH is simply skipped."""
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(
                    tunnel.target_host,
                    tunnel.target_port,
                    config=None,
                    kex_algs=list(policy.KEX_ALGS),
                    server_host_key_algs=list(policy.PROBE_HOST_KEY_ALGS),
                ),
                self.config.connect_timeout,
            )
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            event(log, logging.DEBUG, "no host key", target=tunnel.target, error=_describe(exc))
            return
        if key is None:
            return
        line = public_line(key, "")
        answer = await run_key_request(
            conn, f"sshtun-hostkey {tunnel.name} {tunnel.port} {line}", self.config.connect_timeout
        )
        if answer.get("ok"):
            event(
                log,
                logging.INFO,
                "announced host key",
                name=f"{tunnel.name}:{tunnel.port}",
                key=key_fingerprint(key),
            )
        else:
            event(log, logging.DEBUG, "host key announcement refused", error=answer.get("error"))

    # Key rotation --------------------------------------------------------------------
    async def key_request(self, command: str, timeout: float = 30) -> dict[str, Any]:
        """Run one of the bastion's key requests (see bastion/keyrequests.py) over the
        live connection; the bastion's JSON answer, or ``{"ok": False, "error": ...}``."""
        conn = self.conn
        if conn is None or self.status.state != "up":
            return {"ok": False, "error": f"no live connection to {self.endpoint.address}"}
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
        old = self.conn
        if old is None or self.status.state != "up":
            return {"ok": False, "error": f"no live connection to {self.endpoint.address}"}
        try:
            new = await self._connect(key)
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            return {"ok": False, "error": f"the new key could not log in: {_describe(exc)}"}
        try:
            listeners, refused = await self._publish_on(new, self.config.tunnels)
        except (OSError, asyncssh.Error) as exc:
            new.close()
            return {"ok": False, "error": f"the new connection failed: {_describe(exc)}"}
        wanted = set(self.status.published)
        if missing := sorted(wanted - set(listeners)):
            new.close()
            return {
                "ok": False,
                "error": "the new key may not publish "
                + ", ".join(f"{m} ({refused.get(m, 'refused')})" for m in missing),
            }
        old_listeners = self._listeners
        self.conn, self._listeners, self.key = new, listeners, key
        self._handover.set()  # the run loop now watches the new connection
        event(
            log,
            logging.INFO,
            "handover",
            bastion=self.endpoint.address,
            names=",".join(listeners),
        )
        crashpoint("agent:handover-published")
        for listener in old_listeners.values():
            listener.close()  # cancel-tcpip-forward: new sessions go to the new connection
        sessions = open_channels(old)
        self._draining.add(old)
        task = asyncio.create_task(self._retire_connection(old, drain_timeout))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return {"ok": True, "names": sorted(listeners), "sessions": sessions}

    async def _retire_connection(
        self, old: asyncssh.SSHClientConnection, timeout: float | None
    ) -> None:
        drained = await _drain(old, timeout)
        if not drained and not old.is_closed():
            event(
                log,
                logging.WARNING,
                "drain limit reached",
                bastion=self.endpoint.address,
                sessions=open_channels(old),
                limit=f"{timeout:g}s",
            )
        old.close()
        self._draining.discard(old)

    async def wait_drained(self) -> None:
        """Until every connection this link handed over from has drained and closed."""
        while self._drains:
            await asyncio.gather(*list(self._drains), return_exceptions=True)

    def draining_sessions(self) -> int:
        """Routed sessions still open on connections this link is retiring."""
        return sum(open_channels(c) for c in self._draining if not c.is_closed())

    async def probe(self, timeout: float) -> bool:
        """Prove each published name works end to end: open it through the bastion, which
        routes it back down this very connection to the local target."""
        conn = self.conn
        if conn is None or self.status.state != "up":
            self.status.probe_ok = False
            return False
        for label in list(self.status.published):
            name, _, port = label.rpartition(":")
            try:
                writer = await _open_uncancelled(conn, name, int(port), timeout)
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                self.status.probe_ok = False
                self.status.probe_error = f"{label}: {_describe(exc)}"
                event(
                    log,
                    logging.WARNING,
                    "probe failed",
                    bastion=self.endpoint.address,
                    name=label,
                    error=_describe(exc),
                )
                if isinstance(exc, asyncssh.ChannelOpenError) and NOT_PUBLISHED in exc.reason:
                    await self._republish(conn, label)
                return False
            writer.close()
        self.status.probe_ok = True
        self.status.probe_error = ""
        self.status.last_probe_at = time.time()
        return True

    async def _republish(self, conn: asyncssh.SSHClientConnection, label: str) -> None:
        """The bastion no longer routes a name this connection published (withdrawn by a
        reload, or lost to another connection of this key that has gone): ask again."""
        tunnel = next((t for t in self.config.tunnels if f"{t.name}:{t.port}" == label), None)
        if tunnel is None:
            return
        event(
            log,
            logging.WARNING,
            "republish",
            bastion=self.endpoint.address,
            name=label,
            reason="the bastion no longer routes this name to this connection",
        )
        listener = self._listeners.pop(label, None)
        if listener is not None:  # cancel the old forward first, or it cancels the new one
            listener.close()
            await listener.wait_closed()
        if label in self.status.published:
            self.status.published.remove(label)
        await self._publish_tunnels(conn, [tunnel])

    def _failed(self, message: str) -> None:
        self.status.last_error = message
        event(log, logging.WARNING, "link down", bastion=self.endpoint.address, error=message)


# The bastion holds only a few sessions per connection (max_sessions_per_connection), so
# an agent sends its key requests on one connection one at a time.
_KEY_REQUESTS: weakref.WeakKeyDictionary[asyncssh.SSHClientConnection, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def _one_at_a_time(
    conn: asyncssh.SSHClientConnection, command: str
) -> asyncssh.SSHCompletedProcess:
    async with _KEY_REQUESTS.setdefault(conn, asyncio.Lock()):
        return await conn.run(command, check=False)


async def _open_uncancelled(
    conn: asyncssh.SSHClientConnection, name: str, port: int, timeout: float
) -> asyncssh.SSHWriter[Any]:
    """Open a channel, giving up after ``timeout`` without cancelling the open: SSH cannot
    withdraw an open, and a cancelled wait leaves a channel the bastion confirms later open
    with no reader. A late answer is closed as soon as it arrives."""
    opening = asyncio.ensure_future(conn.open_connection(name, port))
    done, _ = await asyncio.wait({opening}, timeout=timeout)
    if opening in done:
        return opening.result()[1]

    def close_late(task: asyncio.Future[tuple[Any, asyncssh.SSHWriter[Any]]]) -> None:
        if not task.cancelled() and task.exception() is None:
            task.result()[1].close()

    opening.add_done_callback(close_late)
    raise TimeoutError(f"no answer to the channel open within {timeout:g} s")


async def run_key_request(
    conn: asyncssh.SSHClientConnection, command: str, timeout: float
) -> dict[str, Any]:
    try:
        result = await asyncio.wait_for(_one_at_a_time(conn, command), timeout)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        return {"ok": False, "error": f"request failed: {_describe(exc)}"}
    text = result.stdout if isinstance(result.stdout, str) else ""
    try:
        answer = json.loads(text.strip().splitlines()[-1]) if text.strip() else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        status = result.exit_status
        return {
            "ok": False,
            "error": f"the bastion does not offer key rotation (exit status {status}); "
            "is it an sshtun bastion with allow_key_rotation?",
        }
    return answer


def open_channels(conn: asyncssh.SSHClientConnection) -> int:
    """How many channels (routed sessions) ``conn`` carries. asyncssh keeps them in
    ``_channels``; without that internal, 0."""
    channels = getattr(conn, "_channels", None)
    return len(channels) if isinstance(channels, dict) else 0


async def _drain(conn: asyncssh.SSHClientConnection, timeout: float | None) -> bool:
    """Wait until a retiring connection carries no more channels (its routed sessions
    ended) or closes, up to ``timeout`` (None: as long as that takes). asyncssh keeps a
    connection's open channels in ``_channels``; without that internal, wait a short
    moment only."""
    channels = getattr(conn, "_channels", None)
    if not isinstance(channels, dict):
        await asyncio.sleep(min(timeout or 1.0, 1.0))
        return False
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while channels and not conn.is_closed() and (deadline is None or loop.time() < deadline):
        await asyncio.sleep(0.2)
    return not channels or conn.is_closed()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.DisconnectError):
        return f"{exc.reason} (code {exc.code})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class _LinkClient(asyncssh.SSHClient):
    """Hears the bastion's drain notice (an SSH debug message)."""

    def __init__(self, link: BastionLink) -> None:
        self._link = link
        self._conn: asyncssh.SSHClientConnection | None = None

    def debug_msg_received(self, msg: str, lang: str, always_display: bool) -> None:
        if msg == DRAIN_NOTICE:
            event(log, logging.INFO, "drain notice", bastion=self._link.endpoint.address)
            self._link._drain_notice.set()

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        self._link._lost_reason = ""
        tune_connection(conn)  # cheaper packets, same wire (sshcompat/sendpath.py)
        kexguess.install(conn)  # a guessing server judged by RFC 4253 (sshcompat)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._link.conn is self._conn:
            self._link._lost_reason = _describe(exc) if exc else "closed by the bastion"
        self._link._draining = {c for c in self._link._draining if not c.is_closed()}
