"""``sshtun keys …``: generate, inspect, store passphrases for, and revoke keys."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sshtunnel_mgr.cli.common import GroupWithPlainOptions
from sshtunnel_mgr.core.errors import (
    ConfigError,
    KeyFileError,
    SshtunError,
    UnsafeAdminSocket,
    UsageError,
)

# The key, config and access modules (asyncssh, pydantic, the keyring) are imported by the
# command that uses them, so `sshtun keys --help` stays fast.
if TYPE_CHECKING:
    from sshtunnel_mgr.core.access import AccessEntry
    from sshtunnel_mgr.core.config import BastionConfig
    from sshtunnel_mgr.keys.inventory import KeyFacts

app = typer.Typer(
    help="Generate, inspect and revoke SSH keys.", no_args_is_help=True, cls=GroupWithPlainOptions
)

BastionConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="A bastion config: use its access file.")
]


def _read_passphrase(from_stdin: bool) -> str:
    """A new passphrase: from a hidden prompt, or one line of stdin (never an argument)."""
    if from_stdin:
        value = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        value = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True)
    else:
        raise KeyFileError(
            "no terminal to ask for the passphrase on", hint="pipe it in with --passphrase-stdin"
        )
    if len(value) < 8:
        raise KeyFileError("the passphrase is shorter than 8 characters")
    return value


@app.command("gen")
def gen(
    path: Annotated[Path, typer.Argument(help="Where to write the private key (PATH.pub too).")],
    comment: Annotated[str, typer.Option(help="Comment stored with the public key.")] = "",
    key_type: Annotated[str, typer.Option("--type", help="ed25519 (default) or rsa.")] = "ed25519",
    bits: Annotated[int | None, typer.Option(help="RSA only: at least 3072.")] = None,
    passphrase: Annotated[
        bool,
        typer.Option(
            "--passphrase", help="Encrypt the key; the passphrase goes to the OS keyring."
        ),
    ] = False,
    passphrase_stdin: Annotated[
        bool,
        typer.Option("--passphrase-stdin", help="Like --passphrase, read from one line of stdin."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key.")] = False,
) -> None:
    """Write a key pair (private key 0600, OpenSSH format) and print the public key."""
    from sshtunnel_mgr.core.policy import MIN_RSA_BITS
    from sshtunnel_mgr.keys.secrets import store_passphrase
    from sshtunnel_mgr.keys.store import generate_key

    algorithm = {"ed25519": "ssh-ed25519", "rsa": "ssh-rsa"}.get(key_type)
    if algorithm is None:
        raise UsageError(f"--type must be ed25519 or rsa, not {key_type!r}")
    if bits is not None and algorithm == "ssh-rsa" and bits < MIN_RSA_BITS:
        raise UsageError(f"RSA keys must have at least {MIN_RSA_BITS} bits, not {bits}")
    secret = _read_passphrase(passphrase_stdin) if passphrase or passphrase_stdin else None
    info = generate_key(
        path,
        comment=comment or path.name,
        algorithm=algorithm,
        bits=bits,
        passphrase=secret,
        overwrite=force,
    )
    typer.echo(f"wrote {info.path} (private, 0600) and {info.path}.pub")
    if secret is not None:
        stored = store_passphrase(path, secret)
        typer.echo(f"passphrase stored in {stored.detail}")
    typer.echo(f"fingerprint: {info.fingerprint}")
    typer.echo(info.public_line)


@app.command("passphrase")
def passphrase_cmd(
    path: Annotated[
        Path, typer.Argument(help="The encrypted private key.", exists=True, dir_okay=False)
    ],
    from_stdin: Annotated[bool, typer.Option("--stdin", help="Read it from stdin.")] = False,
) -> None:
    """Store an existing key's passphrase (OS keyring, or a 0600 file where there is none)."""
    from sshtunnel_mgr.keys.secrets import store_passphrase
    from sshtunnel_mgr.keys.store import load_private_key

    secret = _read_passphrase(from_stdin)
    load_private_key(path, secret)  # refuse to store a wrong passphrase
    typer.echo(f"passphrase stored in {store_passphrase(path, secret).detail}")


def _public_half(path: Path) -> Path:
    """PATH.pub for PATH, as ``keys.inventory`` reads it."""
    return path if path.suffix == ".pub" else path.with_name(path.name + ".pub")


def _names(entry: AccessEntry | None) -> tuple[str, str]:
    if entry is None:
        return "-", "-"
    return (
        ",".join(str(p) for p in entry.permit_listen) or "-",
        ",".join(str(p) for p in entry.permit_open) or "-",
    )


def _row(facts: KeyFacts, entry: AccessEntry | None, now: datetime) -> dict[str, object]:
    publish, reach = _names(entry)
    row = facts.as_dict()
    row.update(publish=publish, reach=reach)
    if entry is not None:
        row["expires"] = entry.expiry.isoformat() if entry.expiry else None
        row["expired"] = entry.is_expired(now)
        row["from"] = ",".join(entry.from_patterns) or None
        row["rotated_from"] = entry.rotated_from or None
    return row


def _access_for(config: Path | None) -> tuple[Path, list[AccessEntry]] | None:
    if config is None:
        return None
    from sshtunnel_mgr.core.config import load_config
    from sshtunnel_mgr.runtime.accessfile import load_access
    from sshtunnel_mgr.runtime.strictmodes import running_as_root

    bastion = load_config(config).require_bastion()
    entries = load_access(bastion.access_file, any_owner=running_as_root()).entries
    return bastion.access_file, list(entries)


@app.command("list")
def list_cmd(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Key files in this directory.", exists=True, file_okay=False),
    ] = None,
    config: BastionConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Keys with fingerprint, type, size, age, and what each may publish or reach."""
    from sshtunnel_mgr.keys.inventory import facts_from_entry, facts_from_public, find_keys

    if directory is None and config is None:
        raise UsageError("say where the keys are: --dir DIR and/or --config BASTION.toml")
    now = datetime.now(UTC)
    access = _access_for(config)
    by_fp = {e.fingerprint: e for e in access[1]} if access else {}
    rows: list[dict[str, object]] = []
    if directory is not None:
        for pub in find_keys(directory):
            facts = facts_from_public(pub)
            rows.append(_row(facts, by_fp.pop(facts.fingerprint, None), now))
    if access is not None:
        for entry in access[1]:
            if entry.fingerprint in by_fp:
                rows.append(_row(facts_from_entry(entry), entry, now))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        age = "" if row["age_days"] is None else f" age {row['age_days']}d"
        expiry = f" expires {row['expires']}" if row.get("expires") else ""
        flag = " EXPIRED" if row.get("expired") else ""
        typer.echo(
            f"{row['fingerprint']} {row['type']} {row['bits']}{age} {row['comment']}"
            f"  publish={row['publish']} reach={row['reach']}{expiry}{flag}"
        )


@app.command("show")
def show_cmd(
    key: Annotated[str, typer.Argument(help="A key file (PATH or PATH.pub) or a fingerprint.")],
    config: BastionConfigOpt = None,
) -> None:
    """Everything about one key, as JSON."""
    from sshtunnel_mgr.keys.inventory import facts_from_entry, facts_from_public

    if key.startswith("SHA256:") and config is None:
        raise UsageError("a fingerprint needs --config (the bastion's access file)")
    if not key.startswith("SHA256:") and not _public_half(Path(key)).exists():
        raise UsageError(f"no key file {_public_half(Path(key))}")
    access = _access_for(config)
    entries = {e.fingerprint: e for e in access[1]} if access else {}
    if key.startswith("SHA256:"):
        entry = entries.get(key)
        if entry is None:
            raise KeyFileError(f"no key {key} in the access file")
        facts = facts_from_entry(entry)
    else:
        facts = facts_from_public(Path(key))
        entry = entries.get(facts.fingerprint)
    typer.echo(json.dumps(_row(facts, entry, datetime.now(UTC)), indent=2))


def _reload_bastion(bastion: BastionConfig, otherwise: str) -> dict[str, Any] | None:
    """Have the running bastion re-read its files; None (and a note) if none is running."""
    import asyncio

    from sshtunnel_mgr.runtime.admin import default_socket_path, query

    try:
        answer = asyncio.run(
            query(bastion.admin_socket or default_socket_path("bastion"), {"cmd": "reload"})
        )
    except UnsafeAdminSocket:
        raise  # something answers there, but not the bastion: never report it as done
    except SshtunError as exc:
        typer.echo(f"the bastion is not reachable ({exc.message}); {otherwise}")
        return None
    if not answer.get("ok"):
        raise SshtunError(f"the bastion refused to reload: {answer.get('error')}")
    return answer


@app.command("revoke")
def revoke_cmd(
    fingerprint: Annotated[str, typer.Argument(help="SHA256:... of the key to revoke.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="The bastion's config file.")],
) -> None:
    """Remove a key from the bastion's access file (atomically) and close its live
    sessions at once (the running bastion reloads)."""
    from sshtunnel_mgr.core.access import parse_access, remove_key
    from sshtunnel_mgr.core.config import load_config
    from sshtunnel_mgr.runtime.strictmodes import edit_trusted, running_as_root

    bastion = load_config(config).require_bastion()
    path = bastion.access_file
    removed: list[str] = []
    successors: list[str] = []

    def edit(text: str) -> str:
        new_text, lines = remove_key(text, fingerprint, str(path))
        removed.extend(lines)
        successors.extend(
            e.fingerprint for e in parse_access(new_text).entries if e.rotated_from == fingerprint
        )
        return new_text

    try:
        edit_trusted(path, edit, any_owner=running_as_root())
    except OSError as exc:
        raise ConfigError(f"cannot update access file {path}: {exc}") from None
    if not removed:
        raise KeyFileError(
            f"no key {fingerprint} in {path}",
            hint="sshtun keys list --config ... shows the fingerprints",
        )
    typer.echo(f"removed from {path}: {removed[0]}")
    for successor in successors:
        typer.echo(
            f"note: {successor} was enrolled by this key in a rotation and still works; "
            f"revoke it too if this key was compromised: sshtun keys revoke {successor}"
        )
    answer = _reload_bastion(bastion, "the key is refused from its next start")
    if answer is None:
        return
    closed = answer.get("revoked", []).count(fingerprint)
    typer.echo(f"bastion reloaded: {closed} live connection(s) of that key closed")


def _rotate_host_key(config: Path, finish: bool) -> None:
    from sshtunnel_mgr.core.config import load_config
    from sshtunnel_mgr.keys import hostkeys

    bastion = load_config(config).require_bastion()
    path = bastion.host_key
    if finish:
        hostkeys.finish(path)
        typer.echo(f"{path} is now the new host key; the old one is gone")
    else:
        nxt, created = hostkeys.begin(path)
        typer.echo(f"{'wrote' if created else 'keeping'} the new host key {nxt}")
    answer = _reload_bastion(bastion, "it serves this at its next start")
    if answer is None:
        return
    typer.echo("the bastion now serves: " + ", ".join(answer.get("host_keys", [])))
    if not finish:
        typer.echo(
            "clients learn the new key when they connect (OpenSSH: UpdateHostKeys yes; sshtun "
            "agents: bastion pinned with known_hosts). Once they have, run: sshtun keys "
            f"rotate --host-key --finish --config {config}"
        )


@app.command("rotate")
def rotate_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="The agent's config file.")],
    key: Annotated[
        Path | None,
        typer.Option(
            help="The agent key file, when the config names it differently "
            "(e.g. under systemd's $CREDENTIALS_DIRECTORY).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    drain: Annotated[
        float | None,
        typer.Option(
            help="Cut routed sessions still open on an old connection after this many "
            "seconds (default: wait for them to end)."
        ),
    ] = None,
    stop_after: Annotated[
        str | None,
        typer.Option(help="Stop after a step (enrol or switch) and resume with a rerun."),
    ] = None,
    undo: Annotated[
        bool, typer.Option("--undo", help="Abandon a rotation whose key file is not swapped yet.")
    ] = False,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="Wait until every bastion has retired the old key, showing the sessions "
            "still open (default: wait, unless run in an SSH session).",
        ),
    ] = None,
    host_key: Annotated[
        bool,
        typer.Option(
            "--host-key",
            help="On the bastion (--config BASTION.toml): serve a new host key beside the "
            "current one; clients learn it (hostkeys-00). Then --finish.",
        ),
    ] = False,
    finish: Annotated[
        bool, typer.Option("--finish", help="With --host-key: switch to the new host key.")
    ] = False,
) -> None:
    """Replace the agent's key with no moment in which its names are unreachable and no
    moment in which a crash locks you out: the new key is enrolled beside the old one, the
    agent's new connections take the names, the key file is swapped, and only then is the
    old key retired (on each bastion once its old connection has drained). Rerun to
    resume an interrupted rotation; it works with the agent stopped too."""
    if host_key or finish:
        _rotate_host_key(config, finish)
        return
    from sshtunnel_mgr.cli.rotate import rotate_agent_key

    rotate_agent_key(config, key, drain, stop_after, undo, wait)
