"""Per-source penalties for failed authentication, like OpenSSH's PerSourcePenalties.

Pure logic, no I/O: the clock is injected. A source is an IPv4 address or an IPv6 /64
(one IPv6 host usually owns a whole /64, so counting single addresses would be useless).
Failed authentications from a source are counted (the bastion counts one per connection
that tried to authenticate and ended without logging in, never one per refused key offer);
a failure ``penalty_seconds`` or more
after the previous one starts the count again. When the count reaches
``max_failures``, the source is refused for ``penalty_seconds`` (the cool-down); after it,
the source starts clean. A successful login clears the count (a person whose ssh-agent
offers a few wrong keys first is not locked out), but never a running cool-down.

Memory is bounded: at most ``max_sources`` sources are tracked; expired ones are dropped
as time passes, and when the table is full the least recently touched source is forgotten.
Nothing is exempt by default, not even loopback; ``exempt`` lists networks that are.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IPV6_PREFIX = 64
DEFAULT_MAX_SOURCES = 65536


@dataclass
class _Record:
    failures: int
    expires_at: float  # the end of the cool-down, or when the failures are forgotten
    cooling: bool = False
    refused: int = 0  # connections and logins refused during this cool-down


@dataclass(frozen=True)
class Penalty:
    """A source that is cooling down: refuse it, and say why."""

    source: str
    failures: int
    remaining: float  # seconds
    refused: int = field(default=0, compare=False)  # refusals in this cool-down, this one too

    @property
    def worth_logging(self) -> bool:
        """Log the first refusals of a cool-down, then every 100th: a source hammering the
        bastion cannot fill its disk with log lines."""
        return self.refused <= 10 or self.refused % 100 == 0

    @property
    def reason(self) -> str:
        return (
            f"source {self.source} is cooling down for {math.ceil(self.remaining)} s "
            f"after {self.failures} failed authentications"
        )


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def source_of(address: str) -> str | None:
    """The key a peer address is counted under, or ``None`` when it is not an IP address."""
    ip = _ip(address)
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))


class SourcePenalties:
    def __init__(
        self,
        max_failures: int,
        penalty_seconds: float,
        *,
        exempt: Iterable[str] = (),
        max_sources: int = DEFAULT_MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be >= 1")
        self.clock = clock
        self.max_sources = max_sources
        self._records: OrderedDict[str, _Record] = OrderedDict()  # by expires_at, oldest first
        self.max_failures = max_failures
        self.penalty_seconds = penalty_seconds
        self.exempt: tuple[IPNetwork, ...] = ()
        self.configure(max_failures, penalty_seconds, exempt)

    def configure(self, max_failures: int, penalty_seconds: float, exempt: Iterable[str]) -> None:
        """New limits (a reload); sources already cooling down keep their deadline.
        ``max_failures`` 0 turns penalties off."""
        self.max_failures = max_failures
        self.penalty_seconds = penalty_seconds
        self.exempt = tuple(ipaddress.ip_network(n) for n in exempt)
        if max_failures == 0:
            self._records.clear()

    def __len__(self) -> int:
        return len(self._records)

    # Decisions ------------------------------------------------------------------------
    def check(self, address: str) -> Penalty | None:
        """The running cool-down of ``address``'s source, if any (counted as a refusal)."""
        self._expire()
        source = self._key(address)
        record = self._live(source)
        if source is None or record is None or not record.cooling:
            return None
        record.refused += 1
        return Penalty(source, record.failures, record.expires_at - self.clock(), record.refused)

    def failed(self, address: str) -> Penalty | None:
        """Count one failed authentication; the cool-down if this one started it (or one
        is already running)."""
        self._expire()
        source = self._key(address)
        if source is None:
            return None
        now = self.clock()
        record = self._live(source)
        if record is not None and record.cooling:
            # A connection that was already past the check when the cool-down began.
            record.failures += 1
            return Penalty(source, record.failures, record.expires_at - now)
        if record is None:
            record = _Record(failures=0, expires_at=0.0)
            self._make_room()
            self._records[source] = record
        record.failures += 1
        record.expires_at = now + self.penalty_seconds
        self._records.move_to_end(source)
        if record.failures >= self.max_failures:
            record.cooling = True
            return Penalty(source, record.failures, self.penalty_seconds)
        return None

    def succeeded(self, address: str) -> None:
        """A login from ``address`` worked: forget its failures (not its cool-down)."""
        source = self._key(address)
        record = self._live(source)
        if source is not None and record is not None and not record.cooling:
            del self._records[source]

    # Bookkeeping ----------------------------------------------------------------------
    def _key(self, address: str) -> str | None:
        if self.max_failures == 0:
            return None
        ip = _ip(address)
        if ip is None or any(ip.version == n.version and ip in n for n in self.exempt):
            return None
        return source_of(str(ip))

    def _live(self, source: str | None) -> _Record | None:
        if source is None:
            return None
        record = self._records.get(source)
        if record is not None and record.expires_at <= self.clock():
            del self._records[source]
            return None
        return record

    def _expire(self) -> None:
        now = self.clock()
        records = self._records
        while records:
            source, record = next(iter(records.items()))
            if record.expires_at > now:
                break
            del records[source]

    def _make_room(self) -> None:
        while len(self._records) >= self.max_sources:
            self._records.popitem(last=False)
