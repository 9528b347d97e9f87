"""``sshtun keys …``: key generation (more of the key manager comes later)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sshtunnel_mgr.keys.store import generate_key

app = typer.Typer(help="Generate and inspect SSH keys.", no_args_is_help=True)


@app.command("gen")
def gen(
    path: Annotated[Path, typer.Argument(help="Where to write the private key (PATH.pub too).")],
    comment: Annotated[str, typer.Option(help="Comment stored with the public key.")] = "",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key.")] = False,
) -> None:
    """Write an ed25519 key pair (private key mode 0600) and print the public key."""
    info = generate_key(path, comment=comment or path.name, overwrite=force)
    typer.echo(f"wrote {info.path} (private, 0600) and {info.path}.pub")
    typer.echo(f"fingerprint: {info.fingerprint}")
    typer.echo(info.public_line)
