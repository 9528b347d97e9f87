"""The home box's key files during a rotation, and the durable record of where it stands.

The successor of ``KEY`` is ``KEY.next`` (and ``KEY.next.pub``), written beside it with the
same type and comment; if ``KEY`` is encrypted, so is the successor, with a new random
passphrase stored the same way (keyring or 0600 file).

``KEY.rotation`` (JSON, 0600, written atomically with fsync) records the old and new
fingerprints and the step reached, so that any process (a rerun, ``--undo``, ``status``,
``doctor``) can tell where an interrupted rotation stands:

``enrol``     the successor exists; bastions may have enrolled it beside the old key
``switched``  the agent serves with the new key; ``KEY`` is still the old key
``swapped``   ``KEY`` is the new key (durably); the old key is still enrolled until retired

The old key is retired on the bastions only after ``swap`` has made ``KEY`` the new key,
so at every instant ``KEY`` holds a key that every bastion accepts. The record is removed
when every bastion has retired the old key, or when an undo went back.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sshtunnel_mgr.core.access import fingerprint
from sshtunnel_mgr.core.errors import KeyFileError, RotationError
from sshtunnel_mgr.core.keyformat import public_from_private
from sshtunnel_mgr.keys.inventory import _is_encrypted as is_encrypted
from sshtunnel_mgr.keys.inventory import facts_from_public
from sshtunnel_mgr.keys.secrets import forget_passphrase, load_passphrase, store_passphrase
from sshtunnel_mgr.keys.store import credential_source, generate_key, is_credential
from sshtunnel_mgr.runtime.crashpoints import crashpoint
from sshtunnel_mgr.runtime.fsutil import write_atomic

SUFFIX = ".next"
STATE_SUFFIX = ".rotation"
STEPS = ("enrol", "switched", "swapped")


def next_key_path(key: Path) -> Path:
    return Path(str(key) + SUFFIX)


def state_path(key: Path) -> Path:
    return Path(str(key) + STATE_SUFFIX)


def rotated_key(key: Path, config_path: Path) -> Path:
    """The key file a rotation of the agent's ``key`` works on (the record sits beside it):
    ``key`` itself, or for the systemd unit's copy of a credential, which cannot be rotated
    in place (unset outside the service, read-only inside it), the ``LoadCredential=``
    source that ``sshtun keys rotate --key SOURCE`` rotates."""
    return credential_source(config_path.absolute()) if is_credential(key) else key


def _pub(path: Path) -> Path:
    return Path(str(path) + ".pub")


@dataclass(frozen=True)
class RotationState:
    old: str  # fingerprint of the key being replaced
    new: str  # fingerprint of its successor
    step: str  # one of STEPS
    old_expires: str = ""  # when the bastions stop accepting the old key (ISO 8601)

    def at(self, step: str) -> RotationState:
        return replace(self, step=step)

    def expiring(self, when: str) -> RotationState:
        """With the earliest expiry a bastion gave the old key."""
        earliest = min(x for x in (self.old_expires, when) if x) if when else self.old_expires
        return replace(self, old_expires=earliest)


def load_state(key: Path) -> RotationState | None:
    """The record of an unfinished rotation of ``key``, or None when there is none."""
    path = state_path(key)
    try:
        data = json.loads(path.read_text())
        state = RotationState(
            str(data["old"]), str(data["new"]), str(data["step"]), str(data.get("old_expires", ""))
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(
            f"cannot read the rotation record {path}: {exc}",
            hint="it says where an interrupted `sshtun keys rotate` stopped; if it is "
            "damaged, compare the fingerprints of the key files with the access file",
        ) from None
    if state.step not in STEPS:
        raise KeyFileError(f"the rotation record {path} names an unknown step {state.step!r}")
    return state


def save_state(key: Path, state: RotationState) -> None:
    try:
        write_atomic(state_path(key), (json.dumps(asdict(state)) + "\n").encode(), 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot write the rotation record {state_path(key)}: {exc}") from None


def clear_state(key: Path) -> None:
    state_path(key).unlink(missing_ok=True)
    _sync_dir(key.parent)


def file_fingerprint(path: Path) -> str:
    """The fingerprint of the private key file itself (its public half needs no
    passphrase), so a stale ``.pub`` can never mislead a resume."""
    try:
        _, blob = public_from_private(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the key {path}: {exc}") from None
    return fingerprint(blob)


def phase(state: RotationState | None, on_disk: str) -> str:
    """Where a (re)run starts, from the record and the fingerprint of ``KEY`` on disk:
    ``fresh`` (no rotation under way), ``before-swap`` (``KEY`` is still the old key:
    enrol, switch, swap) or ``after-swap`` (``KEY`` is the new key: retire the old one).
    A record that matches neither key is refused rather than guessed at."""
    if state is None:
        return "fresh"
    if on_disk == state.new:
        return "after-swap"
    if on_disk == state.old:
        if state.step == "swapped":
            raise RotationError(
                f"the rotation record says the key file holds {state.new}, but it holds the "
                f"old key {state.old}",
            )
        return "before-swap"
    raise RotationError(
        f"the key file ({on_disk}) is neither the old key ({state.old}) nor the new key "
        f"({state.new}) of the rotation recorded beside it",
        hint="was the key replaced by hand? check the access file, then remove the record",
    )


def finish_command(config: Path, key: Path | None) -> str:
    """The command that finishes (or resumes) a rotation, for status and doctor."""
    return f"sshtun keys rotate --config {config}" + (f" --key {key}" if key else "")


def describe(state: RotationState) -> str:
    expires = f" (the old key expires {state.old_expires})" if state.old_expires else ""
    return {
        "enrol": f"the new key {state.new} is being enrolled beside {state.old}{expires}",
        "switched": f"the agent moved to the new key {state.new}; the key file still "
        f"holds the old key {state.old}{expires}",
        "swapped": f"the key file holds the new key {state.new}; the old key "
        f"{state.old} is still enrolled until it is retired",
    }[state.step]


def prepare(key: Path, reuse: bool) -> tuple[Path, bool]:
    """The successor's path, generating it unless ``reuse`` (a recorded rotation) and it
    exists; (path, created). A successor without a record was never enrolled (the record
    is written before any enrolment), so it is replaced."""
    nxt = next_key_path(key)
    if reuse and nxt.exists():
        return nxt, False
    if reuse:
        raise RotationError(
            f"the rotation record {state_path(key)} names a new key, but {nxt} is gone",
            hint="undo it with `sshtun keys rotate --undo` and start again",
        )
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


def _encrypted(path: Path) -> bool:
    try:
        return is_encrypted(path.read_text())
    except OSError:
        return False


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap(key: Path) -> None:
    """Put the successor in the old key's place, durably; idempotent, so a rerun after a
    crash at any point completes it. The private key moves first (one atomic rename, the
    directory fsynced): from then on ``KEY`` is the new key, and until its passphrase has
    moved too, loading ``KEY`` falls back to the passphrase stored for ``KEY.next``
    (``store.load_private_key``). Then the ``.pub``, then the passphrase."""
    nxt = next_key_path(key)
    try:
        if nxt.exists():
            os.replace(nxt, key)
            _sync_dir(key.parent)
            crashpoint("cli:swap-renamed")
        if _pub(nxt).exists():
            os.replace(_pub(nxt), _pub(key))
            _sync_dir(key.parent)
    except OSError as exc:
        raise KeyFileError(f"cannot move {nxt} to {key}: {exc}") from None
    if _encrypted(key):
        secret = load_passphrase(nxt)
        if secret is not None:  # None: it moved already (a rerun)
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
    with contextlib.suppress(OSError):
        _sync_dir(key.parent)
