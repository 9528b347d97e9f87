"""Key checks: the agent key's strength and age, and the bastion host key pinned in the
agent's config (pure: key facts and file text in, findings out)."""

from __future__ import annotations

from dataclasses import dataclass

from sshtunnel_mgr.core import policy
from sshtunnel_mgr.core.access import KEY_TYPES, decode_key, fingerprint
from sshtunnel_mgr.core.knownhosts import KnownHostsLine, host_pattern, parse_known_hosts
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
    fix = f"add the bastion's key to {path}: {host_pattern(host, port)} ssh-ed25519 AAAA..."
    if text is None:
        return [fail(check, f"bastion {address}: known_hosts {path}: {error}", fix)]
    entries: list[tuple[KnownHostsLine, bytes]] = []
    bad: list[int] = []
    for line in parse_known_hosts(text):
        if line.is_comment:
            continue
        try:
            if line.error:
                raise ValueError(line.error)
            entries.append((line, decode_key(line.key_type, line.key_base64)))
        except ValueError:
            bad.append(line.number)
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
    mine = [(e, blob) for e, blob in entries if e.matches(host, port)]
    revoked = {blob for e, blob in mine if e.marker == "@revoked"}
    usable = [(e, blob) for e, blob in mine if e.marker == "" and blob not in revoked]
    if not usable:
        findings.append(fail(check, f"bastion {address}: no key for it in known_hosts {path}", fix))
        return findings
    rated = [check_pinned_key(address, e.key_type, blob, f"in {path}") for e, blob in usable]
    good = [f for f in rated if f.level is Level.OK]
    findings.extend(good or rated)
    return findings


def check_rotation(described: str | None, finish: str, can_undo: bool, looked: str = "") -> Finding:
    """A key rotation left half-finished (its record beside the agent key, ``described``
    by keys/rotation.py): the key file works, but the old key stays enrolled (with an
    expiry) until the rotation is finished. ``looked`` says where the record was sought
    when that is not plain."""
    check = "agent.key-rotation"
    if described is None:
        return ok(check, f"no key rotation is under way{looked}")
    fix = f"finish it: {finish}" + (f" (or go back: {finish} --undo)" if can_undo else "")
    return warn(check, f"a key rotation is half-finished: {described}", fix)
