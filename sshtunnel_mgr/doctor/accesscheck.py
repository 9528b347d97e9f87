"""Checks on the bastion's access file entries (pure: parsed entries in, findings out)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache

from sshtunnel_mgr.core.access import AccessEntry
from sshtunnel_mgr.core.names import HostPortPattern
from sshtunnel_mgr.doctor.findings import Finding, fail, ok, warn
from sshtunnel_mgr.keys.inventory import weakness

REVOKE = "sshtun keys revoke {fp} --config BASTION.toml"


def globs_intersect(a: str, b: str) -> bool:
    """Whether two label patterns (``*`` and ``?`` wildcards) match some common label."""

    @cache
    def meet(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*":
            return meet(i + 1, j) or (j < len(b) and meet(i, j + 1))
        if j < len(b) and b[j] == "*":
            return meet(i, j + 1) or (i < len(a) and meet(i + 1, j))
        if i < len(a) and j < len(b) and (a[i] == b[j] or "?" in (a[i], b[j])):
            return meet(i + 1, j + 1)
        return False

    return meet(0, 0)


def patterns_overlap(a: HostPortPattern, b: HostPortPattern) -> bool:
    """Whether some ``name:port`` falls under both patterns (label by label; a lone ``*``
    matches names of any depth)."""
    if a.port is not None and b.port is not None and a.port != b.port:
        return False
    if a.is_catch_all or b.is_catch_all:
        return True
    a_labels, b_labels = a.host.split("."), b.host.split(".")
    if len(a_labels) != len(b_labels):
        return False
    return all(globs_intersect(x, y) for x, y in zip(a_labels, b_labels, strict=True))


def is_broad(pattern: HostPortPattern) -> bool:
    """A host pattern made only of wildcards (``*``, ``*.*``, ``?*``): it names no one."""
    return all(set(label) <= {"*", "?"} for label in pattern.host.split("."))


def _related(a: AccessEntry, b: AccessEntry) -> bool:
    """Keys of one rotation (a successor and its predecessor) share names by design."""
    return a.rotated_from == b.fingerprint or b.rotated_from == a.fingerprint


def check_entries(entries: Sequence[AccessEntry], now: datetime, source: str) -> list[Finding]:
    findings: list[Finding] = []
    idle = [e for e in entries if e.no_port_forwarding or not (e.permit_listen or e.permit_open)]
    for e in idle:
        why = (
            "no-port-forwarding" if e.no_port_forwarding else "neither permitlisten nor permitopen"
        )
        findings.append(
            warn(
                "bastion.access-idle-key",
                f"{source}:{e.line}: key {e.label} has {why}: it can log in but do nothing",
                f"give it permitlisten/permitopen, or remove it: {REVOKE.format(fp=e.fingerprint)}",
            )
        )
    if not idle:
        findings.append(ok("bastion.access-idle-key", f"{source}: every key has a permission"))

    broad = 0
    for e in entries:
        for p in e.permit_listen:
            if is_broad(p):
                broad += 1
                findings.append(
                    fail(
                        "bastion.access-broad",
                        f"{source}:{e.line}: key {e.label} has permitlisten={p}: it may "
                        "publish (and take over) any name",
                        'list the names it serves, e.g. permitlisten="homebox:22"',
                    )
                )
        for p in e.permit_open:
            if is_broad(p):
                broad += 1
                findings.append(
                    warn(
                        "bastion.access-broad",
                        f"{source}:{e.line}: key {e.label} has permitopen={p}: it may reach "
                        "every published name",
                        'list what it needs, e.g. permitopen="*.home.example.com:22"',
                    )
                )
    if not broad:
        findings.append(ok("bastion.access-broad", f"{source}: no catch-all patterns"))

    overlaps = 0
    for i, a in enumerate(entries):
        for b in entries[i + 1 :]:
            if _related(a, b):
                continue
            shared = [
                f"{p}/{q}" if str(p) != str(q) else str(p)
                for p in a.permit_listen
                for q in b.permit_listen
                if patterns_overlap(p, q)
            ]
            if shared:
                overlaps += 1
                findings.append(
                    warn(
                        "bastion.access-overlap",
                        f"{source}: keys on lines {a.line} ({a.label}) and {b.line} "
                        f"({b.label}) may both publish {', '.join(shared)}; both then serve "
                        "it (allowed, but make sure it is meant)",
                        "give each agent key its own names, unless two boxes serve one name",
                    )
                )
    if not overlaps:
        findings.append(
            ok("bastion.access-overlap", f"{source}: no two keys may publish the same name")
        )

    expired = [e for e in entries if e.is_expired(now)]
    for e in expired:
        assert e.expiry is not None
        findings.append(
            warn(
                "bastion.access-expired",
                f"{source}:{e.line}: key {e.label} expired at "
                f"{e.expiry.isoformat(timespec='seconds')} and is still listed",
                f"remove it: {REVOKE.format(fp=e.fingerprint)}",
            )
        )
    if not expired:
        findings.append(ok("bastion.access-expired", f"{source}: no expired keys"))

    by_fp = {e.fingerprint: e for e in entries}
    pending = [(e, by_fp[e.rotated_from]) for e in entries if e.rotated_from in by_fp]
    for new, old in pending:
        until = old.expiry.isoformat(timespec="seconds") if old.expiry else "never"
        findings.append(
            warn(
                "bastion.access-rotation",
                f"{source}:{new.line}: key {new.label} was enrolled to replace {old.label} "
                f"(line {old.line}), and the rotation has not finished: both work (the old "
                f"one until {until})",
                "rerun `sshtun keys rotate` on the home box to finish it (or --undo)",
            )
        )
    if not pending:
        findings.append(ok("bastion.access-rotation", f"{source}: no unfinished key rotation"))

    weak = [(e, weakness(e.key_type, e.key_blob)) for e in entries]
    for e, why in weak:
        if why:
            findings.append(
                fail(  # the bastion refuses such a key at login
                    "bastion.access-weak-key",
                    f"{source}:{e.line}: key {e.label}: {why}; the bastion refuses it at login",
                    "replace it with an ed25519 key (sshtun keys gen, then rotate or revoke)",
                )
            )
    if not any(why for _, why in weak):
        findings.append(
            ok("bastion.access-weak-key", f"{source}: {len(entries)} key(s), all strong")
        )
    return findings
