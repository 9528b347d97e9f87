"""The home box's key files during a rotation.

The successor of ``KEY`` is ``KEY.next`` (and ``KEY.next.pub``), written beside it with the
same type and comment; if ``KEY`` is encrypted, so is the successor, with a new random
passphrase stored the same way (keyring or 0600 file). Only when every bastion has moved to
the new key does ``finalize`` rename it over the old one (atomic ``rename``: at every
instant ``KEY`` is a complete key that some bastion accepts) and forget the old passphrase.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sshtunnel_mgr.errors import KeyFileError
from sshtunnel_mgr.keys.inventory import facts_from_public
from sshtunnel_mgr.keys.secrets import forget_passphrase, load_passphrase, store_passphrase
from sshtunnel_mgr.keys.store import generate_key

SUFFIX = ".next"


def next_key_path(key: Path) -> Path:
    return Path(str(key) + SUFFIX)


def _pub(path: Path) -> Path:
    return Path(str(path) + ".pub")


def prepare(key: Path) -> tuple[Path, bool]:
    """The successor's path, generating it if it does not exist yet; (path, created)."""
    nxt = next_key_path(key)
    if nxt.exists() and _pub(nxt).exists():
        return nxt, False
    facts = facts_from_public(key)
    secret = None
    if facts.encrypted:
        secret = secrets.token_urlsafe(32)
    generate_key(
        nxt,
        comment=facts.comment or key.name,
        algorithm=facts.algorithm if facts.algorithm == "ssh-rsa" else "ssh-ed25519",
        bits=max(facts.bits, 3072) if facts.algorithm == "ssh-rsa" else None,
        passphrase=secret,
        overwrite=True,
    )
    if secret is not None:
        store_passphrase(nxt, secret)
    return nxt, True


def comment_of(key: Path) -> str:
    """The comment of ``key.pub`` (kept on the enrolled access line), or the file name."""
    try:
        parts = _pub(key).read_text().split(None, 2)
    except OSError:
        return key.name
    return parts[2].strip() if len(parts) > 2 else key.name


def finalize(key: Path) -> None:
    """Put the successor in the old key's place (private key first: a crash between the
    two renames leaves a working private key; the .pub is re-derivable)."""
    nxt = next_key_path(key)
    if not nxt.exists():
        raise KeyFileError(f"{nxt} does not exist; nothing to finish")
    secret = load_passphrase(nxt)
    try:
        os.replace(nxt, key)
        if _pub(nxt).exists():
            os.replace(_pub(nxt), _pub(key))
    except OSError as exc:
        raise KeyFileError(f"cannot move {nxt} to {key}: {exc}") from None
    if secret is not None:
        store_passphrase(key, secret)  # replaces the old key's passphrase
    else:
        forget_passphrase(key)
    forget_passphrase(nxt)


def discard(key: Path) -> None:
    """Remove an abandoned successor (``keys rotate --undo``)."""
    nxt = next_key_path(key)
    forget_passphrase(nxt)
    for path in (nxt, _pub(nxt)):
        path.unlink(missing_ok=True)
