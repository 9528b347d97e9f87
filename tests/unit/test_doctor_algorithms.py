"""Weak-algorithm rules, as tables, and against ssh-audit's own database."""

from __future__ import annotations

import pytest
from ssh_audit.ssh2_kexdb import SSH2_KexDB

from sshtunnel_mgr.core import policy
from sshtunnel_mgr.doctor.algorithms import (
    _EXACT,
    NIST,
    Category,
    check_algorithms,
    check_policy,
    rate,
)
from sshtunnel_mgr.doctor.findings import Level

OK, WARN, FAIL = Level.OK, Level.WARN, Level.FAIL


@pytest.mark.parametrize(
    ("category", "algorithm", "level"),
    [
        ("kex", "curve25519-sha256", OK),
        ("kex", "curve25519-sha256@libssh.org", OK),
        ("kex", "mlkem768x25519-sha256", OK),
        ("kex", "sntrup761x25519-sha512@openssh.com", OK),
        ("kex", "diffie-hellman-group16-sha512", OK),
        ("kex", "diffie-hellman-group-exchange-sha256", OK),
        ("kex", "diffie-hellman-group14-sha256", WARN),
        ("kex", "ecdh-sha2-nistp256", WARN),
        ("kex", "ecdh-sha2-nistp521", WARN),
        ("kex", "diffie-hellman-group1-sha1", FAIL),
        ("kex", "diffie-hellman-group14-sha1", FAIL),
        ("kex", "diffie-hellman-group-exchange-sha1", FAIL),
        ("kex", "kex-strict-s-v00@openssh.com", OK),
        ("kex", "something-new@example.com", WARN),
        ("cipher", "aes128-gcm@openssh.com", OK),
        ("cipher", "chacha20-poly1305@openssh.com", OK),
        ("cipher", "aes256-ctr", OK),
        ("cipher", "aes128-cbc", WARN),
        ("cipher", "aes256-cbc", WARN),
        ("cipher", "3des-cbc", FAIL),
        ("cipher", "arcfour", FAIL),
        ("cipher", "arcfour256", FAIL),
        ("cipher", "blowfish-cbc", FAIL),
        ("cipher", "cast128-cbc", FAIL),
        ("cipher", "rijndael-cbc@lysator.liu.se", FAIL),
        ("cipher", "none", FAIL),
        ("mac", "hmac-sha2-256-etm@openssh.com", OK),
        ("mac", "umac-128-etm@openssh.com", OK),
        ("mac", "hmac-sha2-256", WARN),
        ("mac", "umac-128@openssh.com", WARN),
        ("mac", "umac-64-etm@openssh.com", WARN),
        ("mac", "hmac-sha1", FAIL),
        ("mac", "hmac-sha1-etm@openssh.com", FAIL),
        ("mac", "hmac-sha1-96", FAIL),
        ("mac", "hmac-md5", FAIL),
        ("mac", "hmac-md5-etm@openssh.com", FAIL),
        ("mac", "hmac-ripemd160", FAIL),
        ("key", "ssh-ed25519", OK),
        ("key", "ssh-ed25519-cert-v01@openssh.com", OK),
        ("key", "sk-ssh-ed25519@openssh.com", OK),
        ("key", "sk-ssh-ed25519-cert-v01@openssh.com", OK),
        ("key", "rsa-sha2-512", OK),
        ("key", "rsa-sha2-256-cert-v01@openssh.com", OK),
        ("key", "ssh-rsa", FAIL),
        ("key", "ssh-rsa-cert-v01@openssh.com", FAIL),
        ("key", "ssh-dss", FAIL),
        ("key", "ssh-dss-cert-v01@openssh.com", FAIL),
        ("key", "ecdsa-sha2-nistp256", WARN),
        ("key", "ecdsa-sha2-nistp384-cert-v01@openssh.com", WARN),
        ("key", "sk-ecdsa-sha2-nistp256@openssh.com", WARN),
    ],
)
def test_rate(category: Category, algorithm: str, level: Level) -> None:
    assert rate(category, algorithm)[0] is level


def test_one_finding_names_every_weak_algorithm_and_keeps_the_good_ones() -> None:
    finding = check_algorithms(
        "sshd.macs",
        "mac",
        ["hmac-sha2-256-etm@openssh.com", "hmac-sha1", "umac-64@openssh.com", "hmac-md5"],
        "sshd MACs",
        "MACs",
    )
    assert finding.level is FAIL
    assert "hmac-sha1" in finding.message and "hmac-md5" in finding.message
    assert "umac-64@openssh.com" in finding.message
    assert finding.fix == "MACs hmac-sha2-256-etm@openssh.com"


def test_warnings_alone_warn_and_an_all_bad_list_gets_the_policy_list_as_fix() -> None:
    finding = check_algorithms("sshd.kex", "kex", ["ecdh-sha2-nistp256"], "sshd Kex", "Kex")
    assert finding.level is WARN
    assert finding.fix == "Kex " + ",".join(policy.KEX_ALGS)


def test_a_clean_list_is_ok() -> None:
    finding = check_algorithms("c", "cipher", list(policy.ENCRYPTION_ALGS), "x", "Ciphers")
    assert finding.level is OK and finding.fix == ""


def test_sshtuns_own_policy_is_clean() -> None:
    findings = check_policy()
    assert [f.level for f in findings] == [OK] * len(findings), findings


def test_policy_keeps_curve25519_and_prefers_aes128_gcm() -> None:
    assert "curve25519-sha256" in policy.KEX_ALGS
    assert policy.ENCRYPTION_ALGS[0] == "aes128-gcm@openssh.com"


def test_a_weak_policy_fails_each_list() -> None:
    findings = {
        f.check: f
        for f in check_policy(
            kex=("diffie-hellman-group14-sha1",),
            ciphers=("aes128-cbc",),
            macs=("hmac-sha1",),
            host_keys=("ssh-rsa",),
            signatures=("ecdsa-sha2-nistp256",),
            compression=("zlib@openssh.com", "none"),
        )
    }
    assert findings["policy.kex"].level is FAIL
    assert findings["policy.ciphers"].level is WARN
    assert findings["policy.macs"].level is FAIL
    assert findings["policy.host-key-algs"].level is FAIL
    assert findings["policy.signature-algs"].level is WARN
    assert findings["policy.compression"].level is WARN
    assert "policy.py" in findings["policy.kex"].fix


# Against ssh-audit's database ---------------------------------------------------------
_CATEGORIES: dict[str, Category] = {"kex": "kex", "enc": "cipher", "mac": "mac", "key": "key"}


def _ssh_audit_ratings() -> list[tuple[Category, str, Level, list[str]]]:
    db = SSH2_KexDB.get_db()
    rows = []
    for theirs, ours in _CATEGORIES.items():
        for algorithm, info in db[theirs].items():
            fails = list(info[1]) if len(info) > 1 else []
            warns = [
                w for w in (info[2] if len(info) > 2 else []) if w != SSH2_KexDB.WARN_NOT_PQ_SAFE
            ]
            level = FAIL if fails else WARN if warns else OK
            rows.append((ours, algorithm, level, fails + warns))
    return rows


def test_nothing_ssh_audit_flags_is_ok_here() -> None:
    wrong = [
        (c, a, reasons)
        for c, a, theirs, reasons in _ssh_audit_ratings()
        if theirs is not OK and rate(c, a)[0] is OK
    ]
    assert wrong == []


def test_what_ssh_audit_fails_fails_here_except_nist_curves_and_unknown_names() -> None:
    wrong = []
    for category, algorithm, theirs, reasons in _ssh_audit_ratings():
        level, why = rate(category, algorithm)
        if theirs is FAIL and level is WARN and why != NIST and "not known" not in why:
            wrong.append((category, algorithm, reasons, why))
    assert wrong == []


def test_nothing_ssh_audit_rates_clean_fails_here() -> None:
    wrong = [
        (c, a) for c, a, theirs, _ in _ssh_audit_ratings() if theirs is OK and rate(c, a)[0] is FAIL
    ]
    assert wrong == []


def test_everything_rated_ok_here_is_known_and_clean_to_ssh_audit() -> None:
    known = {(c, a): theirs for c, a, theirs, _ in _ssh_audit_ratings()}
    for category, table in _EXACT.items():
        for algorithm, (level, _) in table.items():
            if level is OK:
                assert known.get((category, algorithm)) is OK, (category, algorithm)
