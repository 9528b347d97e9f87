"""The ``sshtun`` entry point: one typer app, one place that turns errors into exit codes."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from sshtunnel_mgr import __version__
from sshtunnel_mgr.cli import demo, doctor, keys, services, setup, sshconfig, status
from sshtunnel_mgr.cli.common import GroupWithPlainOptions
from sshtunnel_mgr.core.errors import EXIT_STATUSES, EXIT_USAGE, SshtunError

# The command modules import only typer and the standard library at the top: each command
# imports the SSH stack, the config models or the keyring when it runs, so `--version` and
# `--help` stay fast (tests/test_cli_imports.py holds them to it).


def _exit_statuses() -> str:
    codes = ", ".join(f"{s.code} {s.name}" for s in EXIT_STATUSES)
    return f"Exit status: {codes} (README: Exit codes)."


app = typer.Typer(
    name="sshtun",
    cls=GroupWithPlainOptions,
    help="sshtun: reach machines behind NAT through an SSH bastion, with no port open at home.",
    epilog=_exit_statuses(),
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,  # help texts keep their [brackets] (e.g. "the [agent] section")
    pretty_exceptions_enable=False,
)
app.add_typer(keys.app, name="keys")
services.register(app)
demo.register(app)
status.register(app)
sshconfig.register(app)
setup.register(app)
doctor.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sshtun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
    log_format: Annotated[
        str, typer.Option("--log-format", help="text (key=value) or json.")
    ] = "text",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    if log_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    from sshtunnel_mgr.runtime.logsetup import setup_logging

    setup_logging(verbose, quiet, log_format)


def fail(error: SshtunError) -> int:
    """The one place a user-facing error is printed."""
    from sshtunnel_mgr.runtime import systemd

    typer.echo(f"sshtun: error: {error.message}", err=True)
    if error.hint:
        typer.echo(f"  hint: {error.hint}", err=True)
    # Under systemd, `systemctl status` shows why the service stopped (no-op elsewhere).
    systemd.notify(f"STATUS=stopped (exit {error.exit_code}): {error.message}")
    return error.exit_code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (``errors.EXIT_STATUSES``). Usage errors are
    click's or ``UsageError`` (both 2); every sshtun error is printed by ``fail()``; nothing
    else is caught."""
    try:
        app(args=argv, prog_name="sshtun")  # standalone: click handles usage and Ctrl-C
    except SshtunError as error:
        return fail(error)
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    return 0


def run() -> None:
    sys.exit(main())
