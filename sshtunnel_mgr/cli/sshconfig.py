"""``sshtun ssh-config``: the ~/.ssh/config blocks and known_hosts lines that let
``ssh NAME`` jump through the bastion with every hop pinned.

On the laptop (``--bastion``): the bastion's key is checked against the one its admin gave
(``--bastion-key``, a key or its SHA256 fingerprint, or the line already pinned), and each
home box's key is read from its own SSH server through that pinned connection. On the
bastion (``--config``): from the running bastion's state, for an admin to hand out.
Prints everything it writes; merges into existing files, never replaces them; exits 9
naming each hop it could not pin."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from sshtunnel_mgr.core.errors import ConfigError, SshtunError, UnpinnedHop
from sshtunnel_mgr.core.hostport import split_host_port
from sshtunnel_mgr.core.knownhosts import host_pattern, merge_known_hosts, pinned_keys
from sshtunnel_mgr.runtime.fsutil import write_atomic
from sshtunnel_mgr.setup import sshconfig
from sshtunnel_mgr.setup.sshconfig import Plan, Unpinned

LAPTOP_KNOWN_HOSTS = Path("~/.ssh/sshtun_known_hosts")
ADMIN_HINT = "the admin gets it from `sshtun ssh-config --config BASTION.toml` on the bastion"


def ssh_config_cmd(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Published names to configure: NAME or NAME:PORT (default port 22)."),
    ] = None,
    bastion: Annotated[
        str | None,
        typer.Option("--bastion", help="On the laptop: the bastion's address, host[:port]."),
    ] = None,
    bastion_key: Annotated[
        str | None,
        typer.Option(
            "--bastion-key",
            help="The bastion's host key ('ssh-ed25519 AAAA...') or its SHA256:... "
            "fingerprint, from its admin. Not needed once pinned in --known-hosts.",
        ),
    ] = None,
    bastion_user: Annotated[str, typer.Option(help="Login name on the bastion.")] = "sshtun",
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="On the bastion: its config file."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="With --config: how clients reach the bastion."),
    ] = None,
    known_hosts: Annotated[
        str | None,
        typer.Option(
            "--known-hosts",
            help="known_hosts file to add the pins to ('-': print only). Default: "
            f"{LAPTOP_KNOWN_HOSTS} with --bastion, '-' with --config.",
        ),
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="ssh config file to merge the Host blocks into ('-': print only).",
        ),
    ] = "-",
    user: Annotated[str | None, typer.Option(help="Login name on the home boxes.")] = None,
    identity: Annotated[Path | None, typer.Option(help="Your private key.")] = None,
) -> None:
    """Host blocks (ProxyJump through the bastion) and pinned host keys for each hop.

    \b
    On the laptop (the key or fingerprint comes from the bastion's admin):
      sshtun ssh-config --bastion HOST:PORT --bastion-key SHA256:... \\
          --output ~/.ssh/config homebox
    On the bastion (prints the above command and the lines to hand out):
      sshtun ssh-config --config /etc/sshtun/bastion.toml --address HOST:PORT

    Exit 9 names each hop it could not pin; exit 4 if the bastion shows another key.
    """
    if (bastion is None) == (config is None):
        raise typer.BadParameter("give --bastion (on the laptop) or --config (on the bastion)")
    if config is not None and address is None:
        raise typer.BadParameter("--config needs --address (how clients reach the bastion)")

    where = bastion if bastion is not None else address
    assert where is not None
    try:
        host, port = split_host_port(where, 22)
        wanted = [_name(n) for n in names or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    default_kh = str(LAPTOP_KNOWN_HOSTS) if bastion is not None else "-"
    kh = _path(known_hosts or default_kh)
    if bastion is not None:
        if not wanted:
            raise typer.BadParameter("name the published hosts to configure, e.g. homebox")
        plan = _laptop(host, port, bastion_user, bastion_key, kh, wanted, identity)
    else:
        assert config is not None
        from sshtunnel_mgr.cli.sshconfig_admin import admin_plan

        plan = admin_plan(config, host, port, wanted)
    header, written = list(plan.header), _write_known_hosts(kh, plan)
    header += written
    settings = sshconfig.ClientSettings(
        host,
        port,
        kh,
        bastion_user=bastion_user,
        user=user,
        identity=identity.expanduser() if identity else None,
    )
    missing = {_hop_key(u.hop) for u in plan.unpinned}
    text = sshconfig.render(settings, plan.names, header, missing)
    out = _path(output)
    if out is not None:
        stable = [f"Generated by `sshtun ssh-config` for the bastion {host}:{port}."]
        block = sshconfig.render(settings, plan.names, stable, missing)
        text += _merge_output(out, block, f"{host}:{port}")
    typer.echo(text, nl=False)
    if plan.unpinned:
        raise UnpinnedHop(
            "not every hop is pinned, so `ssh NAME` would stop at an unknown host key:\n"
            + "\n".join(f"  {u.hop}: {u.reason}; fix: {u.fix}" for u in plan.unpinned),
            hint="what could be pinned is written; rerun this command once it is fixed",
        )


def _name(text: str) -> tuple[str, int]:
    from sshtunnel_mgr.core.names import normalize_name

    name, port = split_host_port(text, 22)
    return normalize_name(name), port


def _path(text: str) -> Path | None:
    """``-`` is stdout (no file); a symlink (a dotfiles repo) is written through."""
    return None if text == "-" else Path(os.path.realpath(Path(text).expanduser()))


def _hop_key(hop: str) -> tuple[str, int]:
    """(name, port) of an unpinned hop: ``homebox:22``, or a known_hosts spelling
    (``homebox``, ``[homebox]:2222``) for a conflicting pin."""
    try:
        return split_host_port(hop, 22)
    except ValueError:
        return hop, 0


def _laptop(
    host: str,
    port: int,
    user: str,
    key: str | None,
    kh: Path | None,
    names: list[tuple[str, int]],
    identity: Path | None,
) -> Plan:
    import asyncio

    from sshtunnel_mgr.setup.pinhops import Bastion, pin_hops

    pattern = host_pattern(host, port)
    keys: list[str] = []
    fingerprint = None
    if key is not None and key.startswith("SHA256:"):
        fingerprint = key
    elif key is not None:
        keys = [_check_key(key)]
    elif kh is not None and kh.exists():
        keys = pinned_keys(kh.read_text(), pattern)
    if not keys and fingerprint is None:
        raise UnpinnedHop(
            f"no key to check the bastion {host}:{port} against (nothing pinned for {pattern}"
            f"{f' in {kh}' if kh else ''}); it is never trusted on first use",
            hint=f"pass --bastion-key 'ssh-ed25519 AAAA...' or SHA256:...; {ADMIN_HINT}",
        )
    target = Bastion(host, port, user, keys, fingerprint)
    pins = asyncio.run(pin_hops(target, names, identity.expanduser() if identity else None))
    how = "verified just now" if pins.bastion_verified else "NOT verified: unreachable"
    header = [f"sshtun ssh-config: bastion {host}:{port}, its host key {how}"]
    lines = [sshconfig.known_hosts_line(host, port, k) for k in pins.bastion_keys]
    lines += [sshconfig.known_hosts_line(n, p, k) for (n, p), k in pins.home_keys.items()]
    return Plan(header, lines, names, list(pins.unpinned))


def _check_key(text: str) -> str:
    import asyncssh

    try:
        asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ConfigError(
            f"--bastion-key: not a public key ({exc})", hint="'ssh-ed25519 AAAA...' or SHA256:..."
        ) from None
    return " ".join(text.split()[:2])


def _write_known_hosts(kh: Path | None, plan: Plan) -> list[str]:
    """Merge the plan's lines into ``kh`` (0600, appended only); the header lines that say
    what was written where. A conflicting pin already there is reported, never replaced."""
    if kh is None:
        return [
            "known_hosts lines (not written: --known-hosts -); add them to ~/.ssh/known_hosts:",
            *(f"  {line}" for line in plan.lines),
        ]
    try:
        text = kh.read_text() if kh.exists() else ""
    except OSError as exc:
        raise SshtunError(f"cannot read {kh}: {exc}") from None
    merged = merge_known_hosts(text, plan.lines)
    if merged.added or (kh.exists() and kh.stat().st_mode & 0o077):
        try:
            write_atomic(kh, merged.text.encode(), 0o600)
        except OSError as exc:
            raise SshtunError(f"cannot write {kh}: {exc}") from None
    for line, there in merged.conflicts:
        pattern = line.split()[0]
        plan.unpinned.append(
            Unpinned(
                pattern,
                f"{kh} already pins another key for it ({there.split()[1]} ...)",
                f"if its key really changed, `ssh-keygen -R '{pattern}' -f {kh}`",
            )
        )
    return [
        f"known_hosts {kh}: {len(merged.added)} line(s) added, "
        f"{len(merged.present)} already there, {len(merged.conflicts)} conflicting:",
        *(f"  {line}" for line in plan.lines),
    ]


def _merge_output(out: Path, text: str, tag: str) -> str:
    """Merge ``text`` into the ssh config ``out`` between BEGIN/END lines (a backup of a
    changed file beside it); the header line saying so."""
    try:
        old = out.read_text() if out.exists() else ""
    except OSError as exc:
        raise SshtunError(f"cannot read {out}: {exc}") from None
    new = sshconfig.merge_config_block(old, text, tag)
    if new == old:
        return f"# {out}: already holds these Host blocks, unchanged\n"
    backup = out.with_name(out.name + ".sshtun-backup")
    try:
        if old:
            shutil.copyfile(out, backup)
            os.chmod(backup, 0o600)
        write_atomic(out, new.encode(), 0o600)
    except OSError as exc:
        raise SshtunError(f"cannot write {out}: {exc}") from None
    saved = f" (previous version: {backup})" if old else ""
    return f"# {out}: Host blocks merged between the sshtun BEGIN/END lines{saved}\n"


def register(app: typer.Typer) -> None:
    app.command("ssh-config")(ssh_config_cmd)
