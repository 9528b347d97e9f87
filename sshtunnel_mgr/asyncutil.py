"""Small asyncio helpers shared by the SSH edges."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def wait_either(*aws: Awaitable[object]) -> None:
    """Wait until the first of ``aws`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
