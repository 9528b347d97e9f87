"""The OpenSSH private key format (``openssh-key-v1``), read without the passphrase: its
public half is stored unencrypted. Pure: file text in, key type and blob out."""

from __future__ import annotations

import base64
import binascii
import struct

_MAGIC = b"openssh-key-v1\0"


def public_from_private(text: str) -> tuple[str, bytes]:
    """The public key inside an OpenSSH private key file, without the passphrase: the
    ``openssh-key-v1`` format keeps the public half unencrypted. Raises ValueError."""
    body = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("-----")]
    if "BEGIN OPENSSH PRIVATE KEY" not in text:
        raise ValueError("not an OpenSSH-format private key (use its .pub file)")
    try:
        raw = base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key file is not valid base64") from None
    if not raw.startswith(_MAGIC):
        raise ValueError("not an openssh-key-v1 private key")
    offset = len(_MAGIC)
    try:
        for _ in range(3):  # cipher name, kdf name, kdf options
            (length,) = struct.unpack(">I", raw[offset : offset + 4])
            offset += 4 + length
        (count,) = struct.unpack(">I", raw[offset : offset + 4])
        offset += 4
        (length,) = struct.unpack(">I", raw[offset : offset + 4])
        blob = raw[offset + 4 : offset + 4 + length]
        (tlen,) = struct.unpack(">I", blob[:4])
    except struct.error:
        raise ValueError("the key file is truncated") from None
    if count < 1 or len(blob) != length:
        raise ValueError("the key file is truncated")
    return blob[4 : 4 + tlen].decode("ascii", "replace"), blob
