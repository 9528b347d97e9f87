"""Which accepted connection may start its key exchange now (pure; randomness injected).

A connection that has not logged in yet is a *startup*, as in OpenSSH. Startups are counted
per source (an IPv4 address or an IPv6 /64, as the cool-down counts them) and in total:

- A source over its cap (``per_source``) does not lose the connection: it *waits*, before
  any key exchange (no banner sent, nothing read, no CPU), in a queue of its own, and takes
  the slot of the next of its startups that logs in or leaves. Queues are bounded, per
  source and in total; beyond them the connection is dropped. (The caller also bounds the
  wait in time.) One office behind one NAT, or ``ansible -f 50``, is a normal user.
- In total, OpenSSH's ``MaxStartups start:rate:full`` random early drop: below ``start``
  startups every connection starts; from ``start`` one is dropped with probability
  ``rate`` %, rising linearly to 100 % at ``full``.
- Fairness under a flood from many addresses: a source that holds no startup is never
  early-dropped (it is not punished for the others' flood), and at ``full`` a source takes
  the oldest slot of the source holding the most startups when that one holds at least two
  more than it: the oldest startup of the heaviest source is then closed (*evicted*).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from sshtunnel_mgr.core.penalties import source_of
from sshtunnel_mgr.core.startups import MaxStartups, early_drop

T = TypeVar("T", bound=Hashable)

Action = Literal["start", "wait", "drop"]


@dataclass(frozen=True)
class StartupLimits:
    max_startups: MaxStartups
    per_source: int  # 0: no cap per source (and so no queue)
    queue_per_source: int
    queue_total: int


@dataclass(frozen=True)
class Verdict(Generic[T]):
    action: Action
    source: str
    reason: str = ""  # why it waits or is dropped
    evict: T | None = None  # an older startup to close, whose slot this one takes


class Admission(Generic[T]):
    """Startups per source, and the connections waiting for a slot of their source.

    The caller hands in each accepted connection (``arrive``), starts those told to start,
    keeps those told to wait, and reports every started one that logs in or leaves
    (``finished``: it may hand a waiting connection the freed slot) and every waiting one
    it gives up on (``abandon``: timed out, or the bastion stops).
    """

    def __init__(self, limits: StartupLimits, roll: Callable[[], float] = random.random) -> None:
        self.limits = limits
        self._roll = roll
        self._active: dict[str, dict[T, None]] = {}  # per source, oldest first
        self._waiting: dict[str, deque[T]] = {}
        self._source: dict[T, str] = {}
        self.total_active = 0
        self.total_waiting = 0

    # Counts ------------------------------------------------------------------------------
    def active(self, address: str) -> int:
        return len(self._active.get(_key(address), ()))

    def waiting(self, address: str) -> int:
        return len(self._waiting.get(_key(address), ()))

    def waiting_items(self) -> list[T]:
        return [item for queue in self._waiting.values() for item in queue]

    # Decisions ---------------------------------------------------------------------------
    def arrive(self, item: T, address: str) -> Verdict[T]:
        source = _key(address)
        limits = self.limits
        held = len(self._active.get(source, ()))
        if limits.per_source and held >= limits.per_source:
            return self._queue(item, source, held)
        cap = limits.max_startups
        evict: T | None = None
        if self.total_active >= cap.full:
            evict = self._victim(held)
            if evict is None:
                reason = f"too many connections not logged in yet (max_startups {cap}: full)"
                return Verdict("drop", source, reason)
            self._remove_active(evict)
        elif (
            held
            and self.total_active >= cap.start
            and early_drop(self.total_active, cap, self._roll())
        ):
            reason = (
                f"random early drop: {self.total_active} connections not logged in yet "
                f"(max_startups {cap})"
            )
            return Verdict("drop", source, reason)
        self._add_active(item, source)
        return Verdict("start", source, evict=evict)

    def finished(self, item: T) -> T | None:
        """A started connection logged in or left. Returns the waiting connection of the
        same source that now starts in its place, if any."""
        source = self._remove_active(item)
        if source is None:
            return None
        queue = self._waiting.get(source)
        if not queue:
            return None
        nxt = queue.popleft()
        self.total_waiting -= 1
        if not queue:
            del self._waiting[source]
        del self._source[nxt]
        self._add_active(nxt, source)
        return nxt

    def abandon(self, item: T) -> bool:
        """A waiting connection is given up on; whether it was waiting."""
        source = self._source.get(item)
        queue = self._waiting.get(source) if source is not None else None
        if source is None or queue is None or item not in queue:
            return False
        queue.remove(item)
        self.total_waiting -= 1
        del self._source[item]
        if not queue:
            del self._waiting[source]
        return True

    # Bookkeeping -------------------------------------------------------------------------
    def _queue(self, item: T, source: str, held: int) -> Verdict[T]:
        limits = self.limits
        queued = len(self._waiting.get(source, ()))
        if queued >= limits.queue_per_source:
            reason = (
                f"too many connections from {source} not logged in yet "
                f"(max {limits.per_source}, and {limits.queue_per_source} waiting)"
            )
            return Verdict("drop", source, reason)
        if self.total_waiting >= limits.queue_total:
            reason = f"too many connections waiting to start (max {limits.queue_total})"
            return Verdict("drop", source, reason)
        self._waiting.setdefault(source, deque()).append(item)
        self._source[item] = source
        self.total_waiting += 1
        reason = f"{held} connections from {source} not logged in yet (max {limits.per_source})"
        return Verdict("wait", source, reason)

    def _victim(self, held: int) -> T | None:
        """The oldest startup of the source holding the most, if it holds at least two
        more than the newcomer's source."""
        heaviest = max(self._active.values(), key=len, default=None)
        if heaviest is None or len(heaviest) < held + 2:
            return None
        return next(iter(heaviest))

    def _add_active(self, item: T, source: str) -> None:
        self._active.setdefault(source, {})[item] = None
        self._source[item] = source
        self.total_active += 1

    def _remove_active(self, item: T) -> str | None:
        source = self._source.get(item)
        active = self._active.get(source) if source is not None else None
        if source is None or active is None or item not in active:
            return None
        del active[item]
        del self._source[item]
        self.total_active -= 1
        if not active:
            del self._active[source]
        return source


def _key(address: str) -> str:
    return source_of(address) or address
