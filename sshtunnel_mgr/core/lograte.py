"""Per-source log budgets: a source that repeats an event cannot fill the disk with it.

Pure logic, no I/O: the clock is injected. Within a window of ``window`` seconds the first
``first`` events from a source are written, then every ``every``-th; the count starts again
in the next window. Sources are counted as the cool-downs count them (an IPv4 address or an
IPv6 /64, see ``penalties.source_of``). At most ``max_sources`` are remembered; the least
recently seen is forgotten first, so memory stays bounded whatever the address spread.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sshtunnel_mgr.core.penalties import source_of


@dataclass(frozen=True)
class Budget:
    """One event from a source: write it or not, and how many there were in this window."""

    source: str
    count: int
    write: bool


class LogRate:
    def __init__(
        self,
        *,
        first: int = 10,
        every: int = 100,
        window: float = 60.0,
        max_sources: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if first < 0 or every < 1 or window <= 0 or max_sources < 1:
            raise ValueError("first >= 0, every >= 1, window > 0, max_sources >= 1")
        self.first, self.every, self.window = first, every, window
        self.max_sources = max_sources
        self.clock = clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()  # source: start, count

    def __len__(self) -> int:
        return len(self._seen)

    def hit(self, address: str) -> Budget:
        """Count one event from ``address``; whether it is worth writing."""
        source = source_of(address) or address[:64]
        now = self.clock()
        start, count = self._seen.pop(source, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        count += 1
        while len(self._seen) >= self.max_sources:
            self._seen.popitem(last=False)
        self._seen[source] = (start, count)
        return Budget(source, count, count <= self.first or count % self.every == 0)
