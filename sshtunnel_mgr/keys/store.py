"""Key files: ed25519 by default, OpenSSH format, private key 0600 written atomically."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from sshtunnel_mgr.core.access import fingerprint
from sshtunnel_mgr.core.errors import KeyFileError
from sshtunnel_mgr.core.policy import MIN_RSA_BITS
from sshtunnel_mgr.keys.secrets import load_passphrase
from sshtunnel_mgr.runtime.fsutil import write_atomic
from sshtunnel_mgr.sshcompat import keyerrors

CREDENTIAL_NAME = "agent_key"  # the agent unit's LoadCredential= name


def credential_source(config_path: Path) -> Path:
    """The file the agent unit hands the service as its ``agent_key`` credential:
    ``agent_key`` beside the config, where ``sshtun init`` writes it."""
    return config_path.parent / CREDENTIAL_NAME


def is_credential(key: Path) -> bool:
    """Whether ``key`` names the unit's copy of a credential: ``$CREDENTIALS_DIRECTORY/...``
    left as written (outside the service the variable is unset) or expanded (inside it)."""
    if "$CREDENTIALS_DIRECTORY" in str(key):
        return True
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return directory is not None and directory != "" and key.parent == Path(directory)


@dataclass(frozen=True)
class KeyInfo:
    path: Path
    public_line: str  # "ssh-ed25519 AAAA... comment"
    fingerprint: str
    algorithm: str


def public_line(key: asyncssh.SSHKey, comment: str | None = None) -> str:
    data = key.export_public_key("openssh").decode().strip()
    parts = data.split()
    line = " ".join(parts[:2])
    comment = comment if comment is not None else (key.get_comment() or "")
    return f"{line} {comment}".strip()


def key_fingerprint(key: asyncssh.SSHKey) -> str:
    return fingerprint(key.public_data)


def generate_key(
    path: Path,
    *,
    comment: str = "",
    algorithm: str = "ssh-ed25519",
    bits: int | None = None,
    passphrase: str | None = None,
    overwrite: bool = False,
) -> KeyInfo:
    """Write a new key pair: ``path`` (private, 0600) and ``path.pub`` (0644)."""
    path = Path(path)
    if not overwrite and (path.exists() or path.with_name(path.name + ".pub").exists()):
        raise KeyFileError(f"{path} already exists", hint="choose another path or remove it first")
    kwargs: dict[str, object] = {"comment": comment or None}
    if algorithm == "ssh-rsa":
        bits = bits or MIN_RSA_BITS
        if bits < MIN_RSA_BITS:
            raise KeyFileError(f"RSA keys must have at least {MIN_RSA_BITS} bits, not {bits}")
        kwargs["key_size"] = bits
    elif algorithm != "ssh-ed25519":
        raise KeyFileError(f"unsupported key type {algorithm!r}", hint="use ssh-ed25519 (default)")
    key = asyncssh.generate_private_key(algorithm, **kwargs)  # type: ignore[arg-type]
    private = key.export_private_key("openssh", passphrase=passphrase)
    try:
        write_atomic(path, private, 0o600)
        line = public_line(key, comment)
        write_atomic(path.with_name(path.name + ".pub"), (line + "\n").encode(), 0o644)
    except OSError as exc:
        raise KeyFileError(f"cannot write key {path}: {exc}") from None
    return KeyInfo(path, line, key_fingerprint(key), algorithm)


def check_private_key_mode(path: Path) -> None:
    """Refuse a private key that others may read, as OpenSSH does ("UNPROTECTED PRIVATE
    KEY FILE"): any group or other permission bit on the file fails."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # a missing or unreadable file gets its own, clearer error on open
    if mode & 0o077:
        raise KeyFileError(
            f"permissions {stat.S_IMODE(mode):04o} for private key {path} are too open: "
            "it must not be accessible by others",
            hint=f"chmod 600 {path}",
        )


def load_private_key(path: Path, passphrase: str | None = None) -> asyncssh.SSHKey:
    """Read a private key; an encrypted one is opened with its stored passphrase. A key
    readable by group or others is refused, as OpenSSH refuses it."""
    if "$CREDENTIALS_DIRECTORY" in str(path):  # expanded by config loading when it is set
        raise KeyFileError(
            f"key {path} is a systemd credential, and $CREDENTIALS_DIRECTORY is not set: "
            "this config is meant for the unit, which hands the key over (LoadCredential=)",
            hint="start it with `systemctl start sshtun-agent.service`, or set key to the key "
            "file's path to run it by hand",
        )
    check_private_key_mode(path)
    try:
        try:
            return asyncssh.read_private_key(str(path), passphrase)
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            if passphrase is not None or not keyerrors.needs_passphrase(path, exc):
                raise
        stored = load_passphrase(path)
        # A key rotation that stopped half-way through its swap: KEY is already the new
        # key, whose passphrase is still stored for KEY.next (keys/rotation.py swap).
        successor = load_passphrase(Path(str(path) + ".next"))
        if stored is None and successor is None:
            raise KeyFileError(
                f"key {path} is encrypted and no passphrase is stored for it",
                hint=f"store it with `sshtun keys passphrase {path}` (OS keyring, or "
                f"{path}.passphrase mode 0600 where there is none)",
            )
        try:
            return asyncssh.read_private_key(str(path), stored or successor)
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError):
            if stored is None or successor is None:
                raise
            return asyncssh.read_private_key(str(path), successor)
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {path} does not exist", hint=f"create one with: sshtun keys gen {path}"
        ) from None
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        raise KeyFileError(f"cannot load key {path}: {exc}") from None


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The bastion's host key. It is never created here: a typo in ``host_key`` must not
    silently give the bastion a new identity that every pinned agent then refuses."""
    if not Path(path).exists():
        raise KeyFileError(
            f"bastion host key {path} does not exist",
            hint=f"fix bastion.host_key if it is a typo; for a new bastion create the key "
            f"with `sshtun keys gen {path}` (or `sshtun init --role bastion`) and pin its "
            ".pub on every agent",
        )
    return load_private_key(path)
