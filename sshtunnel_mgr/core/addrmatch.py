"""``from=`` source-address patterns, compiled once and matched fail-closed.

OpenSSH's ``from=`` (``addr_match_list``) takes a comma list of CIDR blocks, addresses and
``*``/``?`` wildcards matched against the peer's address text; a ``!`` pattern that
matches refuses. A pattern that never matches because it is spelled differently from the
peer's address (``!192.0.2.09``, ``!2001:0db8::1``, ``!::ffff:192.0.2.9``) would let in the
very address it excludes, so here:

- addresses are compared as numbers, not text; an IPv4-mapped IPv6 address
  (``::ffff:a.b.c.d``, on either side) is its IPv4 address, and a CIDR block inside
  ``::ffff:0:0/96`` is the matching IPv4 block. Otherwise families never mix.
- wildcards match the peer's canonical text (RFC 5952 for IPv6, dotted quad for IPv4);
  a wildcard whose fixed parts can never appear in canonical text (leading zeros, ``0:0``
  runs, ``::ffff:`` prefixes, upper case is folded) is refused.
- a zone (``fe80::1%eth0``) is deliberate: a negative pattern excludes the address on
  every interface; a positive one allows it only on that interface (same zone text). A
  pattern without a zone matches the address on any interface.
- host names are refused: the bastion never resolves a name.

Anything else raises ``ValueError`` naming the pattern, so the whole access line is
refused. Pure: no sockets, no name resolution.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
BadFn = Callable[[str], ValueError]  # makes the error that names the pattern

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_V4_GLOB = re.compile(r"[0-9.*?]+")
_V6_GLOB = re.compile(r"[0-9a-f:*?]+")
_ZONE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOSTNAME = re.compile(r"[A-Za-z0-9._*?-]+")
_WILD = "*?"
_HINT = "use an address, a CIDR block (192.0.2.0/24) or an address wildcard (192.0.2.*)"


@dataclass(frozen=True)
class Peer:
    """A peer's address, canonical: mapped IPv6 as IPv4, the zone kept apart."""

    ip: Address
    zone: str | None

    @property
    def text(self) -> str:
        return str(self.ip)


@dataclass(frozen=True)
class FromPattern:
    """One compiled ``from=`` pattern: exactly one of ``network``/``address``/``glob``."""

    text: str  # as written, with its "!"
    negate: bool
    network: Network | None = None
    address: Address | None = None
    zone: str | None = None
    glob: str | None = None

    def matches(self, peer: Peer) -> bool:
        if self.network is not None:
            return peer.ip.version == self.network.version and peer.ip in self.network
        if self.address is not None:
            if peer.ip != self.address:
                return False
            # A zone narrows an allow, never an exclusion (fail closed both ways).
            return self.negate or self.zone is None or self.zone == peer.zone
        assert self.glob is not None
        return fnmatch.fnmatchcase(peer.text, self.glob)


def canonical(ip: Address) -> Address:
    """``::ffff:a.b.c.d`` is ``a.b.c.d``; a zone is dropped (``Peer`` keeps it)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ipaddress.IPv6Address(int(ip))  # without its scope id
    return ip


def parse_peer(address: str) -> Peer | None:
    """The peer as a socket names it (``192.0.2.9``, ``::ffff:192.0.2.9``, ``fe80::1%2``);
    None when it is not an IP address (it then matches nothing)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    zone = ip.scope_id if isinstance(ip, ipaddress.IPv6Address) else None
    return Peer(canonical(ip), zone or None)


def parse_pattern(raw: str) -> FromPattern:
    """Compile one pattern; ``ValueError`` (naming it) when it is not an address, a CIDR
    block or a supported wildcard."""
    negate = raw.startswith("!")
    pat = raw[1:] if negate else raw
    if not pat:
        raise ValueError("from= has an empty pattern")

    def bad(why: str) -> ValueError:
        return ValueError(f"from= pattern {raw!r} {why}")

    if "/" in pat:
        return FromPattern(raw, negate, network=_network(pat, bad))
    if any(c in pat for c in _WILD):
        return FromPattern(raw, negate, glob=_glob(pat, bad))
    address, zone = _address(pat, bad)
    return FromPattern(raw, negate, address=address, zone=zone)


def _network(pat: str, bad: BadFn) -> Network:
    if "%" in pat:
        raise bad("is not a valid CIDR block (a zone cannot be given on a block)")
    try:
        net = ipaddress.ip_network(pat, strict=False)
    except ValueError:
        raise bad("is not a valid CIDR block") from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        first = net.network_address.ipv4_mapped
        assert first is not None
        return ipaddress.IPv4Network((int(first), net.prefixlen - 96))
    return net


def _address(pat: str, bad: BadFn) -> tuple[Address, str | None]:
    try:
        ip = ipaddress.ip_address(pat)
    except ValueError:
        head = pat.split("%", 1)[0]
        if re.fullmatch(r"[0-9.]+", head) and re.search(r"(^|\.)0[0-9]", head):
            raise bad(
                "has a leading zero (read as octal by some tools): write the address without it"
            ) from None
        if _HOSTNAME.fullmatch(pat) and re.search(r"[g-zG-Z_-]", pat):
            raise bad(f"is a host name; the bastion never resolves names: {_HINT}") from None
        raise bad(f"is not an IP address: {_HINT}") from None
    zone = ip.scope_id if isinstance(ip, ipaddress.IPv6Address) else None
    if zone is not None:
        if not _ZONE.fullmatch(zone):
            raise bad("has an invalid zone (write it like fe80::1%eth0)")
        if not ip.is_link_local:
            raise bad("has a zone, but only link-local (fe80::/10) addresses take one")
    return canonical(ip), zone


def _glob(pat: str, bad: BadFn) -> str:
    """A wildcard pattern, lower case, checked so that its fixed parts can occur in the
    canonical text of some address."""
    if "%" in pat:
        raise bad("has a zone: zones are allowed on plain addresses only")
    glob = pat.lower()
    if set(glob) <= set(_WILD):
        return glob
    if ":" in glob:
        _check_v6_glob(glob, bad)
    elif _V4_GLOB.fullmatch(glob):
        _check_v4_glob(glob, bad)
    elif _HOSTNAME.fullmatch(pat):
        raise bad(f"is a host-name pattern; the bastion never resolves names: {_HINT}")
    else:
        raise bad(f"is not an address wildcard: {_HINT}")
    return glob


def _leading_zero(part: str) -> bool:
    return len(part) > 1 and part[0] == "0" and part[1] not in _WILD


def _check_v4_glob(glob: str, bad: BadFn) -> None:
    parts = glob.split(".")
    if len(parts) > 4:
        raise bad("has more than four parts: it can never match an IPv4 address")
    for part in parts:
        if _leading_zero(part):
            raise bad("has a leading zero; addresses are compared without them")
        digits = re.findall(r"[0-9]+", part)
        if any(len(d) > 3 for d in digits) or (part.isdigit() and int(part) > 255):
            raise bad("has a part above 255: it can never match an IPv4 address")


def _check_v6_glob(glob: str, bad: BadFn) -> None:
    if not _V6_GLOB.fullmatch(glob):
        if "." in glob:
            raise bad(
                "mixes IPv6 and IPv4 notation: an IPv4-mapped peer is compared as IPv4, "
                "write the IPv4 pattern (192.0.2.*)"
            )
        raise bad(f"is not an address wildcard: {_HINT}")
    if glob.startswith("::ffff:"):
        raise bad("can never match: an IPv4-mapped peer is compared as IPv4 (192.0.2.*)")
    if ":::" in glob or glob.count("::") > 1:
        raise bad("is not an IPv6 address wildcard (more than one '::')")
    parts = glob.split(":")
    for i, part in enumerate(parts):
        if _leading_zero(part):
            raise bad("has a leading zero in a group; addresses are compared without them")
        if not any(c in part for c in _WILD) and len(part) > 4:
            raise bad("has a group longer than four hex digits")
        if part == "0" and i + 1 < len(parts) and parts[i + 1] == "0":
            raise bad(
                "has a run of zero groups, which canonical text writes as '::': "
                "use a CIDR block (2001:db8::/32)"
            )


def match_from(patterns: Iterable[str], address: str) -> bool:
    """OpenSSH ``from=`` semantics: some pattern matches and no ``!`` pattern does. An
    unparseable pattern or peer address matches nothing (deny; the loader refuses such
    lines before they get here)."""
    peer = parse_peer(address)
    if peer is None:
        return False
    try:
        compiled = [parse_pattern(p) for p in patterns]
    except ValueError:
        return False
    matched = False
    for pattern in compiled:
        if pattern.matches(peer):
            if pattern.negate:
                return False
            matched = True
    return matched
