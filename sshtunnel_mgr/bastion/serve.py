"""The bastion: bind → serve → stop accepting → tell agents → drain routed sessions under
a timeout → close. ``bastion/run.py`` runs it as a service (signals, admin socket,
metrics, reloads, ready and the watchdog, the stop sequence); a worker process
(``bastion/workers``) runs it on listening sockets its supervisor made."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import asyncssh

from sshtunnel_mgr import sshcompat
from sshtunnel_mgr.bastion.listener import Listener
from sshtunnel_mgr.bastion.reloadfiles import Files, read_files
from sshtunnel_mgr.bastion.server import BastionConnection
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.bastion.web import WebFront
from sshtunnel_mgr.bastion.web.front import drained, keep_listeners
from sshtunnel_mgr.core import policy
from sshtunnel_mgr.core.access import AccessPolicy
from sshtunnel_mgr.core.config import BastionConfig
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.protocol import DRAIN_NOTICE
from sshtunnel_mgr.keys.hostkeys import load_host_keys
from sshtunnel_mgr.keys.store import key_fingerprint
from sshtunnel_mgr.runtime.accessfile import load_access
from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.sshcompat import authlog, hostkeys

log = logging.getLogger("sshtunnel_mgr.bastion")


class Bastion:
    """A running bastion. ``start()`` binds, ``stop()`` shuts down; tests use it directly."""

    def __init__(
        self,
        config: BastionConfig,
        access: AccessPolicy | None = None,
        load: Callable[[], BastionConfig] | None = None,
    ) -> None:
        self.config = config
        self.state = BastionState(config, access or load_access(config.access_file))
        self.state.access_changed = self.reload_async
        self._reload_lock = asyncio.Lock()  # one reload at a time, reads included
        self._servers: list[Listener] = []
        self.listener: Listener | None = None  # set by start()
        self.host_key: asyncssh.SSHKey | None = None
        self.host_keys: list[asyncssh.SSHKey] = []
        self.addresses: list[tuple[str, int]] = []
        self.web: WebFront | None = None  # [bastion.web], when a web listener is set
        self._load = load
        # A worker (bastion/workers): listening sockets its supervisor bound, used instead
        # of binding bastion.listen; the "listening" line is then the supervisor's.
        self.inherited: list[socket.socket] | None = None
        # ... and the web listeners' ("https"/"http"), served instead of binding [bastion.web]
        self.web_inherited: dict[str, list[socket.socket]] | None = None

    def reload_from_file(self) -> dict[str, Any]:
        """Re-read the config file (then the access file it names) and apply it. Reads on
        the calling thread: the running bastion uses ``reload_async(from_file=True)``."""
        return self._apply(read_files(None, self._load, self.config))

    async def reload_async(self, *, from_file: bool = False) -> dict[str, Any]:
        """Reload with every file read (config, access file, host keys) in a worker thread,
        so the event loop keeps serving; reloads run one at a time, each applying what it
        read. ``from_file``: re-read the config file too, else keep the running config."""
        async with self._reload_lock:
            files = await asyncio.to_thread(
                read_files, None if from_file else self.config, self._load, self.config
            )
            return self._apply(files)

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def start(self) -> None:
        authlog.install()  # log refused password/kbd-int attempts (sshcompat)
        sshcompat.announce(log, "bastion")  # one line: which asyncssh shims are active
        self.state.audit.reopen(self.config.audit_log)  # JSON lines; off unless configured
        self.host_keys = load_host_keys(self.config.host_key)
        self.host_key = self.host_keys[0]
        # The bastion accepts on its own sockets and admits each connection (per-source
        # caps with waiting queues, MaxStartups) before asyncssh sends or reads a byte.
        options = asyncssh.SSHServerConnectionOptions(
            server_factory=lambda: BastionConnection(self.state),
            server_host_keys=self.host_keys,
            send_server_host_keys=True,
            login_timeout=self.config.limits.login_timeout,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_count_max=self.config.keepalive_count_max,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            server_version="sshtun",
            **policy.server_options(),
        )
        self.listener = Listener(self.state, options)
        self._servers.append(self.listener)
        for sock in self.inherited or ():
            self.listener.adopt(sock)
        for host, port in self.config.listen_addresses if self.inherited is None else ():
            try:
                self.listener.listen(host, port)
            except OSError as exc:
                await self.stop()
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                    hint="check bastion.listen; is another server on that port?",
                ) from None
        self.addresses = self.listener.addresses
        if self.config.web.https_listen or self.config.web.http_listen:
            self.web = WebFront(self.state, self.config.web, self.web_inherited)
            try:
                await self.web.start()
            except ConfigError:
                await self.stop()
                raise
        event(
            log,
            logging.INFO,
            "listening" if self.inherited is None else "worker serving",
            on=",".join(f"{h}:{p}" for h, p in self.addresses),
            host_key=",".join(key_fingerprint(k) for k in self.host_keys),
            access=self.config.access_file,
            keys=len(self.state.access.entries),
        )

    def snapshot(self) -> dict[str, Any]:
        """Everything ``sshtun status`` shows, as plain data."""
        names = []
        for route in sorted(self.state.routes, key=lambda r: (r.name, r.port, r.conn_id)):
            conn = route.handle
            stats = conn.route_stats.get((route.name, route.port))
            to_home, from_home = stats.totals() if stats else (0, 0)
            names.append(
                {
                    "name": route.name,
                    "port": route.port,
                    "key": route.owner,
                    "comment": conn.entry.comment if conn.entry else "",
                    "source": f"{conn.peer_ip}:{conn.peer_port}",
                    "conn": route.conn_id,
                    "since": route.since,
                    "open_channels": len(stats.live) if stats else 0,
                    "channels_total": stats.channels_total if stats else 0,
                    "bytes_to_home": to_home,
                    "bytes_from_home": from_home,
                    "host_key": conn.home_host_keys.get((route.name, route.port)),
                }
            )
        return {
            "ok": True,
            "role": "bastion",
            "listening": [f"{h}:{p}" for h, p in self.addresses],
            "host_keys": [key_fingerprint(k) for k in self.host_keys],
            "connections": len(self.state.connections),
            "access_keys": len(self.state.access.entries),
            "names": names,
            "web": self.web.snapshot() if self.web is not None else None,
            "asyncssh": sshcompat.summary("bastion"),  # release, active shims, stepped aside
        }

    def reload(self, config: BastionConfig) -> dict[str, Any]:
        """Re-read the access file (and limits): revoked keys are disconnected, names no
        longer allowed are withdrawn, everything else stays up untouched. Reads on the
        calling thread (tests); the running bastion uses ``reload_async``."""
        return self._apply(read_files(config, self._load, self.config))

    def _apply(self, files: Files | dict[str, Any]) -> dict[str, Any]:
        """The part of a reload that runs on the event loop: no file is read here."""
        if isinstance(files, dict):
            return files  # refused, already logged
        config, access, host_keys = files.config, files.access, files.host_keys
        notes = []
        if config.listen != self.config.listen:
            notes.append("listen changed: restart the bastion to apply that")
            event(log, logging.WARNING, "reload", note="listen changed; restart to apply that")
        web = keep_listeners(self.config.web, config.web, notes)
        config = config.model_copy(update={"web": web})
        if self.web is not None:
            self.web.reconfigure(config.web)  # public names, rules, bounds
        old_fps = [key_fingerprint(k) for k in self.host_keys]
        new_fps = [key_fingerprint(k) for k in host_keys]
        if new_fps != old_fps:
            for server in self._servers:
                server.update(server_host_keys=host_keys, send_server_host_keys=True)
            self.host_keys, self.host_key = host_keys, host_keys[0]
            told = sum(
                hostkeys.announce(c.conn, host_keys)
                for c in self.state.connections.values()
                if c.conn is not None and c.entry is not None
            )
            event(log, logging.INFO, "host keys now", keys=",".join(new_fps), announced_to=told)
        self.config = config.model_copy(update={"listen": self.config.listen})
        self.state.config = self.config
        notes += self.state.reconfigure(self.config)  # limits, penalties, audit log reopened
        self.state.access = access
        now = self.state.wall()  # expiry-time; reapply() re-arms each expiry timer
        revoked, withdrawn = [], []
        for conn in list(self.state.connections.values()):
            if conn.entry is None:
                continue
            decision = access.authenticate(conn.entry.key_blob, conn.peer_ip, now)
            if not decision:
                revoked.append(conn.entry.fingerprint)
                conn.revoke(decision.reason)
                continue
            entry = access.find(conn.entry.key_blob)
            assert entry is not None
            withdrawn += conn.reapply(entry)
        event(
            log,
            logging.INFO,
            "reload done",
            keys=len(access.entries),
            revoked_connections=len(revoked),
            withdrawn=",".join(withdrawn) or "-",
        )
        return {
            "ok": True,
            "host_keys": new_fps,
            "keys": len(access.entries),
            "revoked": revoked,
            "withdrawn": withdrawn,
            "notes": notes,
        }

    async def handle_admin(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "status":
            return self.snapshot()
        if request.get("cmd") == "reload":
            return await self.reload_async(from_file=True)
        return {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}

    def status_line(self) -> str:
        names = len(self.state.routes)
        agents = len({r.conn_id for r in self.state.routes})
        return (
            f"listening on {','.join(f'{h}:{p}' for h, p in self.addresses)}; "
            f"{names} names from {agents} agent connections; "
            f"{len(self.state.connections)} connections"
        )

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: stop accepting, tell agents (they reconnect at once), let
        routed sessions drain for up to ``grace`` seconds, then close everything."""
        grace = self.config.shutdown_grace if grace is None else grace
        self.state.accepting = False
        for server in self._servers:
            server.close()
        if self.web is not None:
            self.web.close()  # stop accepting; heads still being read are closed
        for conn in list(self.state.connections.values()):
            if conn.conn is not None and conn.published:
                conn.conn.send_debug(DRAIN_NOTICE)
        live = self.state.in_flight()
        web_live = self.web.routed_open if self.web is not None else 0
        if (live or web_live) and grace > 0:
            ssh, wait = self.state.drained if live else None, f"{grace:.0f}s"
            event(log, logging.INFO, "draining", routed_channels=live, web=web_live, grace=wait)
            try:
                await asyncio.wait_for(drained(ssh, self.web), grace)
            except TimeoutError:
                event(
                    log,
                    logging.WARNING,
                    "drain incomplete",
                    routed_channels=self.state.in_flight(),
                    grace=f"{grace:.0f}s",
                    action="closing them",
                )
        for conn in list(self.state.connections.values()):
            if conn.conn is not None:
                conn.conn.close()
        waits = [c.conn.wait_closed() for c in self.state.connections.values() if c.conn]
        waits += [s.wait_closed() for s in self._servers]
        if self.web is not None:
            self.web.close_all()  # spliced ones too (their agents' channels are closing)
            waits.append(self.web.wait_closed())
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 5)
            except TimeoutError:
                event(log, logging.WARNING, "stop", note="connections did not close within 5s")
        if self.state.tasks:  # key requests: their sessions are closed, so they finish now
            await asyncio.wait(set(self.state.tasks), timeout=5)
        self._servers.clear()
        self.state.audit.close()
