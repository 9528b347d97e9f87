"""Key passphrases: in the OS keyring, or (where there is none) a 0600 credentials file.

The keyring service name is ``sshtun``; the entry's user name is the key file's absolute
path. A headless server has no usable keyring (keyring's ``fail`` backend, or a
SecretService that raises without D-Bus); there the passphrase goes to
``<key>.passphrase`` (mode 0600, beside the key) and the caller is told so. keyrings.alt's
plaintext backends are never used: they are the default when installed, yet store
secrets merely base64-encoded. Under systemd, ``$CREDENTIALS_DIRECTORY/<key name>.passphrase``
(``LoadCredential=``) is read first. Passphrases never go in config files, arguments or
the environment of child processes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keyring.backend

from sshtunnel_mgr.core.errors import KeyFileError
from sshtunnel_mgr.runtime.fsutil import write_atomic

SERVICE = "sshtun"
SUFFIX = ".passphrase"


@dataclass(frozen=True)
class Stored:
    where: str  # "keyring" | "file"
    detail: str  # backend name or file path, and why


def _keyring() -> Any:
    """keyring, imported only when a passphrase is stored, looked up or forgotten: a bastion
    or agent whose keys are not encrypted never loads it (about 40 ms and 11 modules)."""
    import keyring
    import keyring.errors

    return keyring


def _errors() -> tuple[type[BaseException], ...]:
    return (_keyring().errors.KeyringError, RuntimeError)


def usable_keyring() -> tuple[keyring.backend.KeyringBackend | None, str]:
    """The keyring backend to trust, or None with the reason there is none."""
    try:
        backend = _keyring().get_keyring()
    except _errors() as exc:
        return None, f"keyring unavailable: {exc}"
    module = type(backend).__module__
    if module.startswith("keyring.backends.fail") or module.startswith("keyring.backends.null"):
        return None, "no OS keyring on this machine"
    if module.startswith("keyrings.alt"):
        return None, f"refusing keyrings.alt's {type(backend).__name__} (it stores plaintext)"
    if module.startswith("keyring.backends.chainer") and not getattr(backend, "backends", None):
        return None, "no OS keyring on this machine"
    return backend, type(backend).__name__


def _file_for(key_path: Path) -> Path:
    return Path(str(key_path) + SUFFIX)


def store_passphrase(key_path: Path, passphrase: str) -> Stored:
    user = str(Path(key_path).absolute())
    backend, why = usable_keyring()
    if backend is not None:
        try:
            backend.set_password(SERVICE, user, passphrase)
        except _errors() as exc:
            why = f"keyring {type(backend).__name__} failed: {exc}"
        else:
            return Stored("keyring", f"OS keyring ({why}), service {SERVICE!r}")
    path = _file_for(key_path)
    try:
        write_atomic(path, passphrase.encode(), 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot store the passphrase in {path}: {exc}") from None
    return Stored("file", f"{path} (mode 0600; {why})")


def load_passphrase(key_path: Path) -> str | None:
    """The stored passphrase for a key, or None if none is stored anywhere."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    candidates = [Path(creds) / (Path(key_path).name + SUFFIX)] if creds else []
    candidates.append(_file_for(key_path))
    for path in candidates:
        try:
            return path.read_text().rstrip("\n")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise KeyFileError(f"cannot read the passphrase file {path}: {exc}") from None
    backend, _ = usable_keyring()
    if backend is None:
        return None
    try:
        return backend.get_password(SERVICE, str(Path(key_path).absolute()))
    except _errors():
        return None


def forget_passphrase(key_path: Path) -> None:
    """Remove a retired key's passphrase from wherever it is stored."""
    _file_for(key_path).unlink(missing_ok=True)
    backend, _ = usable_keyring()
    if backend is not None:
        with contextlib.suppress(*_errors()):
            backend.delete_password(SERVICE, str(Path(key_path).absolute()))
