"""Close a key's connections when its ``expiry-time`` passes, as a revoke does.

One loop timer (``call_at``) per logged-in connection whose key has an expiry: no polling.
The access file's expiry is wall-clock time, the loop's timer is monotonic, so a timer
waits at most ``MAX_WAIT`` seconds and then looks at the wall clock again (a clock step,
or an expiry far away, is handled by re-arming). A reload re-arms the timer with the
reloaded entry, so a key whose expiry was extended stays connected.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import asyncssh

from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core.access import AccessEntry
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.bastion")

MAX_WAIT = 3600.0


class Expiring(Protocol):
    """A logged-in connection whose key may expire (``BastionConnection``)."""

    conn_id: int
    peer_ip: str
    entry: AccessEntry | None
    conn: asyncssh.SSHServerConnection | None
    state: BastionState
    expiry_timer: asyncio.TimerHandle | None

    def revoke(self, reason: str) -> None: ...


def schedule(bc: Expiring) -> None:
    """(Re-)arm the connection's expiry timer for its current access entry."""
    cancel(bc)
    entry = bc.entry
    if entry is None or entry.expiry is None or bc.conn is None:
        return
    remaining = (entry.expiry - bc.state.wall()).total_seconds()
    loop = asyncio.get_running_loop()
    bc.expiry_timer = loop.call_at(loop.time() + min(max(remaining, 0.0), MAX_WAIT), _due, bc)


def cancel(bc: Expiring) -> None:
    timer, bc.expiry_timer = bc.expiry_timer, None
    if timer is not None:
        timer.cancel()


def _due(bc: Expiring) -> None:
    bc.expiry_timer = None
    entry = bc.entry
    if entry is None or entry.expiry is None or bc.conn is None:
        return
    if not entry.is_expired(bc.state.wall()):
        schedule(bc)  # early (the wall clock moved) or far away: wait again
        return
    expired = entry.expiry.isoformat(timespec="seconds")
    event(
        log,
        logging.WARNING,
        "key expired",
        conn=bc.conn_id,
        key=entry.label,
        from_=bc.peer_ip,
        expiry=expired,
    )
    bc.state.counters["expired_disconnects"] += 1
    bc.revoke(f"key {entry.label} expired at {expired}")
