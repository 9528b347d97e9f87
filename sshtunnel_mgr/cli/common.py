"""Shared CLI plumbing: running a service until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any


def run_until_signal(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    reload: asyncio.Event | None = None,
) -> None:
    """Run ``main(stop)``. Signal handlers only set events: SIGINT/SIGTERM set ``stop``
    (the service shuts itself down); SIGHUP sets ``reload``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = [signal.SIGINT, signal.SIGTERM]
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload.set)
            signals.append(signal.SIGHUP)
        try:
            await main(stop)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    asyncio.run(runner())
