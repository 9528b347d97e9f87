"""What keys there are: facts read from public key files and the bastion's access file."""

from __future__ import annotations

import base64
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from sshtunnel_mgr.core import policy
from sshtunnel_mgr.core.access import AccessEntry, decode_key, fingerprint
from sshtunnel_mgr.core.errors import KeyFileError


@dataclass(frozen=True)
class KeyFacts:
    path: Path | None
    algorithm: str
    bits: int
    fingerprint: str
    comment: str
    age_days: float | None
    encrypted: bool | None

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path) if self.path else None,
            "type": self.algorithm,
            "bits": self.bits,
            "fingerprint": self.fingerprint,
            "comment": self.comment,
            "age_days": None if self.age_days is None else round(self.age_days, 1),
            "encrypted": self.encrypted,
        }


def key_bits(key_type: str, blob: bytes) -> int:
    """The strength figure `ssh-keygen -l` prints: modulus bits, curve size, 256 for ed25519."""
    return policy.key_bits(key_type, blob)


def weakness(key_type: str, blob: bytes) -> str:
    """Why a key is too weak to enrol, or "" when it is fine (the bastion's login policy:
    ed25519; RSA >= 3072)."""
    return policy.key_refusal(key_type, blob)


def facts_from_public(path: Path, now: float | None = None) -> KeyFacts:
    """Facts about the key pair at ``path`` (reads PATH.pub, or PATH if it is the .pub)."""
    pub = path if path.suffix == ".pub" else path.with_name(path.name + ".pub")
    private = pub.with_suffix("")
    try:
        parts = pub.read_text().split(None, 2)
        blob = decode_key(parts[0], parts[1])
    except (OSError, IndexError, ValueError) as exc:
        raise KeyFileError(f"cannot read public key {pub}: {exc}") from None
    encrypted = None
    if private.exists():
        try:
            head = private.read_text()
        except OSError:
            head = ""
        encrypted = _is_encrypted(head) if head else None
        mtime = private.stat().st_mtime
    else:
        mtime = pub.stat().st_mtime
    age = ((now or time.time()) - mtime) / 86400
    return KeyFacts(
        private if private.exists() else pub,
        parts[0],
        key_bits(parts[0], blob),
        fingerprint(blob),
        parts[2].strip() if len(parts) > 2 else "",
        age,
        encrypted,
    )


def _is_encrypted(openssh_text: str) -> bool:
    """An OpenSSH private key names its cipher right after the magic: ``none`` or not."""
    lines = [ln for ln in openssh_text.splitlines() if ln and not ln.startswith("-----")]
    try:
        raw = base64.b64decode("".join(lines))
    except ValueError:
        return False
    magic = b"openssh-key-v1\0"
    if not raw.startswith(magic):
        return "ENCRYPTED" in openssh_text
    (length,) = struct.unpack(">I", raw[len(magic) : len(magic) + 4])
    cipher = raw[len(magic) + 4 : len(magic) + 4 + length]
    return cipher != b"none"


def facts_from_entry(entry: AccessEntry) -> KeyFacts:
    return KeyFacts(
        None,
        entry.key_type,
        key_bits(entry.key_type, entry.key_blob),
        entry.fingerprint,
        entry.comment,
        None,
        None,
    )


def find_keys(directory: Path) -> list[Path]:
    """Key pairs in a directory: every NAME.pub (with or without its private half)."""
    return sorted(p for p in directory.glob("*.pub") if p.is_file())
