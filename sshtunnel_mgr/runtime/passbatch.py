"""Small writes handed on once per event-loop pass: ``PassBatch``.

One read from an SSH connection often carries several channel data packets (an OpenSSH
client sends at most 32 KiB per packet, so a 256 KiB read holds eight). Written on one by
one, each becomes a packet of its own on the next hop, with its own encryption, header
parsing, window bookkeeping and (at the far end) ``send()`` into a local socket. Batched,
the pieces that arrive during one pass of the event loop go on as one write at the end of
that pass: one packet of up to ``limit`` bytes on a hop whose peer takes that much.

A piece of at least ``limit / 2`` bytes that finds the batch empty goes on at once (no
join, no copy: a bulk stream from a peer that sends large packets pays nothing). The
batch is handed on as soon as it holds ``limit`` bytes, so it never holds more. Order is
kept: ``flush`` must be called before anything that has to follow the data (an EOF, a
close).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class PassBatch:
    __slots__ = ("_limit", "_out", "_parts", "_scheduled", "_size")

    def __init__(self, out: Callable[[bytes], None], limit: int) -> None:
        self._out = out
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._scheduled = False

    @property
    def held(self) -> int:
        return self._size

    def add(self, data: bytes) -> None:
        size = len(data)
        if not self._parts and size * 2 >= self._limit:
            self._out(data)
            return
        self._parts.append(data)
        self._size += size
        if self._size >= self._limit:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._on_pass)

    def _on_pass(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        parts = self._parts
        if not parts:
            return
        self._parts, self._size = [], 0
        self._out(parts[0] if len(parts) == 1 else b"".join(parts))

    def drop(self) -> None:
        """Forget what is held (its destination is gone)."""
        self._parts, self._size = [], 0
