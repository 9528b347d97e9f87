"""sshd checks from `sshd -T` text, as tables."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.doctor.findings import Level
from sshtunnel_mgr.doctor.sshd import (
    HostKeyFacts,
    SshdSettings,
    check_host_key,
    check_host_keys,
    check_match,
    check_sshd,
    listen_host,
    parse_sshd_t,
)

OK, WARN, FAIL = Level.OK, Level.WARN, Level.FAIL

HARDENED = """\
port 22
listenaddress 127.0.0.1:22
listenaddress [::1]:22
passwordauthentication no
kbdinteractiveauthentication no
pubkeyauthentication yes
permitemptypasswords no
permitrootlogin no
maxauthtries 3
x11forwarding no
strictmodes yes
allowusers alice
allowusers bob@192.0.2.*
ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-ctr
macs hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com
kexalgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256
hostkeyalgorithms ssh-ed25519,ssh-ed25519-cert-v01@openssh.com
pubkeyacceptedalgorithms ssh-ed25519,rsa-sha2-512
hostkey /etc/ssh/ssh_host_ed25519_key
maxstartups 100:30:200
persourcemaxstartups none
"""


def levels(text: str) -> dict[str, Level]:
    return {f.check: f.level for f in check_sshd(parse_sshd_t(text))}


def with_line(key: str, value: str) -> str:
    lines = [ln for ln in HARDENED.splitlines() if not ln.startswith(key + " ")]
    return "\n".join([*lines, f"{key} {value}"]) + "\n"


def test_parse_keeps_repeated_keywords_in_order() -> None:
    settings = parse_sshd_t(HARDENED)
    assert settings.all("listenaddress") == ("127.0.0.1:22", "[::1]:22")
    assert settings.words("allowusers") == ["alice", "bob@192.0.2.*"]
    assert settings.get("port") == "22"
    assert settings.get("missing", "dflt") == "dflt"


def test_a_hardened_config_is_all_ok() -> None:
    got = levels(HARDENED)
    assert set(got.values()) == {OK}, got
    assert set(got) >= {
        "sshd.password-auth",
        "sshd.kbd-interactive",
        "sshd.pubkey-auth",
        "sshd.empty-passwords",
        "sshd.root-login",
        "sshd.max-auth-tries",
        "sshd.x11-forwarding",
        "sshd.allow-users",
        "sshd.listen",
        "sshd.strict-modes",
        "sshd.ciphers",
        "sshd.macs",
        "sshd.kex",
        "sshd.host-key-algs",
        "sshd.pubkey-algs",
    }


@pytest.mark.parametrize(
    ("key", "value", "check", "level"),
    [
        ("passwordauthentication", "yes", "sshd.password-auth", FAIL),
        ("kbdinteractiveauthentication", "yes", "sshd.kbd-interactive", FAIL),
        ("pubkeyauthentication", "no", "sshd.pubkey-auth", FAIL),
        ("permitemptypasswords", "yes", "sshd.empty-passwords", FAIL),
        ("permitrootlogin", "yes", "sshd.root-login", FAIL),
        ("permitrootlogin", "prohibit-password", "sshd.root-login", WARN),
        ("permitrootlogin", "without-password", "sshd.root-login", WARN),
        ("permitrootlogin", "forced-commands-only", "sshd.root-login", WARN),
        ("maxauthtries", "4", "sshd.max-auth-tries", OK),
        ("maxauthtries", "5", "sshd.max-auth-tries", WARN),
        ("maxauthtries", "6", "sshd.max-auth-tries", WARN),
        ("x11forwarding", "yes", "sshd.x11-forwarding", WARN),
        ("strictmodes", "no", "sshd.strict-modes", WARN),
        ("listenaddress", "0.0.0.0:22", "sshd.listen", WARN),
        ("listenaddress", "[::]:22", "sshd.listen", WARN),
        ("listenaddress", "192.168.1.5:22", "sshd.listen", WARN),
        ("listenaddress", "127.0.0.2:2222", "sshd.listen", OK),
        ("ciphers", "aes256-cbc,aes128-gcm@openssh.com", "sshd.ciphers", WARN),
        ("ciphers", "3des-cbc", "sshd.ciphers", FAIL),
        ("ciphers", "arcfour256,aes128-ctr", "sshd.ciphers", FAIL),
        ("macs", "hmac-sha2-256,hmac-sha2-256-etm@openssh.com", "sshd.macs", WARN),
        ("macs", "hmac-md5", "sshd.macs", FAIL),
        ("macs", "hmac-sha1-etm@openssh.com", "sshd.macs", FAIL),
        ("kexalgorithms", "diffie-hellman-group1-sha1", "sshd.kex", FAIL),
        ("kexalgorithms", "diffie-hellman-group14-sha1", "sshd.kex", FAIL),
        ("kexalgorithms", "diffie-hellman-group-exchange-sha1", "sshd.kex", FAIL),
        ("kexalgorithms", "ecdh-sha2-nistp256,curve25519-sha256", "sshd.kex", WARN),
        ("hostkeyalgorithms", "ssh-rsa,ssh-ed25519", "sshd.host-key-algs", FAIL),
        ("hostkeyalgorithms", "ssh-dss", "sshd.host-key-algs", FAIL),
        ("hostkeyalgorithms", "ecdsa-sha2-nistp256", "sshd.host-key-algs", WARN),
        ("pubkeyacceptedalgorithms", "ssh-rsa", "sshd.pubkey-algs", FAIL),
        # every tunnel user reaches sshd from the agent's local address: one "source"
        ("maxstartups", "10:30:100", "sshd.tunnel-shared-source", WARN),
        ("maxstartups", "50:30:100", "sshd.tunnel-shared-source", OK),
        ("persourcemaxstartups", "10", "sshd.tunnel-shared-source", WARN),
        ("persourcepenalties", "crash:90 authfail:5", "sshd.tunnel-shared-source", WARN),
    ],
)
def test_one_setting(key: str, value: str, check: str, level: Level) -> None:
    got = levels(with_line(key, value))
    assert got[check] is level
    others = {c: lv for c, lv in got.items() if c != check}
    assert set(others.values()) == {OK}, others


def test_listening_on_any_address_warns_with_the_tunnel_hint() -> None:
    text = "\n".join(ln for ln in HARDENED.splitlines() if "listenaddress" not in ln)
    finding = next(f for f in check_sshd(parse_sshd_t(text)) if f.check == "sshd.listen")
    assert finding.level is WARN
    assert "with a tunnel sshd can listen on 127.0.0.1 only" in finding.message


def test_no_allow_users_or_groups_warns_and_groups_alone_are_enough() -> None:
    text = "\n".join(ln for ln in HARDENED.splitlines() if "allowusers" not in ln)
    assert levels(text)["sshd.allow-users"] is WARN
    assert levels(text + "\nallowgroups ssh-users\n")["sshd.allow-users"] is OK


def test_every_problem_has_a_fix() -> None:
    text = with_line("passwordauthentication", "yes")
    finding = next(f for f in check_sshd(parse_sshd_t(text)) if f.check == "sshd.password-auth")
    assert "PasswordAuthentication no" in finding.fix
    for f in check_sshd(parse_sshd_t("port 22\n")):
        assert (f.level is OK) == (f.fix == ""), f


@pytest.mark.parametrize(
    ("address", "host"),
    [("127.0.0.1:22", "127.0.0.1"), ("[::1]:22", "::1"), ("::1", "::1"), ("0.0.0.0", "0.0.0.0")],
)
def test_listen_host(address: str, host: str) -> None:
    assert listen_host(address) == host


def test_a_match_block_that_reopens_passwords_is_reported_for_the_tunnel() -> None:
    plain = parse_sshd_t(HARDENED)
    matched = parse_sshd_t(with_line("passwordauthentication", "yes"))
    found = check_match(plain, matched, "addr=127.0.0.1")
    assert [(f.check, f.level) for f in found] == [("sshd.password-auth", FAIL)]
    assert "addr=127.0.0.1" in found[0].message and "Match" in found[0].fix
    assert check_match(plain, plain, "addr=127.0.0.1") == []


@pytest.mark.parametrize(
    ("key_type", "bits", "level"),
    [
        ("ssh-ed25519", 256, OK),
        ("ssh-rsa", 4096, OK),
        ("ssh-rsa", 3072, OK),
        ("ssh-rsa", 2048, WARN),
        ("ssh-rsa", 1024, FAIL),
        ("ecdsa-sha2-nistp256", 256, WARN),
        ("ssh-dss", 1024, FAIL),
    ],
)
def test_host_key_types(key_type: str, bits: int, level: Level) -> None:
    assert check_host_key(HostKeyFacts("/k", key_type, bits)).level is level


def test_unreadable_or_missing_host_keys_fail() -> None:
    assert check_host_key(HostKeyFacts("/k", "", 0, "cannot read it")).level is FAIL
    assert [f.level for f in check_host_keys([])] == [FAIL]


def test_defaults_when_sshd_prints_nothing_for_a_keyword() -> None:
    got = {f.check: f.level for f in check_sshd(SshdSettings({}))}
    assert got["sshd.listen"] is WARN  # sshd's default is every address
    assert got["sshd.max-auth-tries"] is WARN  # default 6


def test_per_source_penalties_with_loopback_exempt_are_fine_for_the_tunnel() -> None:
    text = with_line("persourcepenalties", "authfail:5")
    text += "persourcepenaltyexemptlist 127.0.0.1,::1\n"
    assert levels(text)["sshd.tunnel-shared-source"] is OK
    warned = next(
        f
        for f in check_sshd(parse_sshd_t(with_line("maxstartups", "10:30:100")))
        if f.check == "sshd.tunnel-shared-source"
    )
    assert "MaxStartups 100:30:200" in warned.fix
