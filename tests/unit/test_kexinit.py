"""RFC 4253 §7's rule for a guessed first key-exchange packet, as a table, and the KEXINIT
reader it works from. No sockets: lists in, a decision out. The real Dropbear client is
in tests/integration/test_dropbear.py."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.core.kexinit import KexInit, guess_is_right, ignore_guessed_packet, parse_kexinit

# What the peers in question send (first entries matter; the rest is for realism).
DROPBEAR = KexInit(
    (
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "ecdh-sha2-nistp521",
        "diffie-hellman-group14-sha256",
        "kexguess2@matt.ucc.asn.au",
        "ext-info-c",
        "kex-strict-c-v00@openssh.com",
    ),
    ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-256", "ssh-rsa"),
    first_kex_follows=True,
)
BASTION_CURVE_FIRST = KexInit(
    ("curve25519-sha256", "curve25519-sha256@libssh.org", "mlkem768x25519-sha256", "ext-info-s"),
    ("ssh-ed25519",),
)
BASTION_MLKEM_FIRST = KexInit(
    ("mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org"),
    ("ssh-ed25519",),
)


def kex(kex_algs: str, host_key_algs: str = "ssh-ed25519", follows: bool = False) -> KexInit:
    return KexInit(
        tuple(kex_algs.split(",")) if kex_algs else (),
        tuple(host_key_algs.split(",")) if host_key_algs else (),
        first_kex_follows=follows,
    )


@pytest.mark.parametrize(
    ("client", "server", "right"),
    [
        # Both prefer the same kex and host key algorithm: the guess is used.
        (DROPBEAR, BASTION_CURVE_FIRST, True),
        (kex("a,b"), kex("a"), True),
        (kex("a", "k1,k2"), kex("a,b", "k1"), True),
        # The case asyncssh 2.24 gets wrong: negotiation picks the client's first (the
        # server supports it), but the server prefers another one: the guess is wrong.
        (DROPBEAR, BASTION_MLKEM_FIRST, False),
        (kex("a,b"), kex("b,a"), False),
        (kex("a"), kex("b,a"), False),
        # Same kex, different first host key algorithm: wrong too.
        (kex("a", "k1,k2"), kex("a", "k2,k1"), False),
        (kex("a", "k1"), kex("a", "k2,k1"), False),
        # Nothing in common, or empty lists: never right.
        (kex("a"), kex("b"), False),
        (kex(""), kex(""), False),
        (kex("a", ""), kex("a", ""), False),
        # Names are exact (RFC 4251 §6): no case folding.
        (kex("A"), kex("a"), False),
    ],
)
def test_guess_is_right_only_when_both_first_choices_agree(
    client: KexInit, server: KexInit, right: bool
) -> None:
    assert guess_is_right(client, server) is right


@pytest.mark.parametrize(
    ("peer", "ours", "we_are_server", "ignore"),
    [
        # Server side: the peer is the client.
        (DROPBEAR, BASTION_CURVE_FIRST, True, False),
        (DROPBEAR, BASTION_MLKEM_FIRST, True, True),
        # No guess sent: nothing to drop, whatever the lists.
        (kex("a", follows=False), kex("b"), True, False),
        (kex("a", follows=False), kex("b"), False, False),
        # Client side (the agent): the peer is a guessing server; the client's list is ours.
        (kex("b,a", follows=True), kex("a,b"), False, True),
        (kex("a,b", follows=True), kex("a"), False, False),
        (kex("b", follows=True), kex("a,b"), False, True),
    ],
)
def test_ignore_guessed_packet(
    peer: KexInit, ours: KexInit, we_are_server: bool, ignore: bool
) -> None:
    assert ignore_guessed_packet(peer, ours, we_are_server=we_are_server) is ignore


def name_list(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(4, "big") + raw


def kexinit_body(kex_algs: str, host_key_algs: str, follows: bool) -> bytes:
    lists = [kex_algs, host_key_algs, "aes128-ctr", "aes128-ctr", "hmac-sha2-256"]
    lists += ["hmac-sha2-256", "none", "none", "", ""]
    return (
        b"\x11" * 16
        + b"".join(name_list(x) for x in lists)
        + (b"\x01" if follows else b"\x00")
        + b"\x00\x00\x00\x00"
    )


def test_parse_kexinit_reads_the_first_two_lists_and_the_guess_flag() -> None:
    body = kexinit_body("curve25519-sha256,ext-info-c", "ssh-ed25519,rsa-sha2-256", True)
    assert parse_kexinit(body) == KexInit(
        ("curve25519-sha256", "ext-info-c"), ("ssh-ed25519", "rsa-sha2-256"), True
    )
    assert parse_kexinit(kexinit_body("a", "", False)) == KexInit(("a",), (), False)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x11" * 16,  # cookie only
        kexinit_body("a", "k", True)[:-5],  # no flag, no reserved word
        kexinit_body("a", "k", True)[:30],  # cut inside a list
        b"\x11" * 16 + (1000).to_bytes(4, "big") + b"short",  # length beyond the end
        kexinit_body("caf\u00e9", "k", False),  # not ASCII
    ],
)
def test_parse_kexinit_refuses_a_short_or_garbled_body(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_kexinit(body)
