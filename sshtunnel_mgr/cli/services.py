"""``sshtun bastion`` and ``sshtun up``: the two long-running roles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sshtunnel_mgr import agent, bastion
from sshtunnel_mgr.cli.common import run_until_signal
from sshtunnel_mgr.config import load_config

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The sshtun TOML config file.")]


def bastion_cmd(config: ConfigOpt) -> None:
    """Run the routing bastion (the [bastion] section of the config)."""
    cfg = load_config(config).require_bastion()
    run_until_signal(lambda stop: bastion.serve(cfg, stop))


def up_cmd(config: ConfigOpt) -> None:
    """Run the agent: connect out to the bastion(s) and publish the tunnels ([agent])."""
    cfg = load_config(config).require_agent()
    run_until_signal(lambda stop: agent.serve(cfg, stop))


def register(app: typer.Typer) -> None:
    app.command("bastion")(bastion_cmd)
    app.command("up")(up_cmd)
