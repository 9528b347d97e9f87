"""A bastion *name*'s addresses as plain data: the agent keeps one link per address.

``is_ip_literal`` tells an address to dial as written from a name to resolve.
``addresses`` turns what a resolver answered (A and AAAA, in its order of preference) into
canonical, de-duplicated addresses; ``diff`` says which links to add, drop and keep when
the name resolves again. An answer with no address counts as a failed resolution: the
current links stay (a DNS hiccup never drops every bastion at once).
``ResolveFailures`` decides which failed resolutions are worth a log line (the first, then
one per ``every`` seconds with a count), and says when the name resolves again.

Pure: no sockets, no event loop; the clock is injected.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IP address (``192.0.2.7``, ``2001:db8::1``, ``fe80::1%eth0``),
    dialled as written, rather than a name to resolve."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def canonical(address: str) -> str:
    """One spelling per address (``2001:0db8::0001`` → ``2001:db8::1``; an IPv4-mapped IPv6
    address is its IPv4 address); text that is not an address is returned unchanged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def addresses(answer: Iterable[str]) -> tuple[str, ...]:
    """The resolver's answer, canonical and de-duplicated, in the resolver's order."""
    seen: dict[str, None] = {}
    for item in answer:
        seen.setdefault(canonical(item), None)
    return tuple(seen)


@dataclass(frozen=True)
class AddressChange:
    """What one resolution changes: links to add, to drop (drained), and to keep."""

    added: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.dropped)


def diff(current: Iterable[str], answer: Iterable[str] | None) -> AddressChange:
    """Compare the addresses that have a link with a new answer (None: the resolution
    failed). A failed or empty answer keeps every current link."""
    have = addresses(current)
    found = addresses(answer or ())
    if not found:
        return AddressChange(kept=have)
    return AddressChange(
        added=tuple(a for a in found if a not in have),
        dropped=tuple(a for a in have if a not in found),
        kept=tuple(a for a in have if a in found),
    )


class ResolveFailures:
    """Which failed resolutions of one name get a log line: the first of an outage, then
    at most one per ``every`` seconds (carrying how many failed since the last line)."""

    def __init__(self, every: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        if every <= 0:
            raise ValueError("every must be > 0")
        self.every = every
        self.clock = clock
        self.failures = 0  # in the current outage
        self._unwritten = 0
        self._written_at: float | None = None

    def failed(self) -> int | None:
        """Count one failure; the number of failures to report now, or None (stay quiet)."""
        self.failures += 1
        self._unwritten += 1
        now = self.clock()
        if self._written_at is not None and now - self._written_at < self.every:
            return None
        self._written_at = now
        count, self._unwritten = self._unwritten, 0
        return count

    def resolved(self) -> int:
        """The name resolved: how many failures the outage had (0: there was none)."""
        count = self.failures
        self.failures = 0
        self._unwritten = 0
        self._written_at = None
        return count
