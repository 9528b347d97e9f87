"""``sshtun init`` (starter config and keys) and ``sshtun systemd install`` (the unit)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sshtunnel_mgr.cli.common import GroupWithPlainOptions
from sshtunnel_mgr.core.errors import ConfigError, UsageError

# setup, unitlayout and config (the key store, pydantic) are imported by the command that
# uses them, so `sshtun --help` stays fast (tests/test_cli_imports.py).
if TYPE_CHECKING:
    from sshtunnel_mgr.setup import init as setup

systemd_app = typer.Typer(
    help="Install sshtun as a systemd service.", no_args_is_help=True, cls=GroupWithPlainOptions
)

RoleOpt = Annotated[str, typer.Option("--role", help="agent or bastion.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Only show what would be done.")]


def _run(actions: list[setup.Action], dry_run: bool) -> None:
    from sshtunnel_mgr.setup import init as setup

    if dry_run:
        for act in actions:
            typer.echo(f"would {act.describe()}")
        return
    for line in setup.apply(actions):
        typer.echo(line)


def _ask(value: str | None, prompt: str, flag: str) -> str:
    if value:
        return value
    if sys.stdin.isatty():
        answer: str = typer.prompt(prompt)
        return answer
    raise UsageError(f"{flag} is required (no terminal to ask on)")


def init_cmd(
    role: RoleOpt,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to write config and keys.")
    ] = Path("/etc/sshtun"),
    bastion: Annotated[
        str | None, typer.Option(help="agent: the bastion's address, host[:port].")
    ] = None,
    bastion_key: Annotated[
        str | None,
        typer.Option(
            help="agent: the bastion's host public key line (pin it; no trust on first use)."
        ),
    ] = None,
    tunnel: Annotated[
        list[str] | None, typer.Option(help="agent: name[:port]=host:port to publish (repeatable).")
    ] = None,
    listen: Annotated[str, typer.Option(help="bastion: address to listen on.")] = "0.0.0.0:2222",
    state_dir: Annotated[
        Path | None, typer.Option(help="bastion: where its host key lives (default: DIR).")
    ] = None,
    systemd: Annotated[
        bool,
        typer.Option(
            "--systemd",
            help="The layout the shipped unit runs: agent: the key from systemd's "
            "$CREDENTIALS_DIRECTORY; bastion: host key and access file in /var/lib/sshtun, "
            "audit log in /var/log/sshtun.",
        ),
    ] = False,
    dry_run: DryRun = False,
) -> None:
    """Write a starter config with generated keys (asks only what it cannot guess)."""
    from sshtunnel_mgr.core.config import load_config
    from sshtunnel_mgr.setup import init as setup

    if role == "agent":
        address = _ask(bastion, "Bastion address (host[:port])", "--bastion")
        key = _ask(bastion_key, "Bastion host key (ssh-ed25519 AAAA...)", "--bastion-key")
        tunnels = tunnel or [_ask(None, "Tunnel (name[:port]=host:port)", "--tunnel")]
        actions = setup.plan_agent_init(directory, address, key, tunnels, systemd)
        _run(actions, dry_run)
        if not dry_run:
            cfg = load_config(directory / "agent.toml").require_agent()
            pub = (directory / "agent_key.pub").read_text().strip()
            names = ",".join(f"{t.name}:{t.port}" for t in cfg.tunnels)
            typer.echo("\nOn the bastion, add this line to its access file, then reload it:")
            typer.echo(f'permitlisten="{names}" {pub}')
            config_path = (directory / "agent.toml").absolute()
            if systemd:  # the key is a credential: only the unit can run this config
                typer.echo(
                    "\nThen install and start the service (it hands the key over with "
                    f"LoadCredential=; `sshtun up` by hand cannot read it):\n"
                    f"sshtun systemd install --role agent --config {config_path}\n"
                    "systemctl daemon-reload && systemctl enable --now sshtun-agent.service"
                )
            else:
                typer.echo(f"\nThen run: sshtun up --config {config_path}")
    elif role == "bastion":
        state = state_dir or (setup.SYSTEMD_STATE_DIR if systemd else directory)
        audit = setup.SYSTEMD_AUDIT_LOG if systemd else None
        actions = setup.plan_bastion_init(directory, listen, state, audit)
        _run(actions, dry_run)
        if not dry_run:
            host_pub = (state / "host_key.pub").read_text().split()[:2]
            typer.echo("\nAgents and clients pin this host key:")
            typer.echo(" ".join(host_pub))
            config_path = (directory / "bastion.toml").absolute()
            if systemd:
                typer.echo(
                    f"\nThen install and start the service:\n"
                    f"sshtun systemd install --role bastion --config {config_path}\n"
                    "systemctl daemon-reload && systemctl enable --now sshtun-bastion.service"
                )
            else:
                typer.echo(f"\nThen run: sshtun bastion --config {config_path}")
    else:
        raise UsageError(f"--role must be agent or bastion, not {role!r}")


@systemd_app.command("install")
def install_cmd(
    role: RoleOpt,
    config: Annotated[
        Path | None, typer.Option("--config", help="The config the service runs with.")
    ] = None,
    unit_dir: Annotated[Path, typer.Option(help="Where unit files go.")] = Path(
        "/etc/systemd/system"
    ),
    dry_run: DryRun = False,
) -> None:
    """Write the systemd unit (paths filled in for this installation) and print the
    systemctl commands to run."""
    from sshtunnel_mgr.setup import init as setup

    if role not in setup.UNIT_NAMES:
        raise UsageError(f"--role must be agent or bastion, not {role!r}")
    binary = shutil.which("sshtun") or str(Path(sys.argv[0]).resolve())
    cfg = (config or Path(f"/etc/sshtun/{role}.toml")).absolute()
    _check_layout(role, cfg)
    actions = setup.plan_systemd_install(role, setup.unit_template(role), binary, cfg, unit_dir)
    _run(actions, dry_run)
    unit = setup.UNIT_NAMES[role]
    if role == "agent":
        typer.echo(
            f"\nThe unit hands the key to the service as a credential: keep it at "
            f"{setup.credential_source(cfg)} (0600, root) and set key = "
            f'"$CREDENTIALS_DIRECTORY/agent_key" in {cfg} (sshtun init --systemd does).'
        )
    typer.echo(f"\nsystemctl daemon-reload\nsystemctl enable --now {unit}\nsystemctl status {unit}")


def _check_layout(role: str, cfg: Path) -> None:
    """Refuse a config the sandboxed unit could not run (none yet: say what to run)."""
    from sshtunnel_mgr.core.config import load_config
    from sshtunnel_mgr.setup import init as setup
    from sshtunnel_mgr.setup import unitlayout

    if not cfg.exists():
        typer.echo(f"note: {cfg} does not exist yet: sshtun init --role {role} --systemd")
        return
    loaded = load_config(cfg)
    found = unitlayout.readable_problems(cfg)
    if role == "bastion":
        found += unitlayout.bastion_problems(loaded.require_bastion())
    else:
        source = setup.credential_source(cfg)
        found += unitlayout.agent_problems(loaded.require_agent(), source, source.exists())
    if found:
        raise ConfigError(
            f"the {setup.UNIT_NAMES[role]} unit cannot run {cfg}: " + "; ".join(found),
            hint=f"`sshtun init --role {role} --systemd` writes the layout the unit runs",
        )


def example_config_cmd() -> None:
    """Print config.example.toml: every key of both roles, documented, with its default."""
    from sshtunnel_mgr.setup import init as setup

    typer.echo(setup.example_config(), nl=False)


def register(app: typer.Typer) -> None:
    app.command("init")(init_cmd)
    app.command("example-config")(example_config_cmd)
    app.add_typer(systemd_app, name="systemd")
