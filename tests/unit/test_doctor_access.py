"""Access file checks on parsed entries, as tables."""

from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime

import pytest

from sshtunnel_mgr.core.access import parse_access
from sshtunnel_mgr.core.names import HostPortPattern
from sshtunnel_mgr.doctor.accesscheck import (
    check_entries,
    globs_intersect,
    is_broad,
    patterns_overlap,
)
from sshtunnel_mgr.doctor.findings import Finding, Level

OK, WARN, FAIL = Level.OK, Level.WARN, Level.FAIL
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def key(n: int) -> str:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes([n]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} key{n}"


def rsa_key(bits: int) -> str:
    e, n = (65537).to_bytes(3, "big"), (1 << (bits - 1) | 1).to_bytes(bits // 8 + 1, "big")
    parts = [b"ssh-rsa", e, n]
    blob = b"".join(struct.pack(">I", len(p)) + p for p in parts)
    return f"ssh-rsa {base64.b64encode(blob).decode()} rsa"


def ecdsa_key() -> str:
    parts = [b"ecdsa-sha2-nistp256", b"nistp256", b"\x04" + bytes(range(64))]
    blob = b"".join(struct.pack(">I", len(p)) + p for p in parts)
    return f"ecdsa-sha2-nistp256 {base64.b64encode(blob).decode()} ecdsa"


def run(*lines: str) -> list[Finding]:
    policy = parse_access("\n".join(lines) + "\n", "access")
    return check_entries(policy.entries, NOW, "access")


def levels(findings: list[Finding], check: str) -> list[Level]:
    return [f.level for f in findings if f.check == check]


CLEAN = (
    f'permitlisten="homebox:22" {key(1)}',
    f'permitlisten="nas.home.example.com:443" {key(2)}',
    f'permitopen="*.home.example.com:*,homebox:22",expiry-time="20991231Z" {key(3)}',
)


def test_a_clean_file_is_all_ok() -> None:
    findings = run(*CLEAN)
    assert {f.level for f in findings} == {OK}
    assert {f.check for f in findings} == {
        "bastion.access-idle-key",
        "bastion.access-broad",
        "bastion.access-overlap",
        "bastion.access-expired",
        "bastion.access-rotation",
        "bastion.access-weak-key",
    }


@pytest.mark.parametrize(
    ("line", "check", "level"),
    [
        (f"{key(9)}", "bastion.access-idle-key", WARN),
        (f'no-port-forwarding,permitopen="x:22" {key(9)}', "bastion.access-idle-key", WARN),
        # (a catch-all permitlisten also overlaps every other agent's names)
        (f'permitlisten="*:*" {key(9)}', "bastion.access-broad", FAIL),
        (f'permitlisten="*:22" {key(9)}', "bastion.access-broad", FAIL),
        (f'permitlisten="*.*:22" {key(9)}', "bastion.access-broad", FAIL),
        (f'permitopen="*:*" {key(9)}', "bastion.access-broad", WARN),
        (f'permitopen="*:22" {key(9)}', "bastion.access-broad", WARN),
        (f'permitlisten="homebox:22" {key(9)}', "bastion.access-overlap", WARN),
        (f'permitlisten="*box:*" {key(9)}', "bastion.access-overlap", WARN),
        (f'permitlisten="homebox:2222" {key(9)}', "bastion.access-overlap", OK),
        (f'permitlisten="x:22",expiry-time="20200101Z" {key(9)}', "bastion.access-expired", WARN),
        (f'permitlisten="x:22",expiry-time="20991231Z" {key(9)}', "bastion.access-expired", OK),
        (f'permitlisten="x:22" {rsa_key(2048)}', "bastion.access-weak-key", FAIL),
        (f'permitlisten="x:22" {ecdsa_key()}', "bastion.access-weak-key", FAIL),
        (f'permitlisten="x:22" {rsa_key(3072)}', "bastion.access-weak-key", OK),
    ],
)
def test_one_line_added_to_a_clean_file(line: str, check: str, level: Level) -> None:
    findings = run(*CLEAN, line)
    assert max(levels(findings, check), key=lambda lv: lv.rank) is level
    also = {"bastion.access-overlap"} if line.startswith('permitlisten="*:') else set()
    others = {f.level for f in findings if f.check != check and f.check not in also}
    assert others == {OK}, [f for f in findings if f.level is not OK]


def test_problems_name_the_line_and_say_how_to_fix() -> None:
    findings = run(*CLEAN, f'permitlisten="x:22",expiry-time="20200101Z" {key(9)}')
    expired = next(f for f in findings if f.check == "bastion.access-expired")
    assert "access:4" in expired.message
    assert expired.fix.startswith("remove it: sshtun keys revoke SHA256:")


def test_a_rotated_key_and_its_predecessor_may_share_names() -> None:
    old = parse_access(f'permitlisten="homebox:22" {key(1)}\n').entries[0]
    successor = f'permitlisten="homebox:22",sshtun-rotated-from="{old.fingerprint}" {key(7)}'
    findings = run(f'permitlisten="homebox:22" {key(1)}', successor)
    assert levels(findings, "bastion.access-overlap") == [OK]
    # ... but an unfinished rotation is worth a warning: both keys still work.
    assert levels(findings, "bastion.access-rotation") == [WARN]
    rotation = next(f for f in findings if f.check == "bastion.access-rotation")
    assert "has not finished" in rotation.message and "sshtun keys rotate" in rotation.fix


@pytest.mark.parametrize(
    ("a", "b", "meet"),
    [
        ("homebox", "homebox", True),
        ("homebox", "nas", False),
        ("*", "anything", True),
        ("home*", "*box", True),
        ("a*", "b*", False),
        ("?ox", "box", True),
        ("?ox", "boxx", False),
        ("a*c", "ab*", True),
        ("*x*", "*y*", True),
        ("abc", "a?d", False),
    ],
)
def test_globs_intersect(a: str, b: str, meet: bool) -> None:
    assert globs_intersect(a, b) is meet
    assert globs_intersect(b, a) is meet


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("homebox:22", "homebox:22", True),
        ("homebox:22", "homebox:*", True),
        ("homebox:22", "homebox:23", False),
        ("*.home.example.com:22", "nas.home.example.com:22", True),
        ("*.home.example.com:22", "a.b.home.example.com:22", False),
        ("*:22", "a.b.c:22", True),
        ("*.a:*", "*.b:*", False),
    ],
)
def test_patterns_overlap(a: str, b: str, overlap: bool) -> None:
    pa, pb = HostPortPattern.parse(a), HostPortPattern.parse(b)
    assert patterns_overlap(pa, pb) is overlap
    assert patterns_overlap(pb, pa) is overlap


@pytest.mark.parametrize(
    ("pattern", "broad"),
    [("*:*", True), ("*.*:22", True), ("?*:22", True), ("*.example.com:22", False)],
)
def test_is_broad(pattern: str, broad: bool) -> None:
    assert is_broad(HostPortPattern.parse(pattern)) is broad
