"""Moving a link to a new connection, and retiring the connection it leaves.

A key rotation (or its undo) moves a link with no moment in which its names are unserved:
``prepare`` logs in with the new key and publishes every name there, so the bastion serves
each name from both connections for a moment; the link (link.py) then makes it its
connection and withdraws the names from the old one. ``Retiring`` holds the connections a
link has left (after a hand-over, or a bastion's drain notice): each keeps carrying its
routed sessions, and a handed-over one closes once its ``ChannelCount`` reaches zero (or
after a drain limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncssh

from sshtunnel_mgr.agent.client import channels_of, describe
from sshtunnel_mgr.agent.publish import Listeners, Publisher, close_tasks, task_failed
from sshtunnel_mgr.core.config import TunnelConfig
from sshtunnel_mgr.runtime.asyncutil import TaskSet, wait_either
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.agent")

CLOSE_TIMEOUT = 5.0  # how long a closed connection may take to end

Connect = Callable[[asyncssh.SSHKey], Awaitable[asyncssh.SSHClientConnection]]


async def prepare(
    connect: Connect,
    publisher: Publisher,
    key: asyncssh.SSHKey,
    tunnels: list[TunnelConfig],
    wanted: list[str],
    timeout: float,
) -> tuple[asyncssh.SSHClientConnection, Listeners] | str:
    """A new connection with ``key`` that publishes ``tunnels``, at least every name of
    ``wanted`` (what the old connection serves); or why there is none (nothing is left
    open then). Cancelled (the agent stops), it closes the new connection, and waits for
    it to end, before the cancellation goes on."""
    try:
        new = await connect(key)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        return f"the new key could not log in: {describe(exc)}"
    try:
        listeners, refused = await publisher.publish_on(new, tunnels, timeout)
    except (OSError, asyncssh.Error) as exc:
        new.close()
        return f"the new connection failed: {describe(exc)}"
    except BaseException:  # cancelled (the agent stops): the new connection goes first
        new.close()
        await closed(new)
        raise
    if missing := sorted(set(wanted) - set(listeners)):
        new.close()
        return "the new key may not publish " + ", ".join(
            f"{m} ({refused.get(m, 'refused')})" for m in missing
        )
    return new, listeners


async def closed(conn: asyncssh.SSHClientConnection) -> None:
    """Wait (at most ``CLOSE_TIMEOUT`` seconds) until ``conn``, told to close, has closed."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(conn.wait_closed(), CLOSE_TIMEOUT)


async def drain(conn: asyncssh.SSHClientConnection, timeout: float | None) -> bool:
    """Wait until ``conn`` carries no routed session or has closed, up to ``timeout``
    seconds (None: as long as that takes); whether it did."""
    try:
        await asyncio.wait_for(
            wait_either(channels_of(conn).wait_idle(), conn.wait_closed()), timeout
        )
    except TimeoutError:
        return False
    return True


class Retiring:
    """Connections a link has left, still carrying routed sessions."""

    def __init__(self, bastion: str) -> None:
        self._bastion = bastion
        self._conns: set[asyncssh.SSHClientConnection] = set()
        self._drains = TaskSet(task_failed)

    def retire(self, old: asyncssh.SSHClientConnection, timeout: float | None) -> int:
        """Close ``old`` once its routed sessions have ended (or after ``timeout``
        seconds, when set), in the background; how many it carries now."""
        sessions = channels_of(old).value
        self._conns.add(old)
        self._drains.spawn(self._retire(old, timeout), f"drain {self._bastion}")
        return sessions

    def leave(self, conn: asyncssh.SSHClientConnection) -> None:
        """The bastion is draining ``conn``: it closes it when its sessions end."""
        self._conns.add(conn)

    def closed(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conns.discard(conn)

    async def _retire(self, old: asyncssh.SSHClientConnection, timeout: float | None) -> None:
        drained = await drain(old, timeout)
        if not drained and not old.is_closed():
            event(
                log,
                logging.WARNING,
                "drain limit reached",
                bastion=self._bastion,
                sessions=channels_of(old).value,
                limit=f"{timeout:g}s",
            )
        old.close()
        self._conns.discard(old)

    async def wait_drained(self) -> None:
        """Until every handed-over connection has drained and closed."""
        await self._drains.wait()

    def sessions(self) -> int:
        """Routed sessions still open on the connections being retired."""
        return sum(channels_of(c).value for c in self._conns if not c.is_closed())

    async def aclose(self) -> None:
        """The link stops: close every connection it left, now, and wait for their drains
        to end."""
        for conn in list(self._conns):
            conn.close()
        await close_tasks(self._drains, self._bastion)
