"""Algorithm lists both sides use: no SHA-1, no NIST curves, no compression, ed25519 host keys.

Clean under ``ssh-audit``; curve25519 is kept because Debian 12's OpenSSH has no ML-KEM.
"""

from __future__ import annotations

KEX_ALGS = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
)
# aes-gcm first: in asyncssh it costs well under half of chacha20-poly1305 per byte.
# A stock OpenSSH client still picks its own favourite among these.
ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
MAC_ALGS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "umac-128-etm@openssh.com",
)
COMPRESSION_ALGS = ("none",)
HOST_KEY_ALGS = ("ssh-ed25519",)
# Signatures accepted from users' keys.
SIGNATURE_ALGS = (
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
MIN_RSA_BITS = 3072
# For reading a home service's own host key (to pin the inner hop): ed25519 by preference,
# an RSA key (SHA-2 signatures) otherwise.
PROBE_HOST_KEY_ALGS = ("ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256")


def server_options() -> dict[str, list[str]]:
    """Keyword arguments for asyncssh's server options."""
    return {
        "kex_algs": list(KEX_ALGS),
        "encryption_algs": list(ENCRYPTION_ALGS),
        "mac_algs": list(MAC_ALGS),
        "compression_algs": list(COMPRESSION_ALGS),
        "signature_algs": list(SIGNATURE_ALGS),
    }


def client_options() -> dict[str, list[str]]:
    """Keyword arguments for asyncssh's client options (the agent)."""
    return {**server_options(), "server_host_key_algs": list(HOST_KEY_ALGS)}
