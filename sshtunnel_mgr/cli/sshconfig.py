"""``sshtun ssh-config``: print the client's ~/.ssh/config block for a bastion's names."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from sshtunnel_mgr import sshconfig
from sshtunnel_mgr.access import load_access
from sshtunnel_mgr.admin import default_socket_path, query
from sshtunnel_mgr.config import load_config, split_host_port
from sshtunnel_mgr.errors import ConfigError, SshtunError, UnsafeAdminSocket
from sshtunnel_mgr.fsutil import write_atomic
from sshtunnel_mgr.strictmodes import running_as_root


def ssh_config_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="The bastion's config file.")],
    address: Annotated[
        str,
        typer.Option(
            "--address", help="How clients reach the bastion: host[:port] (its public name)."
        ),
    ],
    known_hosts: Annotated[
        Path,
        typer.Option(
            "--known-hosts", help="known_hosts file to write the bastion's pinned key into."
        ),
    ] = Path("~/.ssh/sshtun_known_hosts"),
    user: Annotated[str | None, typer.Option(help="Login name on the home boxes.")] = None,
    identity: Annotated[Path | None, typer.Option(help="The client's private key.")] = None,
) -> None:
    """Print Host blocks (ProxyJump through the bastion) for every published name."""
    bastion = load_config(config).require_bastion()
    try:
        host, port = split_host_port(address, 22)
    except ValueError as exc:
        raise ConfigError(f"--address: {exc}") from None
    pub_path = bastion.host_key.with_name(bastion.host_key.name + ".pub")
    try:
        host_pub = pub_path.read_text().strip()
    except OSError as exc:
        raise SshtunError(
            f"cannot read the bastion's public host key {pub_path}: {exc}",
            hint="start the bastion once; it creates its host key",
        ) from None
    live = _live_names(bastion.admin_socket or default_socket_path("bastion"))
    names = None if live is None else [(n["name"], n["port"]) for n in live]
    # The home boxes' own host keys, as their agents read them from the services: pinned
    # under the name the client dials, so the inner hop needs no trust-on-first-use either.
    home_lines = [
        sshconfig.known_hosts_line(n["name"], n["port"], n["host_key"])
        for n in live or []
        if n.get("host_key")
    ]
    if names is None:  # not running: what the access file allows agents to publish
        names = sshconfig.names_from_patterns(
            [
                (p.host, p.port)
                for e in load_access(bastion.access_file, any_owner=running_as_root()).entries
                for p in e.permit_listen
            ]
        )
    kh = known_hosts.expanduser()
    existing = kh.read_text().splitlines() if kh.exists() else []
    wanted = [sshconfig.known_hosts_line(host, port, host_pub), *home_lines]
    added = [line for line in dict.fromkeys(wanted) if line not in existing]
    if added:
        write_atomic(kh, ("\n".join([*existing, *added]) + "\n").encode(), 0o600)
    settings = sshconfig.ClientSettings(
        host, port, kh, user=user, identity=identity.expanduser() if identity else None
    )
    typer.echo(sshconfig.render(settings, names), nl=False)


def _live_names(path: Path) -> list[dict[str, Any]] | None:
    """The running bastion's published names (with host keys), or None if none runs."""
    try:
        answer = asyncio.run(query(path, {"cmd": "status"}, timeout=3))
    except UnsafeAdminSocket:
        raise  # its host keys would be pinned: an impostor must not be taken for "not running"
    except SshtunError:
        return None
    names: list[dict[str, Any]] = answer.get("names", [])
    return names


def register(app: typer.Typer) -> None:
    app.command("ssh-config")(ssh_config_cmd)
