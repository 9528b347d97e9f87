"""What the rest of the bastion may read from a live connection, as a ``Protocol``.

``BastionConnection`` (server.py) is the one implementation. The shared state, the status
snapshot, metrics and reload hold connections through this type, so none of them imports
server.py back (an import cycle would tie every module to every other).
"""

from __future__ import annotations

from typing import Protocol

import asyncssh

from sshtunnel_mgr.bastion.audit import Peer
from sshtunnel_mgr.bastion.routeopen import RouteStats
from sshtunnel_mgr.core.access import AccessEntry


class LiveConnection(Peer, Protocol):
    """A connection the bastion admitted (``BastionState.connections``, a route's handle)."""

    conn: asyncssh.SSHServerConnection | None
    open_channels: int  # routed client channels open on it (per-key channel cap)
    published: list[str]  # every name:port it published, for its disconnect line
    route_stats: dict[tuple[str, int], RouteStats]  # traffic per name it publishes
    home_host_keys: dict[tuple[str, int], str]  # sshtun-hostkey answers per name

    def revoke(self, reason: str) -> None:
        """Close it at once: its key is no longer allowed."""

    def reapply(self, entry: AccessEntry) -> list[str]:
        """Adopt a reloaded access entry; the names it withdrew (``name:port``)."""
