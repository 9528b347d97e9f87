"""``from=`` patterns fail closed (issue 8, item 8): every spelling of an address means that
address, and a pattern that could never match is refused with the line that holds it."""

from __future__ import annotations

import asyncssh
import pytest

from sshtunnel_mgr.core.access import parse_access
from sshtunnel_mgr.core.addrmatch import match_from, parse_pattern
from sshtunnel_mgr.core.errors import ConfigError


@pytest.mark.parametrize(
    ("patterns", "address", "expected"),
    [
        # the spellings from the issue: each excludes the address it names
        (["*", "!2001:0db8::1"], "2001:db8::1", False),
        (["*", "!2001:0db8::1"], "2001:db8::2", True),
        (["*", "!2001:DB8::1"], "2001:db8:0:0:0:0:0:1", False),
        (["*", "!::ffff:192.0.2.9"], "192.0.2.9", False),
        (["*", "!::ffff:192.0.2.9"], "::ffff:192.0.2.9", False),
        (["*", "!::ffff:c000:209"], "192.0.2.9", False),
        (["*", "!0:0:0:0:0:ffff:192.0.2.9"], "192.0.2.9", False),
        (["*", "!192.0.2.9"], "::ffff:192.0.2.9", False),  # an IPv6 socket's view of a v4 peer
        (["*", "!::ffff:192.0.2.0/120"], "192.0.2.77", False),  # a mapped block is a v4 block
        (["::ffff:192.0.2.0/120"], "::ffff:192.0.2.77", True),
        (["::ffff:192.0.2.0/120"], "192.0.3.1", False),
        # zones: an exclusion holds on every interface; an allow only on its own
        (["*", "!fe80::1%eth0"], "fe80::1%eth0", False),
        (["*", "!fe80::1%eth0"], "fe80::1%eth1", False),
        (["*", "!fe80::1%eth0"], "fe80::1%2", False),
        (["*", "!fe80::1%eth0"], "fe80::1", False),
        (["*", "!fe80::1"], "fe80::1%eth0", False),
        (["fe80::1%eth0"], "fe80::1%eth0", True),
        (["fe80::1%eth0"], "fe80::1%eth1", False),
        (["fe80::1%eth0"], "fe80::1", False),
        (["fe80::1"], "fe80::1%eth0", True),
        (["fe80::/10"], "fe80::1%eth0", True),
        # families never mix (as OpenSSH's addr_netmatch)
        (["::/0"], "192.0.2.1", False),
        (["*", "!::/0"], "192.0.2.1", True),
        (["*", "!::/0"], "2001:db8::1", False),
        (["0.0.0.0/0"], "2001:db8::1", False),
        # wildcards match canonical text; a mapped peer's text is its IPv4 address
        (["192.0.2.*"], "::ffff:192.0.2.7", True),
        (["*", "!192.0.2.*"], "::ffff:192.0.2.7", False),
        (["192.168.*"], "192.168.10.20", True),
        (["1?.0.0.1"], "10.0.0.1", True),
        (["1?.0.0.1"], "1.0.0.1", False),
        (["10.0*"], "10.0.7.7", True),
        (["2001:db8::*"], "2001:db8::5", True),
        (["2001:db8::*"], "2001:db8:1::5", False),  # text, as OpenSSH: use CIDR for ranges
        (["2001:DB8::*"], "2001:db8::5", True),
        (["?"], "192.0.2.1", False),
        # a pattern that does not parse denies everything (the loader refuses it first)
        (["*", "!127.0.0.01"], "127.0.0.1", False),
        (["*", "!127.0.0.01"], "192.0.2.1", False),
        (["127.0.0.1", "localhost"], "127.0.0.1", False),
        # a peer that is not an address matches nothing
        (["*"], "localhost", False),
        (["*"], "", False),
    ],
)
def test_match_from(patterns: list[str], address: str, expected: bool) -> None:
    assert match_from(patterns, address) is expected


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("192.0.2.09", "has a leading zero (read as octal by some tools)"),
        ("!127.0.0.01", "has a leading zero (read as octal by some tools)"),
        ("010.0.0.1", "has a leading zero (read as octal by some tools)"),
        ("!192.0.2.0*", None),  # accepted: "0*" can match the "0" of "192.0.2.0"
        ("192.0.2.01*", "has a leading zero; addresses are compared without them"),
        ("bastion.example.com", "is a host name; the bastion never resolves names"),
        ("!localhost", "is a host name; the bastion never resolves names"),
        ("*.example.com", "is a host-name pattern; the bastion never resolves names"),
        ("1.2.3.4.*", "has more than four parts"),
        ("256.*", "has a part above 255"),
        ("1000*", "has a part above 255"),
        ("2001:0db8::*", "has a leading zero in a group"),
        ("2001:db8:0:0:*", "has a run of zero groups"),
        ("::ffff:192.0.2.*", "mixes IPv6 and IPv4 notation"),
        ("!::ffff:*", "can never match: an IPv4-mapped peer is compared as IPv4"),
        ("1::2::*", "is not an IPv6 address wildcard (more than one '::')"),
        ("1:::*", "is not an IPv6 address wildcard (more than one '::')"),
        ("12345::*", "has a group longer than four hex digits"),
        ("2001:db8::g*", "is not an address wildcard"),
        ("fe80::1%eth0/64", "is not a valid CIDR block (a zone cannot be given on a block)"),
        ("fe80::*%eth0", "has a zone: zones are allowed on plain addresses only"),
        ("2001:db8::1%eth0", "has a zone, but only link-local (fe80::/10) addresses take one"),
        ("fe80::1%eth0$", "has an invalid zone"),
        ("fe80::1%", "is not an IP address"),
        ("10.0.0.0/33", "is not a valid CIDR block"),
        ("10.0.0.0/", "is not a valid CIDR block"),
        ("a/b", "is not a valid CIDR block"),
        ("192.0.2.1 ", "is not an IP address"),
    ],
)
def test_patterns_that_could_never_match_are_refused(pattern: str, why: str | None) -> None:
    if why is None:
        assert parse_pattern(pattern).text == pattern
        return
    with pytest.raises(ValueError) as info:
        parse_pattern(pattern)
    assert str(info.value).startswith(f"from= pattern {pattern!r} {why}")


@pytest.mark.parametrize(
    "pattern",
    [
        "*",
        "!192.0.2.9",
        "192.0.2.*",
        "192.0.2.?",
        "2001:0db8::1",  # an address with leading zeros in a group is unambiguous
        "::ffff:192.0.2.9",
        "fe80::1%eth0",
        "10.0.0.0/8",
        "192.0.2.1/24",  # host bits ignored, as before
        "::ffff:10.0.0.0/104",
        "2001:db8::/32",
    ],
)
def test_patterns_accepted(pattern: str) -> None:
    assert parse_pattern(pattern).text == pattern


def test_a_bad_pattern_refuses_the_whole_line_naming_it() -> None:
    keys = [
        " ".join(
            asyncssh.generate_private_key("ssh-ed25519")
            .export_public_key("openssh")
            .decode()
            .split()[:2]
        )
        for _ in range(2)
    ]
    text = (
        f'permitopen="a:22" {keys[0]} fine\n'
        f'from="10.0.0.0/8,!10.0.0.09",permitopen="a:22" {keys[1]} typo\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_access(text, "/etc/sshtun/access")
    assert info.value.message == (
        "/etc/sshtun/access:2: from= pattern '!10.0.0.09' has a leading zero (read as octal "
        "by some tools): write the address without it"
    )
    assert info.value.exit_code == 3
