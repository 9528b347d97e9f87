"""The bastion's lifecycle: start → ready → run until stopped → stop accepting → close
connections → drain under a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncssh

from sshtunnel_mgr import policy, systemd
from sshtunnel_mgr.access import AccessPolicy, load_access
from sshtunnel_mgr.admin import AdminServer, default_socket_path
from sshtunnel_mgr.bastion import authlog
from sshtunnel_mgr.bastion.server import BastionConnection
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.config import BastionConfig
from sshtunnel_mgr.errors import ConfigError
from sshtunnel_mgr.keys.store import key_fingerprint, load_or_create_host_key

log = logging.getLogger("sshtunnel_mgr.bastion")


class Bastion:
    """A running bastion. ``start()`` binds, ``stop()`` shuts down; tests use it directly."""

    def __init__(self, config: BastionConfig, access: AccessPolicy | None = None) -> None:
        self.config = config
        self.state = BastionState(config, access or load_access(config.access_file))
        self._servers: list[asyncssh.SSHAcceptor] = []
        self.host_key: asyncssh.SSHKey | None = None
        self.addresses: list[tuple[str, int]] = []

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def start(self) -> None:
        authlog.install()
        self.host_key = load_or_create_host_key(self.config.host_key)
        for host, port in self.config.listen_addresses:
            try:
                server = await asyncssh.create_server(
                    lambda: BastionConnection(self.state),
                    host,
                    port,
                    server_host_keys=[self.host_key],
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
                    reuse_address=True,
                    **policy.server_options(),
                )
            except OSError as exc:
                await self.stop()
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                    hint="check bastion.listen; is another server on that port?",
                ) from None
            self._servers.append(server)
            for sock in server.sockets:
                bound = sock.getsockname()
                self.addresses.append((str(bound[0]), int(bound[1])))
        log.info(
            "listening on %s host_key=%s access=%s keys=%d",
            ",".join(f"{h}:{p}" for h, p in self.addresses),
            key_fingerprint(self.host_key),
            self.config.access_file,
            len(self.state.access.entries),
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
                }
            )
        return {
            "ok": True,
            "role": "bastion",
            "listening": [f"{h}:{p}" for h, p in self.addresses],
            "connections": len(self.state.connections),
            "access_keys": len(self.state.access.entries),
            "names": names,
        }

    async def handle_admin(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "status":
            return self.snapshot()
        return {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}

    def status_line(self) -> str:
        names = len(self.state.routes)
        agents = len({r.conn_id for r in self.state.routes})
        return (
            f"listening on {','.join(f'{h}:{p}' for h, p in self.addresses)}; "
            f"{names} names from {agents} agent connections; "
            f"{len(self.state.connections)} connections"
        )

    async def stop(self, grace: float = 5.0) -> None:
        self.state.accepting = False
        for server in self._servers:
            server.close()
        for conn in list(self.state.connections.values()):
            if conn.conn is not None:
                conn.conn.close()
        waits = [c.conn.wait_closed() for c in self.state.connections.values() if c.conn]
        waits += [s.wait_closed() for s in self._servers]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), grace)
            except TimeoutError:
                log.warning("stop: connections did not close within %.1fs", grace)
        self._servers.clear()


async def serve(
    config: BastionConfig, stop: asyncio.Event, on_ready: Callable[[Bastion], None] | None = None
) -> None:
    bastion = Bastion(config)
    await bastion.start()
    admin = AdminServer(config.admin_socket or default_socket_path("bastion"), bastion.handle_admin)
    await admin.start()
    systemd.notify(
        "READY=1\nSTATUS=listening on " + ",".join(f"{h}:{p}" for h, p in bastion.addresses)
    )
    if on_ready is not None:
        on_ready(bastion)
    watchdog = systemd.watchdog_interval()
    try:
        while watchdog is not None and not stop.is_set():
            # The event loop is alive and the listeners are open: tell the watchdog.
            systemd.notify(f"WATCHDOG=1\nSTATUS={bastion.status_line()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), watchdog)
        await stop.wait()
    finally:
        systemd.notify("STOPPING=1")
        log.info("stopping")
        await admin.stop()
        await bastion.stop()
