"""Agent key strength and age, and the pinned bastion host key, as tables."""

from __future__ import annotations

import asyncssh
import pytest

from sshtunnel_mgr.core.access import fingerprint
from sshtunnel_mgr.core.keyformat import public_from_private
from sshtunnel_mgr.doctor.findings import Level
from sshtunnel_mgr.doctor.keycheck import (
    KeyFileFacts,
    check_key_age,
    check_key_strength,
    check_pin_inline,
    check_pin_known_hosts,
)

OK, WARN, FAIL = Level.OK, Level.WARN, Level.FAIL
ED = asyncssh.generate_private_key("ssh-ed25519")
ED_PUB = ED.export_public_key("openssh").decode().split()
ECDSA_PUB = (
    asyncssh.generate_private_key("ecdsa-sha2-nistp256").export_public_key().decode().strip()
)


@pytest.mark.parametrize("passphrase", [None, "correct horse battery"])
def test_public_half_of_an_openssh_private_key_needs_no_passphrase(passphrase: str | None) -> None:
    text = ED.export_private_key("openssh", passphrase=passphrase).decode()
    key_type, blob = public_from_private(text)
    assert key_type == "ssh-ed25519"
    assert fingerprint(blob) == fingerprint(ED.public_data)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n!!!\n-----END OPENSSH PRIVATE KEY-----\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n-----END",
    ],
)
def test_what_is_not_an_openssh_private_key_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        public_from_private(text)


@pytest.mark.parametrize(
    ("key_type", "bits", "level"),
    [
        ("ssh-ed25519", 256, OK),
        ("sk-ssh-ed25519@openssh.com", 256, OK),
        ("ssh-rsa", 4096, OK),
        ("ssh-rsa", 3072, OK),
        ("ssh-rsa", 2048, FAIL),
        ("ecdsa-sha2-nistp256", 256, FAIL),
        ("ssh-dss", 1024, FAIL),
    ],
)
def test_key_strength(key_type: str, bits: int, level: Level) -> None:
    assert check_key_strength(KeyFileFacts("/k", key_type, bits, 1.0)).level is level


def test_an_unreadable_key_fails() -> None:
    assert check_key_strength(KeyFileFacts("/k", error="does not exist")).level is FAIL
    assert check_key_age(KeyFileFacts("/k", error="does not exist")) is None


@pytest.mark.parametrize(("days", "level"), [(0.0, OK), (364.9, OK), (365.0, OK), (400.0, WARN)])
def test_key_age(days: float, level: Level) -> None:
    finding = check_key_age(KeyFileFacts("/k", "ssh-ed25519", 256, days))
    assert finding is not None and finding.level is level
    if level is WARN:
        assert "sshtun keys rotate" in finding.fix


def test_an_inline_pin_of_an_ed25519_key_is_ok_and_anything_else_fails() -> None:
    assert check_pin_inline("b:2222", " ".join(ED_PUB[:2])).level is OK
    assert check_pin_inline("b:2222", ECDSA_PUB).level is FAIL
    assert check_pin_inline("b:2222", "ssh-ed25519 AAAA").level is FAIL


def test_known_hosts_lines_that_do_not_parse_are_reported() -> None:
    """The lookup itself (hashed names, wildcards, negation) is core.knownhosts's, tested
    in tests/unit/test_knownhosts.py; here: which lines the doctor calls unreadable."""
    text = (
        "# comment\n\n"
        f"[b]:2222 {ED_PUB[0]} {ED_PUB[1]}\n"
        "garbage\n"
        f"@revoked [other]:2222 {ECDSA_PUB}\n"
        f"@bogus [b]:2222 {ECDSA_PUB}\n"
        "b ssh-ed25519 notbase64!\n"
        f"|1|junk {ED_PUB[0]} {ED_PUB[1]}\n"
    )
    findings = check_pin_known_hosts("b:2222", "b", 2222, "/kh", text)
    assert [(f.check, f.level) for f in findings] == [
        ("agent.known-hosts-syntax", WARN),
        ("agent.bastion-pinned", OK),
    ]
    assert "line(s) 4,6,7,8 could not be parsed" in findings[0].message


def test_a_revoked_key_is_not_a_pin() -> None:
    pin = f"[b]:2222 {ED_PUB[0]} {ED_PUB[1]}\n"
    assert _kh(pin + f"@revoked [b]:* {ED_PUB[0]} {ED_PUB[1]}\n") == {"agent.bastion-pinned": FAIL}
    assert _kh(pin + f"@revoked [c]:* {ED_PUB[0]} {ED_PUB[1]}\n") == {"agent.bastion-pinned": OK}


def _kh(text: str | None, error: str = "") -> dict[str, Level]:
    findings = check_pin_known_hosts("b:2222", "b", 2222, "/kh", text, error)
    return {f.check: f.level for f in findings}


def test_known_hosts_pins() -> None:
    good = f"[b]:2222 {ED_PUB[0]} {ED_PUB[1]}\n"
    assert _kh(good) == {"agent.bastion-pinned": OK}
    assert _kh(None, "does not exist") == {"agent.bastion-pinned": FAIL}
    assert _kh(f"[other]:2222 {ED_PUB[0]} {ED_PUB[1]}\n") == {"agent.bastion-pinned": FAIL}
    assert _kh(f"b {ED_PUB[0]} {ED_PUB[1]}\n") == {"agent.bastion-pinned": FAIL}  # port 22
    assert _kh(f"[b]:2222 {ECDSA_PUB}\n") == {"agent.bastion-pinned": FAIL}
    assert _kh(good + "junk\n") == {"agent.bastion-pinned": OK, "agent.known-hosts-syntax": WARN}
    revoked = good + f"@revoked [b]:2222 {ED_PUB[0]} {ED_PUB[1]}\n"
    assert _kh(revoked) == {"agent.bastion-pinned": FAIL}
    # an ECDSA line beside an ed25519 one: the usable pin wins
    assert _kh(f"[b]:2222 {ECDSA_PUB}\n" + good) == {"agent.bastion-pinned": OK}
