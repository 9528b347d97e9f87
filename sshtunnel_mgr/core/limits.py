"""Per-key limits: how many connections and routed channels one key may hold at once.

Pure bookkeeping, no I/O. A key's channels are counted across all its connections, by
summing each connection's own count (at most ``max_connections_per_key`` of them), so the
data path keeps a single counter per connection.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

# listen(2) backlog of the bastion's sockets (one process, or each worker's reuseport socket)
LISTEN_BACKLOG = 1024

# Largest channel data packet each end of the agent hop (bastion <-> agent) says it takes
# in its channel open / confirmation (RFC 4254 §5.1 "maximum packet size"). The SSH
# default of 32 KiB makes a bulk transfer cost one packet's Python work per 32 KiB; both
# ends of this hop accept larger packets (asyncssh sizes its receive limit from the channel,
# OpenSSH takes packets up to 256 KiB), so a peer may send 128 KiB at a time. Clients of
# the bastion (ssh -J) keep what they ask for: a sender never exceeds the receiver's figure.
AGENT_HOP_MAX_PACKET = 128 * 1024


class HasChannels(Protocol):
    @property
    def open_channels(self) -> int: ...


C = TypeVar("C", bound=HasChannels)


class KeyUsage(Generic[C]):
    """The live, authenticated connections of each key (by fingerprint)."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[C]] = {}

    def add(self, key: str, conn: C) -> None:
        self._by_key.setdefault(key, set()).add(conn)

    def remove(self, key: str, conn: C) -> None:
        conns = self._by_key.get(key)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_key[key]

    def connections(self, key: str) -> int:
        return len(self._by_key.get(key, ()))

    def channels(self, key: str) -> int:
        return sum(c.open_channels for c in self._by_key.get(key, ()))

    def __len__(self) -> int:
        return len(self._by_key)


def connection_refusal(usage: KeyUsage[C], key: str, limit: int) -> str:
    """Why one more connection of ``key`` is refused, or ``""`` when it is allowed."""
    if usage.connections(key) >= limit:
        return f"key has too many connections (max {limit} per key)"
    return ""


def channel_refusal(usage: KeyUsage[C], key: str, limit: int) -> str:
    """Why one more routed channel of ``key`` is refused, or ``""``."""
    if usage.channels(key) >= limit:
        return f"too many open channels for this key across its connections (max {limit})"
    return ""
