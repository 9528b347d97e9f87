"""``sshtun keys …``: generate, inspect, store passphrases for, and revoke keys."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from sshtunnel_mgr.access import AccessEntry, load_access, remove_key
from sshtunnel_mgr.admin import default_socket_path, query
from sshtunnel_mgr.config import load_config
from sshtunnel_mgr.errors import ConfigError, KeyFileError, SshtunError
from sshtunnel_mgr.fsutil import write_atomic
from sshtunnel_mgr.keys.inventory import KeyFacts, facts_from_entry, facts_from_public, find_keys
from sshtunnel_mgr.keys.secrets import store_passphrase
from sshtunnel_mgr.keys.store import generate_key, load_private_key

app = typer.Typer(help="Generate, inspect and revoke SSH keys.", no_args_is_help=True)

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
    algorithm = {"ed25519": "ssh-ed25519", "rsa": "ssh-rsa"}.get(key_type)
    if algorithm is None:
        raise KeyFileError(f"--type must be ed25519 or rsa, not {key_type!r}")
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
    path: Annotated[Path, typer.Argument(help="The encrypted private key.")],
    from_stdin: Annotated[bool, typer.Option("--stdin", help="Read it from stdin.")] = False,
) -> None:
    """Store an existing key's passphrase (OS keyring, or a 0600 file where there is none)."""
    secret = _read_passphrase(from_stdin)
    load_private_key(path, secret)  # refuse to store a wrong passphrase
    typer.echo(f"passphrase stored in {store_passphrase(path, secret).detail}")


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
    return row


def _access_for(config: Path | None) -> tuple[Path, list[AccessEntry]] | None:
    if config is None:
        return None
    bastion = load_config(config).require_bastion()
    return bastion.access_file, list(load_access(bastion.access_file).entries)


@app.command("list")
def list_cmd(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Key files in this directory.")
    ] = None,
    config: BastionConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Keys with fingerprint, type, size, age, and what each may publish or reach."""
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
    if directory is None and access is None:
        raise ConfigError("say where the keys are: --dir DIR and/or --config BASTION.toml")
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
    access = _access_for(config)
    entries = {e.fingerprint: e for e in access[1]} if access else {}
    if key.startswith("SHA256:"):
        entry = entries.get(key)
        if entry is None:
            raise KeyFileError(
                f"no key {key} in the access file"
                if access
                else "a fingerprint needs --config (the bastion's access file)"
            )
        facts = facts_from_entry(entry)
    else:
        facts = facts_from_public(Path(key))
        entry = entries.get(facts.fingerprint)
    typer.echo(json.dumps(_row(facts, entry, datetime.now(UTC)), indent=2))


@app.command("revoke")
def revoke_cmd(
    fingerprint: Annotated[str, typer.Argument(help="SHA256:... of the key to revoke.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="The bastion's config file.")],
) -> None:
    """Remove a key from the bastion's access file (atomically) and close its live
    sessions at once (the running bastion reloads)."""
    bastion = load_config(config).require_bastion()
    path = bastion.access_file
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read access file {path}: {exc}") from None
    new_text, removed = remove_key(text, fingerprint, str(path))
    if not removed:
        raise KeyFileError(
            f"no key {fingerprint} in {path}",
            hint="sshtun keys list --config ... shows the fingerprints",
        )
    mode = path.stat().st_mode & 0o777
    write_atomic(path, new_text.encode(), mode)
    typer.echo(f"removed from {path}: {removed[0]}")
    try:
        answer = asyncio.run(
            query(
                bastion.admin_socket or default_socket_path("bastion"),
                {"cmd": "reload"},
                timeout=10,
            )
        )
    except SshtunError as exc:
        typer.echo(
            f"the bastion is not reachable ({exc.message}); the key is refused from its next start"
        )
        return
    if not answer.get("ok"):
        raise SshtunError(f"the bastion refused to reload: {answer.get('error')}")
    closed = answer.get("revoked", []).count(fingerprint)
    typer.echo(f"bastion reloaded: {closed} live connection(s) of that key closed")
