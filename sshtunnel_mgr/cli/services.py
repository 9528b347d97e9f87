"""``sshtun bastion`` and ``sshtun up``: the two long-running roles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sshtunnel_mgr.cli.status import pick_role, socket_for
from sshtunnel_mgr.core.errors import SshtunError

# The services, the admin client and the config (asyncssh, pydantic) are imported by the
# command that runs them, so `sshtun --help` stays fast (tests/test_cli_imports.py).

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The sshtun TOML config file.")]


def bastion_cmd(config: ConfigOpt) -> None:
    """Run the routing bastion (the [bastion] section of the config)."""
    import asyncio

    from sshtunnel_mgr.bastion.run import serve
    from sshtunnel_mgr.core.config import load_config
    from sshtunnel_mgr.runtime.heap import keep_heap

    cfg = load_config(config).require_bastion()
    keep_heap()
    load = lambda: load_config(config).require_bastion()  # noqa: E731
    asyncio.run(serve(cfg, load=load, handle_signals=True, config_path=config))


def up_cmd(config: ConfigOpt) -> None:
    """Run the agent: connect out to the bastion(s) and publish the tunnels ([agent])."""
    import asyncio

    from sshtunnel_mgr import agent
    from sshtunnel_mgr.core.config import load_config
    from sshtunnel_mgr.runtime.heap import keep_heap

    cfg = load_config(config).require_agent()
    keep_heap()
    load = lambda: load_config(config).require_agent()  # noqa: E731
    asyncio.run(agent.serve(cfg, load=load, handle_signals=True))


def register(app: typer.Typer) -> None:
    app.command("bastion")(bastion_cmd)
    app.command("up")(up_cmd)
    app.command("reload")(reload_cmd)


def reload_cmd(
    config: ConfigOpt,
    role: Annotated[
        str | None, typer.Option("--role", help="agent or bastion (when the file has both).")
    ] = None,
) -> None:
    """Ask the running agent or bastion to re-read its config (like SIGHUP)."""
    import asyncio

    from sshtunnel_mgr.core.config import load_config
    from sshtunnel_mgr.runtime.admin import query

    cfg = load_config(config)
    chosen = pick_role(cfg, role)
    answer = asyncio.run(query(socket_for(cfg, chosen), {"cmd": "reload"}))
    if not answer.get("ok"):
        raise SshtunError(
            f"reload refused: {answer.get('error', 'unknown error')}",
            hint="fix the file; the running service keeps its old config",
        )
    for key in ("revoked", "withdrawn", "published"):
        if answer.get(key):
            typer.echo(f"{key}: {', '.join(answer[key])}")
    for note in answer.get("notes", []):
        typer.echo(f"note: {note}")
    typer.echo("reloaded")
