"""Algorithm lists both sides use: no SHA-1, no NIST curves, no compression, ed25519 host keys.

Clean under ``ssh-audit``; curve25519 is kept because Debian 12's OpenSSH has no ML-KEM.
"""

from __future__ import annotations

# No finite-field Diffie-Hellman: a client that sends a random value and does no work makes
# a group18 exchange cost the bastion ~30 ms of CPU in its one thread (x25519: ~0.1 ms), so
# a flood of half key exchanges could starve every established tunnel. (asyncssh 2.24 has
# no sntrup761x25519.) In the client's (the agent's) order of preference:
KEX_ALGS = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)
# What the bastion offers, curve25519 first: Dropbear sends a guessed first key-exchange
# packet for its own first choice (curve25519-sha256), which is then right and used (no
# resend). Any order works (sshcompat/kexguess.py judges a guess by RFC 4253 §7;
# stock asyncssh cut Dropbear off when this first entry was not its guess). The client's
# order still decides: an OpenSSH that has ML-KEM gets it.
SERVER_KEX_ALGS = (
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "mlkem768x25519-sha256",
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
        "kex_algs": list(SERVER_KEX_ALGS),
        "encryption_algs": list(ENCRYPTION_ALGS),
        "mac_algs": list(MAC_ALGS),
        "compression_algs": list(COMPRESSION_ALGS),
        "signature_algs": list(SIGNATURE_ALGS),
    }


def client_options() -> dict[str, list[str]]:
    """Keyword arguments for asyncssh's client options (the agent)."""
    return {
        **server_options(),
        "kex_algs": list(KEX_ALGS),
        "server_host_key_algs": list(HOST_KEY_ALGS),
    }


# Every sshtun client login is by key only: no ~/.ssh/config, no password, no
# keyboard-interactive, GSSAPI or host-based auth. One place says so.
KEY_ONLY_LOGIN: dict[str, object] = {
    "config": None,
    "password": None,
    "kbdint_auth": False,
    "gss_auth": False,
    "host_based_auth": False,
    "preferred_auth": "publickey",
}


def key_only_login() -> dict[str, object]:
    """Keyword arguments for ``asyncssh.connect``: public-key login only, with the
    algorithm policy (``client_options``)."""
    return {**KEY_ONLY_LOGIN, **client_options()}


# Users' keys: what the bastion accepts at login, the access-file loader warns about and
# doctor fails. Pure: a key type and blob (or a signature algorithm) in, a reason out.
USER_KEY_TYPES = ("ssh-ed25519", "sk-ssh-ed25519@openssh.com")


def key_bits(key_type: str, blob: bytes) -> int:
    """The strength figure ``ssh-keygen -l`` prints: modulus bits, curve size, 256 for
    ed25519 (0 for an RSA blob too short to hold a modulus)."""
    if key_type == "ssh-rsa":
        offset = 0
        fields = []
        for _ in range(3):  # type, e, n
            length = int.from_bytes(blob[offset : offset + 4], "big")
            fields.append(blob[offset + 4 : offset + 4 + length])
            offset += 4 + length
        return int.from_bytes(fields[2], "big").bit_length()
    for size in ("256", "384", "521"):
        if key_type.endswith(f"nistp{size}") or f"nistp{size}@" in key_type:
            return int(size)
    return 256  # ed25519 and sk-ed25519


def key_refusal(key_type: str, blob: bytes) -> str:
    """Why a user key is refused, or ``""``: ed25519 (also on a security key), or RSA of
    at least ``MIN_RSA_BITS`` bits (signing with SHA-2, see ``signature_refusal``)."""
    if key_type in USER_KEY_TYPES:
        return ""
    if key_type == "ssh-rsa":
        bits = key_bits(key_type, blob)
        if bits >= MIN_RSA_BITS:
            return ""
        return f"RSA key of {bits} bits (at least {MIN_RSA_BITS} are required)"
    return f"{key_type} keys are not accepted; use ssh-ed25519 (or RSA >= {MIN_RSA_BITS} bits)"


def signature_refusal(algorithm: str) -> str:
    """Why a user's signature algorithm is refused, or ``""`` (``ssh-rsa`` is SHA-1)."""
    if algorithm in SIGNATURE_ALGS:
        return ""
    if algorithm == "ssh-rsa":
        return "ssh-rsa signatures (SHA-1) are not accepted; sign with rsa-sha2-256 or -512"
    return f"signature algorithm {algorithm!r} is not accepted ({', '.join(SIGNATURE_ALGS)})"
