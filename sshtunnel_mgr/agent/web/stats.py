"""What the agent's web sessions did, per tunnel: ``WebStats``.

Counted as they happen (a few integer increments per session, one per request), read by
``sshtun status`` (each web tunnel's row) and the metrics endpoint (``sshtun_agent_web_*``,
runtime/metrics.py). Bytes are those of the routed channel (TLS records included), of the
sessions that ended plus the ones open now.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

from sshtunnel_mgr.runtime.idle import IdleWatch
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.agent")

# Every count a tunnel's row shows (0 until it happens).
KINDS = (
    "sessions",  # routed channels served
    "tls_ok",  # TLS handshakes completed
    "tls_failed",  # TLS handshakes that failed (bad hello, no common cipher, timed out)
    "requests",  # HTTP requests forwarded to the target
    "websockets",  # upgrades the target accepted (101): raw bytes from then on
    "refused_400",  # answered by the agent: a malformed request head
    "refused_408",  # a request head not in time
    "refused_431",  # a request head too large
    "refused_502",  # the target unreachable or broken
    "idle_closed",  # no byte either way for the tunnel's idle_timeout
)


class Bytes(Protocol):
    """A session's channel (``ChannelPipe``): its byte counts, and closing it."""

    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    def close(self) -> None: ...


class WebStats:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._live: dict[Bytes, str] = {}  # open sessions' pipes, by tunnel label

    def count(self, label: str, kind: str, n: int = 1) -> None:
        self.counts[(label, kind)] += n

    def opened(self, label: str, pipe: Bytes) -> None:
        self.counts[(label, "sessions")] += 1
        self._live[pipe] = label

    def closed(self, pipe: Bytes) -> None:
        label = self._live.pop(pipe, None)
        if label is not None:
            self.counts[(label, "bytes_in")] += pipe.bytes_in
            self.counts[(label, "bytes_out")] += pipe.bytes_out

    async def watched(
        self,
        session: Awaitable[None],
        label: str,
        pipe: Bytes,
        idle_timeout: float,
        close_target: Callable[[], None],
    ) -> None:
        """Run one web session, counted; after ``idle_timeout`` seconds (0: never) with no
        byte either way on its channel, close both its ends (the session then ends as for
        a client that left) and say so: logged, counted."""

        def idle() -> None:
            self.count(label, "idle_closed")
            event(log, logging.INFO, "web idle", name=label, reason=f"idle for {idle_timeout:g} s")
            pipe.close()
            close_target()

        self.opened(label, pipe)
        watch = IdleWatch(idle_timeout, lambda: pipe.bytes_in + pipe.bytes_out, idle)
        try:
            await session
        finally:
            watch.cancel()
            self.closed(pipe)

    def row(self, label: str) -> dict[str, int]:
        """One tunnel's counts, bytes included (the open sessions' too)."""
        row = {kind: self.counts[(label, kind)] for kind in KINDS}
        row["bytes_in"] = self.counts[(label, "bytes_in")]
        row["bytes_out"] = self.counts[(label, "bytes_out")]
        row["open"] = 0
        for pipe, owner in self._live.items():
            if owner == label:
                row["bytes_in"] += pipe.bytes_in
                row["bytes_out"] += pipe.bytes_out
                row["open"] += 1
        return row

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Every tunnel that served a session: its row."""
        labels = {label for label, _ in self.counts} | set(self._live.values())
        return {label: self.row(label) for label in sorted(labels)}
