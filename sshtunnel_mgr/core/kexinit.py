"""KEXINIT name lists and the rule for a guessed first key-exchange packet (RFC 4253 §7).

A side may send its first key-exchange packet right after its KEXINIT, before it has seen
the peer's, for the algorithms it guesses (its own first choices), and sets
``first_kex_packet_follows``. RFC 4253 §7 calls the guess wrong when "the kex algorithm
and/or the host key algorithm is guessed wrong (server and client have different preferred
algorithm)": the guess is right only if the client's first key exchange equals the
server's first, and the client's first host key algorithm equals the server's first. Then
the guessed packet is used; otherwise it MUST be ignored and the guessing side sends the
right packet again. OpenSSH (``proposals_match``) and Dropbear (``buf_match_algo`` without
``kexguess2``) judge by exactly these first entries.

asyncssh 2.24 judges instead by whether the *negotiated* key exchange equals the peer's
first entry. That differs when the client's first choice is further down the server's
list: negotiation still picks the client's first (so asyncssh uses the guessed packet),
but the client sees different first entries, calls its own guess wrong and sends its
packet again; asyncssh then gets a key-exchange packet after the exchange ended and
aborts ("Key exchange not in progress"). Dropbear's ``dbclient`` always guesses.

Pure: bytes and tuples in, a decision out. ``sshcompat/kexguess.py`` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

_COOKIE = 16
_NAME_LISTS = 10  # kex, host key, enc c2s/s2c, mac c2s/s2c, comp c2s/s2c, lang c2s/s2c


@dataclass(frozen=True)
class KexInit:
    """What of one side's KEXINIT decides whether a guessed packet counts."""

    kex_algs: tuple[str, ...]
    host_key_algs: tuple[str, ...]
    first_kex_follows: bool = False


def parse_kexinit(body: bytes) -> KexInit:
    """Read a KEXINIT body (everything after the message-type byte: the 16-byte cookie,
    ten name-lists, the boolean and the reserved word). ``ValueError`` if it is cut short
    or a name-list is not ASCII."""
    pos = _COOKIE
    lists: list[tuple[str, ...]] = []
    for _ in range(_NAME_LISTS):
        if pos + 4 > len(body):
            raise ValueError("KEXINIT cut short in a name-list length")
        size = int.from_bytes(body[pos : pos + 4], "big")
        pos += 4
        if pos + size > len(body):
            raise ValueError("KEXINIT cut short in a name-list")
        raw = body[pos : pos + size]
        pos += size
        text = raw.decode("ascii")  # UnicodeDecodeError is a ValueError
        lists.append(tuple(text.split(",")) if text else ())
    if pos + 5 > len(body):
        raise ValueError("KEXINIT cut short after the name-lists")
    return KexInit(lists[0], lists[1], first_kex_follows=body[pos] != 0)


def guess_is_right(client: KexInit, server: KexInit) -> bool:
    """RFC 4253 §7: both sides prefer the same key exchange and the same host key
    algorithm (first entries equal; an empty list never matches)."""
    return (
        bool(client.kex_algs)
        and bool(client.host_key_algs)
        and client.kex_algs[:1] == server.kex_algs[:1]
        and client.host_key_algs[:1] == server.host_key_algs[:1]
    )


def ignore_guessed_packet(peer: KexInit, ours: KexInit, *, we_are_server: bool) -> bool:
    """Whether the key-exchange packet after the peer's KEXINIT is a wrong guess that must
    be dropped unread (False when the peer sent no guess)."""
    if not peer.first_kex_follows:
        return False
    client, server = (peer, ours) if we_are_server else (ours, peer)
    return not guess_is_right(client, server)
