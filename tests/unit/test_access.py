"""The bastion's access file (sshtunnel_mgr/core/access.py): parsing and decisions, as tables."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncssh
import pytest

from sshtunnel_mgr.core.access import (
    AccessEntry,
    AccessPolicy,
    Decision,
    decode_key,
    fingerprint,
    match_from,
    parse_access,
    parse_expiry,
)
from sshtunnel_mgr.core.errors import EXIT_CONFIG, ConfigError
from sshtunnel_mgr.core.names import HostPortPattern
from sshtunnel_mgr.keys.store import generate_key
from sshtunnel_mgr.runtime.accessfile import load_access

SSH_KEYGEN = shutil.which("ssh-keygen") or (
    "/usr/bin/ssh-keygen" if os.path.exists("/usr/bin/ssh-keygen") else None
)
REQUIRE_OPENSSH = os.environ.get("SSHTUN_REQUIRE_OPENSSH") == "1"
LINE_HINT = (
    'access lines are authorized_keys syntax: permitlisten="name:port" ssh-ed25519 AAAA... comment'
)
NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def _pub(key: asyncssh.SSHKey) -> str:
    """ "type base64" of a key, without a comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


@pytest.fixture(scope="module")
def keys() -> list[str]:
    """Three distinct ed25519 public keys as "ssh-ed25519 AAAA..." (no comment)."""
    return [_pub(asyncssh.generate_private_key("ssh-ed25519")) for _ in range(3)]


@pytest.fixture(scope="module")
def key(keys: list[str]) -> str:
    return keys[0]


def _blob(pub: str) -> bytes:
    return base64.b64decode(pub.split()[1])


def _only(text: str) -> AccessEntry:
    policy = parse_access(text, "x")
    assert len(policy.entries) == 1
    return policy.entries[0]


# --- parsing lines that are valid ------------------------------------------------------------


def test_plain_key_line(key: str) -> None:
    entry = _only(f"{key} alice@laptop")
    assert entry.key_type == "ssh-ed25519"
    assert entry.key_blob == _blob(key)
    assert entry.comment == "alice@laptop"
    assert entry.line == 1
    assert entry.permit_listen == ()
    assert entry.permit_open == ()
    assert entry.expiry is None
    assert entry.from_patterns == ()
    assert entry.no_port_forwarding is False
    assert entry.note == ""
    assert entry.options == ()


@pytest.mark.parametrize(
    ("options", "field", "expected"),
    [
        ('permitlisten="homebox:22"', "permit_listen", (HostPortPattern("homebox", 22),)),
        ('permitlisten="HomeBox:*"', "permit_listen", (HostPortPattern("homebox", None),)),
        ('permitopen="homebox:22"', "permit_open", (HostPortPattern("homebox", 22),)),
        # a quoted value may hold a comma-separated list
        (
            'permitopen="a:22,*.b.example:*"',
            "permit_open",
            (HostPortPattern("a", 22), HostPortPattern("*.b.example", None)),
        ),
        (
            'permitopen="a:22 , b:23,"',
            "permit_open",
            (HostPortPattern("a", 22), HostPortPattern("b", 23)),
        ),
        # the option may repeat; all its values count
        (
            'permitopen="a:22",permitopen="b:22"',
            "permit_open",
            (HostPortPattern("a", 22), HostPortPattern("b", 22)),
        ),
        # option names are case-insensitive, like OpenSSH's
        ('PermitOpen="A:22"', "permit_open", (HostPortPattern("a", 22),)),
        ('from="10.0.0.0/8"', "from_patterns", ("10.0.0.0/8",)),
        ('from="10.0.0.0/8, !10.0.0.9,,"', "from_patterns", ("10.0.0.0/8", "!10.0.0.9")),
        ('from="10.0.0.1",from="10.0.0.2"', "from_patterns", ("10.0.0.1", "10.0.0.2")),
        ('expiry-time="20301231Z"', "expiry", datetime(2030, 12, 31, tzinfo=UTC)),
        ('sshtun-note="plain"', "note", "plain"),
        # escaped quotes and commas inside a quoted value stay in the value
        (r'sshtun-note="say \"hi\", then go"', "note", 'say "hi", then go'),
        # a backslash not before a quote is kept as is
        (r'sshtun-note="C:\dir"', "note", r"C:\dir"),
        ('sshtun-note=""', "note", ""),
        ('sshtun-note="a b\tc"', "note", "a b\tc"),
        ("no-port-forwarding", "no_port_forwarding", True),
        ('no-port-forwarding,permitopen="a:22"', "no_port_forwarding", True),
        # restrict and the other flags are accepted; sshtun decides by permitopen/listen
        ('restrict,permitopen="a:22"', "no_port_forwarding", False),
        ("RESTRICT", "no_port_forwarding", False),
        (
            "port-forwarding,no-pty,no-agent-forwarding,no-x11-forwarding,no-user-rc",
            "no_port_forwarding",
            False,
        ),
    ],
)
def test_options(key: str, options: str, field: str, expected: object) -> None:
    entry = _only(f"{options} {key} c")
    assert getattr(entry, field) == expected
    assert entry.comment == "c"
    assert entry.key_blob == _blob(key)


def test_options_are_kept_in_order(key: str) -> None:
    entry = _only(f'restrict,PERMITOPEN="a:22",sshtun-note="n, m" {key}')
    assert entry.options == (("restrict", None), ("permitopen", "a:22"), ("sshtun-note", "n, m"))


@pytest.mark.parametrize(
    ("suffix", "comment"),
    [
        ("", ""),
        (" alice", "alice"),
        (" alice at laptop", "alice at laptop"),
        ("\talice", "alice"),
        ("   alice   ", "alice"),
    ],
)
def test_comment(key: str, suffix: str, comment: str) -> None:
    assert _only(f"{key}{suffix}").comment == comment


def test_blank_and_comment_lines_are_skipped_and_lines_are_counted(keys: list[str]) -> None:
    text = (
        "# agents\n"
        "\n"
        f'permitlisten="homebox:22" {keys[0]} agent\n'
        "   # indented comment\n"
        "   \t\n"
        f'  permitopen="homebox:22" {keys[1]} alice\n'
    )
    policy = parse_access(text, "/etc/sshtun/access")
    assert policy.source == "/etc/sshtun/access"
    assert [(e.line, e.comment) for e in policy.entries] == [(3, "agent"), (6, "alice")]
    assert policy.find(_blob(keys[1])) is policy.entries[1]
    assert policy.find(_blob(keys[2])) is None


def test_empty_file() -> None:
    policy = parse_access("", "x")
    assert policy.entries == ()
    assert policy.source == "x"


@pytest.mark.parametrize(
    "algorithm", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ssh-rsa"]
)
def test_key_types(algorithm: str) -> None:
    kwargs = {"key_size": 2048} if algorithm == "ssh-rsa" else {}
    pub = _pub(asyncssh.generate_private_key(algorithm, **kwargs))
    entry = _only(f'permitopen="a:22" {pub} c')
    assert entry.key_type == algorithm
    assert entry.key_blob == _blob(pub)


# --- parsing lines that are invalid: ConfigError naming file:line ----------------------------


B64_RSA_HEADER = "AAAAB3NzaC1yc2EAAAADAQAB"  # the start of an ssh-rsa blob


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('permitopenn="a:22" {key}', "unknown option 'permitopenn'"),
        ('Command="ls" {key}', "unknown option 'command'"),
        ("no-pty,cert-authority {key}", "unknown option 'cert-authority'"),
        ('permitopen="a:22 {key}', "option permitopen: missing closing quote"),
        ('permitopen="a:22\\" {key}', "option permitopen: missing closing quote"),
        ("permitopen=a:22 {key}", "option permitopen needs a double-quoted value"),
        ("permitopen= {key}", "option permitopen needs a double-quoted value"),
        ('restrict="yes" {key}', "option restrict takes no value"),
        ("permitopen,restrict {key}", 'option permitopen needs a value, like permitopen="..."'),
        ("from {key}", 'option from needs a value, like from="..."'),
        (",restrict {key}", "empty option"),
        ("restrict,,no-pty {key}", "empty option"),
        ('="x" {key}', "empty option"),
        ("restrict", "options must be followed by a key"),
        ('permitopen="a:22"', "options must be followed by a key"),
        ('permitopen="a:22"x {key}', "options must be followed by a key"),
        ("restrict, {key}", "empty option"),
        ("ssh-ed25519", "expected a key type and key data"),
        ("restrict ssh-ed25519", "expected a key type and key data"),
        ("ssh-ed25519 !!!notbase64 c", "key data is not valid base64"),
        ("ssh-ed25519 AAAA$AAA c", "key data is not valid base64"),
        ("ssh-ed25519 AAAA c", "key data is truncated"),
        ("ssh-ed25519 " + B64_RSA_HEADER, "key data is a 'ssh-rsa' key, not 'ssh-ed25519'"),
        ("ssh-rsa {b64}", "key data is a 'ssh-ed25519' key, not 'ssh-rsa'"),
        ("restrict ssh-dss AAAAB3NzaC1kc3M c", "unsupported key type 'ssh-dss'"),
        # an unsupported type first on the line is named, not mistaken for an option
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP c", "unsupported key type 'ssh-dss'"),
        ("ssh-dss AAAAB3NzaC1kc3M", "unsupported key type 'ssh-dss'"),
        ("ecdsa-sha2-nistp999 AAAA", "unsupported key type 'ecdsa-sha2-nistp999'"),
        ("x509v3-ssh-rsa AAAA c", "unsupported key type 'x509v3-ssh-rsa'"),
        # from=: a malformed CIDR is refused (silently never matching would let "!bad"
        # fail open), and so is an empty negation
        ('from="10.0.0.0/33" {key}', "from= pattern '10.0.0.0/33' is not a valid CIDR block"),
        (
            'from="0.0.0.0/0,!10.0.0.0/33" {key}',
            "from= pattern '!10.0.0.0/33' is not a valid CIDR block",
        ),
        ('from="10.0.0.0/" {key}', "from= pattern '10.0.0.0/' is not a valid CIDR block"),
        ('from="2001:db8::/129" {key}', "from= pattern '2001:db8::/129' is not a valid CIDR block"),
        ('from="a/b" {key}', "from= pattern 'a/b' is not a valid CIDR block"),
        ('from="!" {key}', "from= has an empty pattern"),
        ('permitopen="a:22" ssh-ed448 AAAA', "unsupported key type 'ssh-ed448'"),
        ('permitopen="homebox" {key}', "permitopen: 'homebox' must be name:port (port may be *)"),
        (
            'permitlisten="a_b:22" {key}',
            "permitlisten: 'a_b:22': label 'a_b' is not a valid name pattern",
        ),
        ('permitlisten="a:0" {key}', "permitlisten: 'a:0': port must be 1-65535 or *"),
        ('permitopen="" {key}', "permitopen is empty"),
        ('permitopen=" , " {key}', "permitopen is empty"),
        ('expiry-time="2030" {key}', "expiry-time '2030' is not YYYYMMDD[HHMM[SS]][Z]"),
        (
            'expiry-time="20300101",expiry-time="20310101" {key}',
            "expiry-time given twice",
        ),
    ],
)
def test_bad_lines(key: str, line: str, message: str) -> None:
    text = line.format(key=key, b64=key.split()[1])
    with pytest.raises(ConfigError) as info:
        parse_access(text, "/etc/sshtun/access")
    assert info.value.message == f"/etc/sshtun/access:1: {message}"
    assert info.value.hint == LINE_HINT
    assert info.value.exit_code == EXIT_CONFIG


def test_error_names_the_right_line(keys: list[str]) -> None:
    text = f'# comment\n\npermitopen="a:22" {keys[0]}\npermitopenn="a:22" {keys[1]}\n'
    with pytest.raises(ConfigError) as info:
        parse_access(text, "access")
    assert info.value.message == "access:4: unknown option 'permitopenn'"


def test_duplicate_key(keys: list[str]) -> None:
    text = (
        f'permitlisten="homebox:22" {keys[0]} agent\n'
        f'permitopen="x:22" {keys[1]} bob\n'
        "\n"
        f'permitopen="homebox:22" {keys[0]} same key again\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_access(text, "access")
    fp = fingerprint(_blob(keys[0]))
    assert info.value.message == f"access:4: key {fp} already appears on line 1"
    assert info.value.hint == "give each key one line; list all its names in that line's options"


# --- expiry-time -----------------------------------------------------------------------------


@pytest.fixture
def tz_utc_minus_5() -> Iterator[None]:
    """Local time is UTC-5 with no DST (POSIX TZ), for the local-time expiry formats."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XST+5"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


UTC_MINUS_5 = timezone(timedelta(hours=-5))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20301231Z", datetime(2030, 12, 31, tzinfo=UTC)),
        ("20301231z", datetime(2030, 12, 31, tzinfo=UTC)),
        ("203012311530Z", datetime(2030, 12, 31, 15, 30, tzinfo=UTC)),
        ("20301231153045Z", datetime(2030, 12, 31, 15, 30, 45, tzinfo=UTC)),
        ("20240229Z", datetime(2024, 2, 29, tzinfo=UTC)),
        # without Z, the time is local (as OpenSSH reads it)
        ("20301231", datetime(2030, 12, 31, tzinfo=UTC_MINUS_5)),
        ("203012311530", datetime(2030, 12, 31, 15, 30, tzinfo=UTC_MINUS_5)),
        ("20301231153045", datetime(2030, 12, 31, 15, 30, 45, tzinfo=UTC_MINUS_5)),
    ],
)
def test_parse_expiry(tz_utc_minus_5: None, text: str, expected: datetime) -> None:
    parsed = parse_expiry(text)
    assert parsed.tzinfo is not None
    assert parsed == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Z",
        "2030",
        "2030123",
        "2030123Z",
        "203012311",
        "20301231153",
        "2030123115304",
        "203012311530450",
        "203012311530451Z",
        "2030-12-31",
        "2030123\uff3a",  # FULLWIDTH LATIN CAPITAL Z
        "20301231 ",
        " 20301231",
        "+2030123",
        "20301231ZZ",
        "20301231UTC",
    ],
)
def test_parse_expiry_bad_format(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_expiry(text)
    assert str(info.value) == f"expiry-time {text!r} is not YYYYMMDD[HHMM[SS]][Z]"


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("20300230", "day is out of range for month"),
        ("20230229Z", "day is out of range for month"),
        ("20301231235960Z", "second must be in 0..59"),
        ("20301301", None),  # strptime's own wording
        ("203012312460", None),
    ],
)
def test_parse_expiry_bad_date(text: str, detail: str | None) -> None:
    with pytest.raises(ValueError) as info:
        parse_expiry(text)
    message = str(info.value)
    assert message.startswith(f"expiry-time {text!r}: ")
    if detail is not None:
        assert message == f"expiry-time {text!r}: {detail}"


def test_bad_expiry_in_file_names_the_line(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_access(f'expiry-time="20300230" {key}', "access")
    assert info.value.message == "access:1: expiry-time '20300230': day is out of range for month"


# --- from= -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "address", "expected"),
    [
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["192.0.2.1/24"], "192.0.2.200", True),  # host bits in the network are ignored
        (["192.0.2.7"], "192.0.2.7", True),
        (["192.0.2.7"], "192.0.2.70", False),
        (["192.0.2.*"], "192.0.2.77", True),
        (["192.0.2.*"], "192.0.3.1", False),
        (["192.0.2.?"], "192.0.2.7", True),
        (["192.0.2.?"], "192.0.2.77", False),
        (["*"], "203.0.113.5", True),
        (["*"], "2001:db8::5", True),
        # negation: any negative match refuses, whatever else matches
        (["0.0.0.0/0", "!192.0.2.9"], "192.0.2.9", False),
        (["0.0.0.0/0", "!192.0.2.9"], "192.0.2.8", True),
        (["!192.0.2.9", "0.0.0.0/0"], "192.0.2.9", False),  # order does not matter
        (["*", "!10.0.0.0/8"], "10.200.0.1", False),
        (["*", "!10.0.0.0/8"], "11.0.0.1", True),
        (["!192.0.2.9"], "192.0.2.8", False),  # negations alone never allow
        ([], "192.0.2.8", False),
        # IPv6
        (["2001:db8::/32"], "2001:db8::1", True),
        (["2001:db8::/32"], "2001:db9::1", False),
        (["2001:db8::*"], "2001:db8::5", True),
        (["2001:DB8::1"], "2001:db8::1", True),
        (["2001:db8::1"], "2001:DB8:0:0:0:0:0:1", True),  # compared in canonical form
        (["::1"], "::1", True),
        (["fe80::/10"], "fe80::1%eth0", True),  # a scope id is ignored
        (["!2001:db8::/32", "::/0"], "2001:db8::1", False),
        # an IPv4-mapped IPv6 peer is its IPv4 address
        (["10.0.0.0/8"], "::ffff:10.0.0.1", True),
        (["10.0.0.1"], "::ffff:10.0.0.1", True),
        # families never mix
        (["10.0.0.0/8"], "2001:db8::1", False),
        (["2001:db8::/32"], "10.0.0.1", False),
        # host names never match: the bastion never resolves names
        (["host.example.com"], "192.0.2.1", False),
        (["*.example.com"], "192.0.2.1", False),
        (["localhost"], "127.0.0.1", False),
        # a source that is not an IP address matches nothing
        (["*"], "not-an-ip", False),
        (["10.0.0.1"], "", False),
        # match_from on its own: a malformed CIDR never matches (parse_access refuses it)
        (["10.0.0.0/33"], "10.0.0.1", False),
    ],
)
def test_match_from(patterns: list[str], address: str, expected: bool) -> None:
    assert match_from(patterns, address) is expected


@pytest.mark.parametrize("value", ["", " , "])
def test_empty_from_is_not_unrestricted(key: str, value: str) -> None:
    text = f'from="{value}",permitopen="a:22" {key} c'
    try:
        policy = parse_access(text, "access")
    except ConfigError as exc:  # the fix may refuse the line...
        assert exc.message.startswith("access:1: from")
        return
    # ...or refuse every source
    assert not policy.authenticate(_blob(key), "203.0.113.5", NOW)


# --- AccessPolicy.authenticate ---------------------------------------------------------------


@pytest.fixture
def policy(keys: list[str]) -> AccessPolicy:
    return parse_access(
        f'permitlisten="homebox:22",expiry-time="20261231Z" {keys[0]} agent@home\n'
        f'permitopen="*.home.example.com:22",from="10.0.0.0/8,!10.0.0.9,2001:db8::/32" '
        f"{keys[1]} alice\n"
        f"restrict {keys[2]}\n",
        "access",
    )


def _label(pub: str, comment: str) -> str:
    fp = fingerprint(_blob(pub))
    return f"{fp} ({comment})" if comment else fp


@pytest.mark.parametrize(
    ("who", "source", "now", "allowed", "reason"),
    [
        (0, "192.0.2.1", NOW, True, "key {label} accepted from 192.0.2.1"),
        (
            0,
            "192.0.2.1",
            datetime(2026, 12, 31, 0, 0, 0, tzinfo=UTC),
            False,
            "key {label} expired at 2026-12-31T00:00:00+00:00",
        ),
        (
            0,
            "192.0.2.1",
            datetime(2027, 3, 1, tzinfo=UTC),
            False,
            "key {label} expired at 2026-12-31T00:00:00+00:00",
        ),
        (
            0,
            "192.0.2.1",
            datetime(2026, 12, 30, 23, 59, 59, tzinfo=UTC),
            True,
            "key {label} accepted from 192.0.2.1",
        ),
        (1, "10.1.2.3", NOW, True, "key {label} accepted from 10.1.2.3"),
        (1, "2001:db8::7", NOW, True, "key {label} accepted from 2001:db8::7"),
        (1, "::ffff:10.1.2.3", NOW, True, "key {label} accepted from ::ffff:10.1.2.3"),
        (
            1,
            "10.0.0.9",
            NOW,
            False,
            "key {label} not allowed from 10.0.0.9 (from=10.0.0.0/8,!10.0.0.9,2001:db8::/32)",
        ),
        (
            1,
            "192.0.2.1",
            NOW,
            False,
            "key {label} not allowed from 192.0.2.1 (from=10.0.0.0/8,!10.0.0.9,2001:db8::/32)",
        ),
        (2, "10.1.2.3", NOW, False, "key {label} has neither permitlisten nor permitopen"),
    ],
)
def test_authenticate(
    policy: AccessPolicy,
    keys: list[str],
    who: int,
    source: str,
    now: datetime,
    allowed: bool,
    reason: str,
) -> None:
    comments = ["agent@home", "alice", ""]
    decision = policy.authenticate(_blob(keys[who]), source, now)
    assert decision == Decision(allowed, reason.format(label=_label(keys[who], comments[who])))
    assert bool(decision) is allowed


def test_authenticate_unknown_key(policy: AccessPolicy) -> None:
    stranger = _blob(_pub(asyncssh.generate_private_key("ssh-ed25519")))
    decision = policy.authenticate(stranger, "10.1.2.3", NOW)
    assert decision == Decision(False, f"unknown key {fingerprint(stranger)}")
    assert not decision


def test_from_hostname_is_refused(key: str) -> None:
    """A host name never matches (the bastion never resolves names), so "!name" would let
    the host in: the line is refused instead (issue 8, item 8)."""
    with pytest.raises(ConfigError) as info:
        parse_access(f'from="bastion.example.com",permitopen="a:22" {key}', "access")
    assert info.value.message.startswith(
        "access:1: from= pattern 'bastion.example.com' is a host name; the bastion never "
        "resolves names"
    )


def test_local_expiry_is_compared_in_local_time(tz_utc_minus_5: None, key: str) -> None:
    entry = _only(f'expiry-time="202612311900",permitopen="a:22" {key}')  # 2027-01-01 00:00Z
    assert not entry.is_expired(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert entry.is_expired(datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC))


# --- AccessEntry.may_publish / may_reach -----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "name", "port", "allowed", "reason"),
    [
        (
            'permitlisten="homebox:22"',
            "homebox",
            22,
            True,
            "permitlisten=homebox:22 allows homebox:22",
        ),
        (
            'permitlisten="homebox:22"',
            "homebox",
            2222,
            False,
            "key {label} may publish only homebox:22, not homebox:2222",
        ),
        (
            'permitlisten="homebox:22,*.lab.example:*"',
            "nas.lab.example",
            443,
            True,
            "permitlisten=*.lab.example:* allows nas.lab.example:443",
        ),
        (
            'permitlisten="homebox:22,*.lab.example:*"',
            "a.nas.lab.example",
            443,
            False,
            "key {label} may publish only homebox:22,*.lab.example:*, not a.nas.lab.example:443",
        ),
        (
            'permitlisten="HomeBox:22"',
            "homebox",
            22,
            True,
            "permitlisten=homebox:22 allows homebox:22",
        ),
        (
            'permitlisten="*:*"',
            "anything.at.all",
            1,
            True,
            "permitlisten=*:* allows anything.at.all:1",
        ),
        (
            'permitopen="homebox:22"',
            "homebox",
            22,
            False,
            "key {label} has no permitlisten (it may not publish)",
        ),
        (
            'no-port-forwarding,permitlisten="homebox:22"',
            "homebox",
            22,
            False,
            "key {label} has no-port-forwarding",
        ),
        (
            'restrict,permitlisten="homebox:22"',
            "homebox",
            22,
            True,
            "permitlisten=homebox:22 allows homebox:22",
        ),
    ],
)
def test_may_publish(
    key: str, options: str, name: str, port: int, allowed: bool, reason: str
) -> None:
    entry = _only(f"{options} {key} agent")
    decision = entry.may_publish(name, port)
    assert decision == Decision(allowed, reason.format(label=_label(key, "agent")))


@pytest.mark.parametrize(
    ("options", "name", "port", "allowed", "reason"),
    [
        ('permitopen="homebox:22"', "homebox", 22, True, "permitopen=homebox:22 allows homebox:22"),
        (
            'permitopen="*.home.example.com:22"',
            "a.home.example.com",
            22,
            True,
            "permitopen=*.home.example.com:22 allows a.home.example.com:22",
        ),
        (
            'permitopen="*.home.example.com:22"',
            "a.b.home.example.com",
            22,
            False,
            "key {label} may reach only *.home.example.com:22, not a.b.home.example.com:22",
        ),
        (
            'permitopen="*.home.example.com:22"',
            "home.example.com",
            22,
            False,
            "key {label} may reach only *.home.example.com:22, not home.example.com:22",
        ),
        (
            'permitopen="a:22",permitopen="b:*"',
            "b",
            8080,
            True,
            "permitopen=b:* allows b:8080",
        ),
        (
            'permitopen="a:22",permitopen="b:*"',
            "c",
            22,
            False,
            "key {label} may reach only a:22,b:*, not c:22",
        ),
        (
            'permitlisten="homebox:22"',
            "homebox",
            22,
            False,
            "key {label} has no permitopen (it may not reach names)",
        ),
        (
            'permitopen="homebox:22",no-port-forwarding',
            "homebox",
            22,
            False,
            "key {label} has no-port-forwarding",
        ),
    ],
)
def test_may_reach(
    key: str, options: str, name: str, port: int, allowed: bool, reason: str
) -> None:
    entry = _only(f"{options} {key} alice")
    decision = entry.may_reach(name, port)
    assert decision == Decision(allowed, reason.format(label=_label(key, "alice")))


def test_label_without_comment(key: str) -> None:
    entry = _only(f'permitopen="a:22" {key}')
    assert entry.label == fingerprint(_blob(key))
    assert entry.may_reach("b", 22).reason == (
        f"key {fingerprint(_blob(key))} may reach only a:22, not b:22"
    )


# --- fingerprint -----------------------------------------------------------------------------


def _ssh_keygen() -> str:
    if SSH_KEYGEN is None:
        if REQUIRE_OPENSSH:
            pytest.fail("ssh-keygen not installed but SSHTUN_REQUIRE_OPENSSH=1")
        pytest.skip("ssh-keygen not installed")
    return SSH_KEYGEN


def test_fingerprint_equals_ssh_keygen(tmp_path: Path) -> None:
    keygen = _ssh_keygen()
    info = generate_key(tmp_path / "agent_key", comment="agent@home")
    out = subprocess.run(
        [keygen, "-lf", str(tmp_path / "agent_key.pub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    # "256 SHA256:... agent@home (ED25519)"
    assert out[0] == "256"
    entry = _only(f'permitlisten="homebox:22" {info.public_line}')
    assert entry.fingerprint == out[1]
    assert info.fingerprint == out[1]


@pytest.mark.parametrize(("algorithm", "bits"), [("ecdsa-sha2-nistp256", 256), ("ssh-rsa", 2048)])
def test_fingerprint_equals_ssh_keygen_other_types(
    tmp_path: Path, algorithm: str, bits: int
) -> None:
    keygen = _ssh_keygen()
    kwargs = {"key_size": 2048} if algorithm == "ssh-rsa" else {}
    pub = _pub(asyncssh.generate_private_key(algorithm, **kwargs))
    path = tmp_path / "k.pub"
    path.write_text(pub + " c\n")
    out = subprocess.run(
        [keygen, "-lf", str(path)], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out[0] == str(bits)
    assert fingerprint(_blob(pub)) == out[1]


def test_fingerprint_format() -> None:
    fp = fingerprint(b"")
    # sha256 of nothing, base64 without padding
    assert fp == "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"


# --- load_access -----------------------------------------------------------------------------


def test_load_access(tmp_path: Path, key: str) -> None:
    path = tmp_path / "access"
    path.write_text(f'permitlisten="homebox:22" {key} agent\n')
    policy = load_access(path)
    assert policy.source == str(path)
    assert [e.comment for e in policy.entries] == ["agent"]


def test_load_access_error_names_the_file(tmp_path: Path, key: str) -> None:
    path = tmp_path / "access"
    path.write_text(f'\npermitlisten="homebox" {key} agent\n')
    with pytest.raises(ConfigError) as info:
        load_access(path)
    assert info.value.message == (
        f"{path}:2: permitlisten: 'homebox' must be name:port (port may be *)"
    )


def test_load_access_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "access"
    with pytest.raises(ConfigError) as info:
        load_access(path)
    assert info.value.message == f"access file {path} does not exist"
    assert info.value.hint == "create it with one authorized_keys line per agent or client key"
    assert info.value.exit_code == EXIT_CONFIG


def test_load_access_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_access(tmp_path)
    assert info.value.message.startswith(f"cannot read access file {tmp_path}: ")


def test_load_access_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "access"
    path.write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(ConfigError) as info:
        load_access(path)
    assert info.value.message.startswith(f"cannot read access file {path}: ")
    assert "utf-8" in info.value.message


def test_a_truncated_rsa_key_is_refused_not_read_as_a_smaller_key() -> None:
    """A copy-paste that lost the end of an RSA key used to load as "ssh-rsa 1016"."""
    import asyncssh

    line = asyncssh.generate_private_key("ssh-rsa", key_size=3072).export_public_key()
    key_type, b64 = line.decode().split()[:2]
    whole = base64.b64decode(b64)
    cut = base64.b64encode(whole[: len(whole) - 258]).decode()  # a few lines short
    assert decode_key(key_type, b64) == whole
    with pytest.raises(ValueError, match="truncated"):
        decode_key(key_type, cut)
    padded = base64.b64encode(whole + b"\0\0\0\0").decode()  # an extra empty field
    with pytest.raises(ValueError, match="not a complete ssh-rsa key"):
        decode_key(key_type, padded)
