"""Key checks: the agent key's strength and age, and the bastion host key pinned in the
agent's config (pure: key facts and file text in, findings out)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from sshtunnel_mgr.core import policy
from sshtunnel_mgr.core.access import KEY_TYPES, decode_key, fingerprint
from sshtunnel_mgr.doctor.findings import Finding, Level, fail, ok, warn

MAX_KEY_AGE_DAYS = 365


@dataclass(frozen=True)
class KeyFileFacts:
    """What the agent's key file says about itself; ``error`` when it could not be read."""

    path: str
    key_type: str = ""
    bits: int = 0
    age_days: float | None = None
    error: str = ""


def check_key_strength(key: KeyFileFacts, check: str = "agent.key-strength") -> Finding:
    """ed25519 ok; RSA >= MIN_RSA_BITS ok; anything else fails (the bastion refuses it)."""
    if key.error:
        return fail(check, f"agent key {key.path}: {key.error}", "sshtun keys gen PATH")
    what = f"agent key {key.path} is {key.key_type}"
    fix = "replace it with an ed25519 key: sshtun keys rotate --config AGENT.toml"
    if key.key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        return ok(check, what)
    if key.key_type == "ssh-rsa":
        if key.bits >= policy.MIN_RSA_BITS:
            return ok(check, f"{what} ({key.bits} bits)")
        return fail(check, f"{what} of {key.bits} bits (want >= {policy.MIN_RSA_BITS})", fix)
    return fail(check, f"{what}: not ed25519 or RSA >= {policy.MIN_RSA_BITS}", fix)


def check_key_age(
    key: KeyFileFacts, max_days: float = MAX_KEY_AGE_DAYS, check: str = "agent.key-age"
) -> Finding | None:
    """Older than ``max_days`` (by the file's mtime) is a warning: rotate it."""
    if key.error or key.age_days is None:
        return None
    days = int(key.age_days)
    if key.age_days <= max_days:
        return ok(check, f"agent key {key.path} is {days} days old")
    return warn(
        check,
        f"agent key {key.path} is {days} days old (more than {int(max_days)})",
        "rotate it with no downtime: sshtun keys rotate --config AGENT.toml",
    )


# known_hosts --------------------------------------------------------------------------
@dataclass(frozen=True)
class KnownHost:
    line: int
    marker: str  # "", "@revoked" or "@cert-authority"
    hosts: str  # the comma-separated patterns, or a |1|salt|hash entry
    key_type: str
    key_blob: bytes


def parse_known_hosts(text: str) -> tuple[list[KnownHost], list[int]]:
    """Entries, and the numbers of lines that could not be parsed."""
    entries: list[KnownHost] = []
    bad: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = ""
        if fields[0].startswith("@"):
            marker, fields = fields[0], fields[1:]
        if len(fields) < 3 or marker not in ("", "@revoked", "@cert-authority"):
            bad.append(number)
            continue
        try:
            blob = decode_key(fields[1], fields[2])
        except ValueError:
            bad.append(number)
            continue
        entries.append(KnownHost(number, marker, fields[0], fields[1], blob))
    return entries, bad


def _wildcard(pattern: str) -> re.Pattern[str]:
    """OpenSSH host patterns know only ``*`` and ``?`` (``[`` is literal: ``[host]:port``)."""
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."))


def host_matches(hosts: str, host: str, port: int) -> bool:
    """OpenSSH's rules: ``host`` for port 22 else ``[host]:port``; hashed ``|1|salt|hash``
    entries; ``*``/``?`` wildcards and ``!`` negation in a comma-separated list."""
    name = host.lower() if port == 22 else f"[{host.lower()}]:{port}"
    if hosts.startswith("|1|"):
        try:
            _, _, salt_b64, digest_b64 = hosts.split("|")
            salt = base64.b64decode(salt_b64)
            digest = base64.b64decode(digest_b64)
        except (ValueError, binascii.Error):
            return False
        mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(mac, digest)
    matched = False
    for pattern in hosts.lower().split(","):
        negate = pattern.startswith("!")
        if _wildcard(pattern.removeprefix("!")).fullmatch(name):
            if negate:
                return False
            matched = True
    return matched


def check_pinned_key(address: str, key_type: str, key_blob: bytes, how: str) -> Finding:
    what = f"bastion {address}: host key {fingerprint(key_blob)} ({key_type}) pinned {how}"
    if key_type in policy.HOST_KEY_ALGS:
        return ok("agent.bastion-pinned", what)
    return fail(
        "agent.bastion-pinned",
        f"{what}, but the agent accepts only {', '.join(policy.HOST_KEY_ALGS)} host keys",
        "pin the bastion's ed25519 host key (its HOST_KEY.pub line)",
    )


def check_pin_inline(address: str, host_key: str) -> Finding:
    """``host_key = "ssh-ed25519 AAAA..."`` in the agent's config (already validated)."""
    parts = host_key.split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        return fail(
            "agent.bastion-pinned",
            f"bastion {address}: host_key is not a public key line",
            "paste the bastion's HOST_KEY.pub line",
        )
    try:
        blob = decode_key(parts[0], parts[1])
    except ValueError as exc:
        return fail(
            "agent.bastion-pinned",
            f"bastion {address}: host_key: {exc}",
            "paste the bastion's HOST_KEY.pub line",
        )
    return check_pinned_key(address, parts[0], blob, "in the config")


def check_pin_known_hosts(
    address: str, host: str, port: int, path: str, text: str | None, error: str = ""
) -> list[Finding]:
    """``known_hosts = FILE`` in the agent's config: the file must exist, parse, and hold an
    entry for the bastion (``[host]:port`` unless the port is 22) of a type the agent takes."""
    check = "agent.bastion-pinned"
    fix = f"add the bastion's key to {path}: " + (
        f"{host} ssh-ed25519 AAAA..." if port == 22 else f"[{host}]:{port} ssh-ed25519 AAAA..."
    )
    if text is None:
        return [fail(check, f"bastion {address}: known_hosts {path}: {error}", fix)]
    entries, bad = parse_known_hosts(text)
    findings: list[Finding] = []
    if bad:
        lines = ",".join(str(n) for n in bad)
        findings.append(
            warn(
                "agent.known-hosts-syntax",
                f"known_hosts {path}: line(s) {lines} could not be parsed",
                "fix or remove those lines",
            )
        )
    mine = [e for e in entries if e.marker == "" and host_matches(e.hosts, host, port)]
    revoked = {
        e.key_blob for e in entries if e.marker == "@revoked" and host_matches(e.hosts, host, port)
    }
    usable = [e for e in mine if e.key_blob not in revoked]
    if not usable:
        findings.append(fail(check, f"bastion {address}: no key for it in known_hosts {path}", fix))
        return findings
    rated = [check_pinned_key(address, e.key_type, e.key_blob, f"in {path}") for e in usable]
    good = [f for f in rated if f.level is Level.OK]
    findings.extend(good or rated)
    return findings


def check_rotation(described: str | None, finish: str, can_undo: bool) -> Finding:
    """A key rotation left half-finished (its record beside the agent key, ``described``
    by keys/rotation.py): the key file works, but the old key stays enrolled (with an
    expiry) until the rotation is finished."""
    check = "agent.key-rotation"
    if described is None:
        return ok(check, "no key rotation is under way")
    fix = f"finish it: {finish}" + (f" (or go back: {finish} --undo)" if can_undo else "")
    return warn(check, f"a key rotation is half-finished: {described}", fix)
