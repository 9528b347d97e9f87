"""Closing a connection that moves no byte either way for a while: ``IdleWatch``.

The data path pays nothing: the watch reads a byte count the connection keeps anyway
(``moved()``, both directions added up) a few times per timeout, on a loop timer, and
calls ``on_idle`` once the count has not changed for ``timeout`` seconds. A connection is
therefore closed between ``timeout`` and ``timeout * (1 + 1/CHECKS)`` after its last
byte. Used by the bastion's web front and the agent's web sessions (websockets included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

CHECKS = 4  # looks per timeout


class IdleWatch:
    def __init__(self, timeout: float, moved: Callable[[], int], on_idle: Callable[[], None]):
        self.timeout = timeout
        self._moved = moved
        self._on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self._seen = moved()
        self._since = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self.fired = False
        if timeout > 0:
            self._timer = self._loop.call_later(timeout / CHECKS, self._check)

    def _check(self) -> None:
        self._timer = None
        now, moved = self._loop.time(), self._moved()
        if moved != self._seen:
            self._seen, self._since = moved, now
        elif now - self._since >= self.timeout:
            self.fired = True
            self._on_idle()
            return
        self._timer = self._loop.call_later(self.timeout / CHECKS, self._check)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
