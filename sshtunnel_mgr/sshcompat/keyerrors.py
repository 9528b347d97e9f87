"""Tell "this key file is encrypted and needs a passphrase" from other load errors (shim
``keyerrors``).

asyncssh raises the same public ``KeyImportError`` for an encrypted key read without a
passphrase and for a key it cannot read at all; only its message differs ("Passphrase must
be specified to import encrypted private keys"), and it has no dedicated type or flag.
Rather than match that text, the question is answered from the key file itself
(``encrypted``), for exactly the three formats asyncssh 2.24 says it for: the cipher name
of an OpenSSH ``openssh-key-v1`` key, the ``Proc-Type: 4,ENCRYPTED`` header of a PEM key
(PKCS#1, SEC1), PKCS#8's ``ENCRYPTED PRIVATE KEY`` armour. No asyncssh internal is used.

What is relied on is public behaviour: an encrypted key imported without a passphrase
raises ``KeyImportError`` (or ``KeyEncryptionError``), which ``check`` makes asyncssh show
once (a throwaway key exported encrypted, imported without a passphrase). If it did not,
``sshtun`` would report such a key as unreadable instead of trying its stored passphrase.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from pathlib import Path

import asyncssh

from sshtunnel_mgr.sshcompat import Shim

_OPENSSH = re.compile(
    rb"-----BEGIN OPENSSH PRIVATE KEY-----\s*(.*?)\s*-----END OPENSSH PRIVATE KEY-----", re.S
)
_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----")


def encrypted(data: bytes) -> bool | None:
    """Whether a private key file's contents are encrypted; None when the format is not
    one read here (pure)."""
    match = _OPENSSH.search(data)
    if match is not None:
        try:
            blob = base64.b64decode(b"".join(match[1].split()), validate=True)
        except (binascii.Error, ValueError):
            return None
        if not blob.startswith(_OPENSSH_MAGIC) or len(blob) < len(_OPENSSH_MAGIC) + 4:
            return None
        start = len(_OPENSSH_MAGIC) + 4
        (length,) = struct.unpack(">I", blob[start - 4 : start])
        cipher = blob[start : start + length]
        return None if len(cipher) != length else cipher != b"none"
    match = _PEM.search(data)
    if match is not None:
        if match[1] == b"ENCRYPTED ":  # PKCS#8
            return True
        return b"Proc-Type: 4,ENCRYPTED" in data  # PKCS#1 / SEC1 with RFC 1421 headers
    return None


def needs_passphrase(path: Path, exc: Exception) -> bool:
    """Whether ``exc``, raised reading ``path`` without a passphrase, means the key is
    encrypted (and a stored passphrase may open it)."""
    if not isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
        return False
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    return bool(encrypted(data))


def check() -> str:
    """Make asyncssh show what it raises for an encrypted key read without a passphrase,
    and that the file check sees that key as encrypted."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    data = key.export_private_key("pkcs8-pem", passphrase="sshcompat check")
    if encrypted(data) is not True:
        return "an encrypted key exported by asyncssh is not recognised as encrypted"
    try:
        asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError):
        return ""
    return "asyncssh read an encrypted key without a passphrase"


SHIM = Shim(
    "keyerrors",
    internals="none: public KeyImportError/KeyEncryptionError and the key file's own format",
    fallback="an encrypted key is reported as unreadable; its stored passphrase is not tried",
    check=check,
)
