"""Weak-algorithm rules, the way ``ssh-audit`` rates algorithms (pure).

``ssh-audit`` fails SHA-1, MD5, 3DES, RC4, Blowfish/CAST/DES, 1024-bit groups and NIST
curves; it warns about CBC mode, encrypt-and-MAC (non-etm) MACs, 64-bit tags and 2048-bit
groups. sshtun follows it with one deliberate difference: NIST P-curves (``ecdh-sha2-nistp*``,
``ecdsa-sha2-nistp*``) are a warning here, not a failure, because they are OpenSSH's defaults
and nothing practical is known against them; the fix still says to drop them. Its
"not post-quantum" warning is left out: Debian 12's OpenSSH has no ML-KEM, so curve25519
must stay. ``tests/unit/test_doctor_algorithms.py`` compares this table with ssh-audit's own
database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from sshtunnel_mgr.core import policy
from sshtunnel_mgr.doctor.findings import Finding, Level, fail, ok, warn

Category = Literal["kex", "cipher", "mac", "key"]

NIST = "NIST P-curves; ssh-audit fails them as possibly backdoored"
SHA1 = "SHA-1 is broken"

# Exact names first; then the patterns below, in order.
_EXACT: dict[Category, dict[str, tuple[Level, str]]] = {
    "kex": {
        "curve25519-sha256": (Level.OK, ""),
        "curve25519-sha256@libssh.org": (Level.OK, ""),
        "sntrup761x25519-sha512": (Level.OK, ""),
        "sntrup761x25519-sha512@openssh.com": (Level.OK, ""),
        "mlkem768x25519-sha256": (Level.OK, ""),
        "diffie-hellman-group16-sha512": (Level.OK, ""),
        "diffie-hellman-group18-sha512": (Level.OK, ""),
        "diffie-hellman-group-exchange-sha256": (Level.OK, ""),
        "diffie-hellman-group14-sha256": (
            Level.WARN,
            "2048-bit modulus gives only 112 bits of strength",
        ),
        "diffie-hellman-group1-sha1": (Level.FAIL, "1024-bit modulus and SHA-1 (Logjam)"),
        "diffie-hellman-group14-sha1": (Level.FAIL, SHA1),
        "diffie-hellman-group-exchange-sha1": (Level.FAIL, SHA1),
    },
    "cipher": {
        "chacha20-poly1305@openssh.com": (Level.OK, ""),
        "aes128-gcm@openssh.com": (Level.OK, ""),
        "aes256-gcm@openssh.com": (Level.OK, ""),
        "aes128-ctr": (Level.OK, ""),
        "aes192-ctr": (Level.OK, ""),
        "aes256-ctr": (Level.OK, ""),
        "none": (Level.FAIL, "no encryption"),
    },
    "mac": {
        "hmac-sha2-256-etm@openssh.com": (Level.OK, ""),
        "hmac-sha2-512-etm@openssh.com": (Level.OK, ""),
        "umac-128-etm@openssh.com": (Level.OK, ""),
        "none": (Level.FAIL, "no integrity"),
    },
    "key": {
        "ssh-ed25519": (Level.OK, ""),
        "sk-ssh-ed25519@openssh.com": (Level.OK, ""),
        "rsa-sha2-256": (Level.OK, ""),
        "rsa-sha2-512": (Level.OK, ""),
        "ssh-rsa": (Level.FAIL, "RSA with SHA-1 signatures"),
        "ssh-dss": (Level.FAIL, "DSA: 1024-bit keys and SHA-1"),
    },
}
_PATTERNS: dict[Category, tuple[tuple[str, Level, str], ...]] = {
    "kex": (
        (r".*sha1.*", Level.FAIL, SHA1),
        (r".*group1-.*", Level.FAIL, "1024-bit modulus"),
        (r"(ecdh-sha2-|gss-)nistp\d+.*", Level.WARN, NIST),
        (r"gss-group14-sha256-.*", Level.WARN, "2048-bit modulus gives only 112 bits of strength"),
        (r"(kex-strict|ext-info)-.*", Level.OK, ""),  # protocol markers, not algorithms
    ),
    "cipher": (
        (r"3des.*|des-.*|des", Level.FAIL, "DES/3DES is broken"),
        (r"arcfour.*", Level.FAIL, "RC4 is broken"),
        (r"(blowfish|cast128|idea|seed|serpent.*)-.*", Level.FAIL, "obsolete cipher"),
        (r"rijndael.*", Level.FAIL, "non-standard Rijndael"),
        (r".*-cbc", Level.WARN, "CBC mode"),
    ),
    "mac": (
        (r".*md5.*", Level.FAIL, "MD5 is broken"),
        (r".*sha1.*", Level.FAIL, SHA1),
        (r".*ripemd.*", Level.FAIL, "RIPEMD is deprecated"),
        (r"umac-64.*", Level.WARN, "64-bit tag"),
        (r".*-96.*", Level.WARN, "96-bit tag"),
        (r"(hmac|umac)-(?!.*-etm@openssh\.com$).*", Level.WARN, "encrypt-and-MAC, not -etm"),
    ),
    "key": (
        (r"(sk-)?ecdsa-sha2-nistp\d+(@openssh\.com)?", Level.WARN, NIST),
        (r"ssh-dss.*|x509v3-ssh-dss", Level.FAIL, "DSA: 1024-bit keys and SHA-1"),
        (r"x509v3-(ssh-rsa|sign-rsa)", Level.FAIL, "RSA with SHA-1 signatures"),
    ),
}
_CERT_SUFFIX = "-cert-v01@openssh.com"


def rate(category: Category, algorithm: str) -> tuple[Level, str]:
    """How one algorithm rates: (ok|warn|fail, why). Unknown algorithms are a warning."""
    name = algorithm.strip().lower()
    if category == "key" and name.endswith(_CERT_SUFFIX):
        base = name.removesuffix(_CERT_SUFFIX)
        name = base if base.startswith(("ssh-", "rsa-")) else base + "@openssh.com"
    exact = _EXACT[category].get(name)
    if exact is not None:
        return exact
    for pattern, level, reason in _PATTERNS[category]:
        if re.fullmatch(pattern, name):
            return level, reason
    return Level.WARN, "not known to sshtun's rules (ssh-audit fails unknown algorithms)"


@dataclass(frozen=True)
class Rated:
    algorithm: str
    level: Level
    reason: str


def rate_all(category: Category, algorithms: Iterable[str]) -> list[Rated]:
    return [Rated(a, *rate(category, a)) for a in algorithms if a.strip()]


_RECOMMENDED: dict[Category, Sequence[str]] = {
    "kex": policy.KEX_ALGS,
    "cipher": policy.ENCRYPTION_ALGS,
    "mac": policy.MAC_ALGS,
    "key": policy.SIGNATURE_ALGS,
}


def check_algorithms(
    check: str, category: Category, algorithms: Sequence[str], what: str, directive: str
) -> Finding:
    """One finding for a whole list: the worst level, naming every weak algorithm.

    ``what`` names the list in the message (``sshd Ciphers``); ``directive`` is the line to
    write in the fix (``Ciphers``), followed by the good part of the current list.
    """
    rated = rate_all(category, algorithms)
    bad = [r for r in rated if r.level is not Level.OK]
    if not bad:
        return ok(check, f"{what}: no weak algorithms ({len(rated)} offered)")
    keep = [r.algorithm for r in rated if r.level is Level.OK]
    if not keep:
        keep = list(_RECOMMENDED[category])
    fix = f"{directive} {','.join(keep)}"
    worst_level = max((r.level for r in bad), key=lambda lv: lv.rank)
    by_reason: dict[str, list[str]] = {}
    for r in sorted(bad, key=lambda r: -r.level.rank):
        by_reason.setdefault(r.reason, []).append(r.algorithm)
    weak = "; ".join(f"{', '.join(algs)} ({reason})" for reason, algs in by_reason.items())
    message = f"{what} offers weak algorithms: {weak}"
    return (fail if worst_level is Level.FAIL else warn)(check, message, fix)


def check_policy(
    kex: Sequence[str] = policy.KEX_ALGS,
    ciphers: Sequence[str] = policy.ENCRYPTION_ALGS,
    macs: Sequence[str] = policy.MAC_ALGS,
    host_keys: Sequence[str] = policy.HOST_KEY_ALGS,
    signatures: Sequence[str] = policy.SIGNATURE_ALGS,
    compression: Sequence[str] = policy.COMPRESSION_ALGS,
) -> list[Finding]:
    """sshtun's own algorithm policy (``policy.py``; both the bastion and the agent use it)."""
    where = "edit sshtunnel_mgr/core/policy.py:"
    findings = [
        check_algorithms("policy.kex", "kex", kex, "policy KEX_ALGS", f"{where} KEX_ALGS ="),
        check_algorithms(
            "policy.ciphers",
            "cipher",
            ciphers,
            "policy ENCRYPTION_ALGS",
            f"{where} ENCRYPTION_ALGS =",
        ),
        check_algorithms("policy.macs", "mac", macs, "policy MAC_ALGS", f"{where} MAC_ALGS ="),
        check_algorithms(
            "policy.host-key-algs",
            "key",
            host_keys,
            "policy HOST_KEY_ALGS",
            f"{where} HOST_KEY_ALGS =",
        ),
        check_algorithms(
            "policy.signature-algs",
            "key",
            signatures,
            "policy SIGNATURE_ALGS",
            f"{where} SIGNATURE_ALGS =",
        ),
    ]
    extra = [c for c in compression if c != "none"]
    if extra:
        findings.append(
            warn(
                "policy.compression",
                f"policy COMPRESSION_ALGS offers {','.join(extra)} (compression before "
                "encryption can leak what is sent)",
                f"{where} COMPRESSION_ALGS = ('none',)",
            )
        )
    else:
        findings.append(ok("policy.compression", "policy COMPRESSION_ALGS: no compression"))
    return findings
