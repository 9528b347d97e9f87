"""Shared CLI plumbing: running a service until SIGINT/SIGTERM; command groups whose own
options need no conversion."""

from __future__ import annotations

import signal
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import typer.core

if TYPE_CHECKING:
    import asyncio


class _PlainOption(typer.core.TyperOption):
    """A group's own option used as click parsed it (an int count, a bool, a str or None),
    without typer's conversion: that builds a pydantic TypeAdapter, and importing pydantic
    for `sshtun keys --help` would cost more than the rest of the run."""

    def process_value(self, ctx: Any, value: Any) -> Any:
        if self.callback is not None:
            value = self.callback(ctx, self, value)
        return value


def _plain(param: Any) -> None:
    if type(param) is typer.core.TyperOption and not param.required:
        param.__class__ = _PlainOption


class GroupWithPlainOptions(typer.core.TyperGroup):
    """The groups (sshtun, keys, systemd): their options (--help, and the root's -v, -q,
    --log-format, --version and completion flags, which ``main._root`` checks itself) skip
    typer's pydantic conversion; the commands' own options keep it. Checked by
    tests/test_cli_imports.py."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        _plain(option)
        return option

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        for param in self.params:  # typer adds the completion options after __init__
            _plain(param)
        rest: list[str] = super().parse_args(ctx, args)
        return rest


def run_until_signal(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    reload: asyncio.Event | None = None,
) -> None:
    """Run ``main(stop)``. Signal handlers only set events: SIGINT/SIGTERM set ``stop``
    (the service shuts itself down); SIGHUP sets ``reload``."""
    import asyncio  # here, not at the top: `sshtun --help` does not need it

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
