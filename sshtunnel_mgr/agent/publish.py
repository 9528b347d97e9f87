"""The names one link publishes on its connection: ``Publisher``.

It asks the bastion for a remote forward per tunnel (each answered by ``forward.forward_to``),
records what was published and refused in the link's status, withdraws names, announces a
port-22 name's home host key (for ``sshtun ssh-config``), probes every published name end
to end through the bastion, and publishes a name again that the bastion no longer routes.
The link (link.py) calls it only while it holds its lock, so no two of these interleave.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncssh

from sshtunnel_mgr.agent.client import channels_of, describe
from sshtunnel_mgr.agent.forward import forward_to
from sshtunnel_mgr.agent.keyrequest import run_key_request
from sshtunnel_mgr.agent.status import LinkStatus
from sshtunnel_mgr.agent.web import WebFront, uses_web
from sshtunnel_mgr.core import policy
from sshtunnel_mgr.core.config import TunnelConfig
from sshtunnel_mgr.core.hostport import split_host_port
from sshtunnel_mgr.core.limits import AGENT_HOP_MAX_PACKET
from sshtunnel_mgr.core.protocol import NOT_PUBLISHED
from sshtunnel_mgr.keys.store import key_fingerprint, public_line
from sshtunnel_mgr.runtime.asyncutil import TaskSet
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.agent")

Listeners = dict[str, asyncssh.SSHListener]


def label_of(tunnel: TunnelConfig) -> str:
    return f"{tunnel.name}:{tunnel.port}"


def task_failed(name: str, exc: BaseException) -> None:
    """A link's background task (a home host key announcement, a drain) failed."""
    event(log, logging.ERROR, "task failed", task=name, error=repr(exc))


async def close_tasks(tasks: TaskSet, bastion: str) -> None:
    """Cancel ``tasks`` and wait for them to end; name any that would not."""
    left = await tasks.cancel_all()
    if left:
        event(log, logging.ERROR, "tasks did not end", bastion=bastion, tasks=",".join(left))


class Publisher:
    """What one link has published on its current connection (``conn``)."""

    def __init__(self, status: LinkStatus, web: WebFront | None = None) -> None:
        self.status = status
        self.web = web or WebFront()  # tunnels with tls/proxy_protocol (agent/web/)
        self.conn: asyncssh.SSHClientConnection | None = None
        self.listeners: Listeners = {}
        self._tasks = TaskSet(task_failed)  # home host key announcements

    # Which connection -------------------------------------------------------------------
    def start(self, conn: asyncssh.SSHClientConnection) -> None:
        """A fresh connection: nothing is published on it yet."""
        self.conn = conn
        self.listeners = {}
        self.status.published = []
        self.status.refused = {}

    def lost(self) -> None:
        """The connection is gone, and every name with it."""
        self.conn = None
        self.listeners = {}
        self.status.published = []
        self.status.probe_ok = False

    def adopt(self, conn: asyncssh.SSHClientConnection, listeners: Listeners) -> Listeners:
        """A hand-over: ``conn`` already serves ``listeners``; it becomes the connection.
        Returns the old connection's listeners, for the caller to close."""
        old, self.conn, self.listeners = self.listeners, conn, listeners
        self.status.published = list(listeners)
        for label in listeners:
            self.status.refused.pop(label, None)
        return old

    async def aclose(self) -> None:
        """The link stops: cancel the announcements under way and wait for them to end."""
        await close_tasks(self._tasks, self.status.bastion)

    # Publishing -------------------------------------------------------------------------
    async def publish(self, tunnels: list[TunnelConfig], timeout: float) -> None:
        """Publish ``tunnels`` on the connection and record the outcome in the status."""
        conn = self.conn
        if conn is None or not tunnels:
            return
        listeners, refused = await self.publish_on(conn, tunnels, timeout)
        if conn is not self.conn:  # lost meanwhile: these forwards went with it
            return
        self.listeners.update(listeners)
        self.status.refused.update(refused)
        for label, reason in refused.items():
            event(
                log,
                logging.ERROR,
                "publish refused",
                bastion=self.status.bastion,
                name=label,
                reason=reason,
                hint=f'the bastion\'s access file needs permitlisten="{label}" on this key',
            )
        for tunnel in tunnels:
            label = label_of(tunnel)
            if label in listeners:
                self.status.published.append(label)
                event(
                    log,
                    logging.INFO,
                    "published",
                    bastion=self.status.bastion,
                    name=label,
                    target=tunnel.target,
                )

    async def publish_on(
        self, conn: asyncssh.SSHClientConnection, tunnels: list[TunnelConfig], timeout: float
    ) -> tuple[Listeners, dict[str, str]]:
        """Ask for each tunnel's remote forward on ``conn``: (listeners, refusals) by
        ``name:port``. A published port-22 name also gets its home host key announced."""
        listeners: Listeners = {}
        refused: dict[str, str] = {}
        count = channels_of(conn)
        for tunnel in tunnels:
            label = label_of(tunnel)
            if uses_web(tunnel):
                factory = self.web.factory(conn, count, tunnel)
            else:
                factory = forward_to(conn, count, tunnel.target_host, tunnel.target_port)
            try:
                listeners[label] = await conn.create_server(
                    factory, tunnel.name, tunnel.port, max_pktsize=AGENT_HOP_MAX_PACKET
                )
            except asyncssh.ChannelListenError as exc:
                refused[label] = str(exc) or "refused"
                continue
            if tunnel.port == 22:
                self._tasks.spawn(
                    self._announce_home_key(conn, tunnel, timeout), f"announce {label}"
                )
        return listeners, refused

    def withdraw(self, labels: list[str], reason: str) -> None:
        """Cancel the forwards of ``labels`` (the bastion stops routing them)."""
        for label in labels:
            listener = self.listeners.pop(label, None)
            if listener is not None:
                listener.close()
            if label in self.status.published:
                self.status.published.remove(label)
            self.status.refused.pop(label, None)
            event(
                log,
                logging.INFO,
                "withdrawn",
                bastion=self.status.bastion,
                name=label,
                reason=reason,
            )

    async def republish(self, tunnel: TunnelConfig, timeout: float) -> None:
        """The bastion no longer routes a name this connection published (withdrawn by a
        reload, or lost to another connection of this key that has gone): ask again."""
        label = label_of(tunnel)
        event(
            log,
            logging.WARNING,
            "republish",
            bastion=self.status.bastion,
            name=label,
            reason="the bastion no longer routes this name to this connection",
        )
        listener = self.listeners.pop(label, None)
        if listener is not None:  # cancel the old forward first, or it cancels the new one
            listener.close()
            await listener.wait_closed()
        if label in self.status.published:
            self.status.published.remove(label)
        await self.publish([tunnel], timeout)

    async def _announce_home_key(
        self, conn: asyncssh.SSHClientConnection, tunnel: TunnelConfig, timeout: float
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
                timeout,
            )
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            event(log, logging.DEBUG, "no host key", target=tunnel.target, error=describe(exc))
            return
        if key is None:
            return
        line = public_line(key, "")
        answer = await run_key_request(
            conn, f"sshtun-hostkey {tunnel.name} {tunnel.port} {line}", timeout
        )
        if answer.get("ok"):
            event(
                log,
                logging.INFO,
                "announced host key",
                name=label_of(tunnel),
                key=key_fingerprint(key),
            )
        else:
            event(log, logging.DEBUG, "host key announcement refused", error=answer.get("error"))

    # Probing ----------------------------------------------------------------------------
    async def probe(self, timeout: float) -> str | None:
        """Prove each published name works end to end: open it through the bastion, which
        routes it back down this very connection to the local target. Sets the status;
        returns a name the bastion says is no longer published (to publish again), if any."""
        conn = self.conn
        assert conn is not None
        for label in list(self.status.published):
            name, port = split_host_port(label, 22)
            try:
                writer = await open_uncancelled(conn, name, port, timeout)
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                self.status.probe_ok = False
                self.status.probe_error = f"{label}: {describe(exc)}"
                event(
                    log,
                    logging.WARNING,
                    "probe failed",
                    bastion=self.status.bastion,
                    name=label,
                    error=describe(exc),
                )
                if isinstance(exc, asyncssh.ChannelOpenError) and NOT_PUBLISHED in exc.reason:
                    return label
                return None
            writer.close()
        self.status.probe_ok = True
        self.status.probe_error = ""
        self.status.last_probe_at = time.time()
        return None


async def open_uncancelled(
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
