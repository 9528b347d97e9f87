"""``sshtun demo``: a local, self-contained run of bastion + agent + client."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from sshtunnel_mgr.cli.common import run_until_signal


def demo_cmd(
    hold: Annotated[bool, typer.Option("--hold", help="Keep running until Ctrl-C.")] = False,
) -> None:
    """Start a bastion, an agent and a home service on loopback and connect through them."""
    from sshtunnel_mgr.setup.demo import run_demo

    if logging.getLogger().level == logging.INFO:
        logging.getLogger().setLevel(logging.ERROR)  # the demo narrates; -v shows the logs
    with tempfile.TemporaryDirectory(prefix="sshtun-demo-") as tmp:

        async def main(stop: object) -> None:
            import asyncio

            assert isinstance(stop, asyncio.Event)
            await run_demo(Path(tmp), typer.echo, hold=stop if hold else None)

        run_until_signal(main)
    typer.echo("demo ok: the tunnel works.")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
