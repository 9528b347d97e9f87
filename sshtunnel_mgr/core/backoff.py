"""Reconnect backoff as a value: capped, jittered exponential, reset after a healthy period.

The clock and the randomness are injected, so tests drive it with a fake clock and a fixed
random source and never sleep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 1.0
    cap: float = 60.0
    factor: float = 2.0
    jitter: float = 0.5  # fraction of the delay that is randomized ("equal jitter" at 0.5)
    healthy_after: float = 30.0  # a connection up this long resets the backoff
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = field(default_factory=lambda: random.SystemRandom().random)
    attempts: int = 0
    _connected_at: float | None = None

    def next_delay(self) -> float:
        """Delay before the next attempt; each call counts one failed attempt."""
        # The exponent is bounded so a very long outage can never overflow the float.
        raw = min(self.cap, self.base * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        fixed = raw * (1.0 - self.jitter)
        return fixed + raw * self.jitter * self.rand()

    def connected(self) -> None:
        """A connection was established (it is not yet proven healthy)."""
        self._connected_at = self.clock()

    def disconnected(self) -> None:
        """The connection ended; reset if it had been healthy long enough."""
        if self._connected_at is not None and (
            self.clock() - self._connected_at >= self.healthy_after
        ):
            self.attempts = 0
        self._connected_at = None

    def reset(self) -> None:
        self.attempts = 0
        self._connected_at = None
