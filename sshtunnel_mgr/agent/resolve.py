"""Following a bastion *name* to every address it resolves to: ``NameFollower``.

A ``[[agent.bastions]]`` entry whose address is a host name (not an IP literal) gets one
link per address the name resolves to (A and AAAA records, through the system resolver:
/etc/hosts, DNS), so a DNS round-robin over several bastions gives every bastion this
agent's names, and losing one bastion leaves the others serving. The name is resolved
again every ``resolve_interval`` seconds:

- a new address gets a new link (same key, same host-key pin: every link checks the
  bastion's key under the *name*, as an OpenSSH client with ``HostName name`` does);
- an address that is gone has its link *leave*: its names are withdrawn (the bastion stops
  routing new sessions to it, as a reload's withdraw does), it stops reconnecting, and its
  connection closes once the routed sessions on it have ended; it is listed in ``status``
  until then;
- a failed resolution (or an answer with no address) keeps every current link; it is
  logged once, then at most every ten minutes with a count, and once more when the name
  resolves again. Until a name has resolved once, it is retried with the link backoff.

The set arithmetic is pure (``core.addrset``); this module does the resolving, the timing
and the links' lifecycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from sshtunnel_mgr.agent.link import BastionLink
from sshtunnel_mgr.core.addrset import AddressChange, ResolveFailures, addresses, diff
from sshtunnel_mgr.core.backoff import Backoff
from sshtunnel_mgr.core.config import BastionEndpoint
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.agent")

Resolve = Callable[[str, int], Awaitable[Sequence[str]]]
Spawn = Callable[[Coroutine[Any, Any, object], str], "asyncio.Task[Any]"]

# A resolution that takes longer than this counts as failed (the links stay).
RESOLVE_TIMEOUT = 30.0


async def pause(stop: asyncio.Event, delay: float) -> None:
    """Until ``stop`` is set or ``delay`` seconds have passed."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


async def system_resolve(host: str, port: int) -> list[str]:
    """Every TCP address ``host`` resolves to (A and AAAA), in the resolver's order;
    getaddrinfo runs in a worker thread (the event loop never waits for DNS)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


def _unbound(coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task[Any]:
    coro.close()
    raise RuntimeError(f"NameFollower.bind() was not called before starting {name}")


class NameFollower:
    """The links of one bastion entry whose address is a name, one per address."""

    def __init__(
        self,
        endpoint: BastionEndpoint,
        new_link: Callable[[str], BastionLink],
        *,
        interval: Callable[[], float],
        retry: Backoff,
        resolve: Resolve = system_resolve,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[asyncio.Event, float], Awaitable[None]] = pause,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.endpoint = endpoint
        self._new_link = new_link
        self._interval = interval
        self._retry = retry
        self._resolve = resolve
        self._on_change = on_change
        self._wait = wait
        self.failures = ResolveFailures(clock=clock)
        self.links: dict[str, BastionLink] = {}  # by address: the live links
        self.leaving: list[BastionLink] = []  # dropped addresses, draining
        self.addresses: tuple[str, ...] = ()  # the last answer that had any
        self.resolved_at: float | None = None  # wall clock, for status
        self.last_error = ""
        self._spawn: Spawn = _unbound
        self._stop = asyncio.Event()

    def all_links(self) -> list[BastionLink]:
        """Every link of this name: live ones, then those draining."""
        return [*self.links.values(), *self.leaving]

    def snapshot(self) -> dict[str, Any]:
        return {
            "bastion": self.endpoint.address,
            "addresses": list(self.addresses),
            "resolved_at": self.resolved_at,
            "last_error": self.last_error,
        }

    async def run(self, stop: asyncio.Event, spawn: Spawn) -> None:
        """Resolve, follow the answer, and again every ``interval()`` seconds, until
        ``stop``. Each link runs as its own task (``spawn``), so a fatal error on one (a
        host key mismatch) stops the service as it does for a configured address."""
        self.bind(stop, spawn)
        while not stop.is_set():
            try:
                await self.refresh()
            except (ValueError, RuntimeError) as exc:  # a bug, not DNS: log, keep going
                event(
                    log,
                    logging.ERROR,
                    "resolve loop error",
                    bastion=self.endpoint.address,
                    error=repr(exc),
                )
            delay = self._interval() if self.links else self._retry.next_delay()
            await self._wait(stop, delay)

    def bind(self, stop: asyncio.Event, spawn: Spawn) -> None:
        """The agent's stop event and how to start a task (``run`` does it)."""
        self._stop, self._spawn = stop, spawn

    async def refresh(self) -> AddressChange:
        """Resolve the name once and apply the answer: links added for new addresses,
        links leaving for addresses that are gone. A failure changes nothing."""
        host, port = self.endpoint.host, self.endpoint.port
        try:
            answer: Sequence[str] | None = await asyncio.wait_for(
                self._resolve(host, port), RESOLVE_TIMEOUT
            )
        except (OSError, TimeoutError, UnicodeError) as exc:
            self._failed(str(exc) or type(exc).__name__)
            return diff(self.links, None)
        change = diff(self.links, answer)
        found = addresses(answer or ())
        if not found:  # an empty answer keeps the links, like a failure
            self._failed("no address")
            return change
        self._resolved(found)
        if change.changed:
            event(
                log,
                logging.INFO,
                "bastion addresses",
                bastion=self.endpoint.address,
                added=",".join(change.added) or "-",
                dropped=",".join(change.dropped) or "-",
                kept=",".join(change.kept) or "-",
            )
        for address in change.added:
            self._add(address)
        for address in change.dropped:
            self._drop(address)
        if change.changed:
            self._on_change()
        return change

    def _add(self, address: str) -> None:
        link = self._new_link(address)
        self.links[address] = link
        task = self._spawn(link.run(self._stop), f"link {link.label}")
        task.add_done_callback(lambda _t: self._ended(link))

    def _drop(self, address: str) -> None:
        link = self.links.pop(address)
        self.leaving.append(link)
        self._spawn(link.leave("address no longer resolved"), f"leave {link.label}")

    def _ended(self, link: BastionLink) -> None:
        """A link's task ended (it left and drained, or the agent stops)."""
        if link in self.leaving:
            self.leaving.remove(link)
            self._on_change()

    def _failed(self, error: str) -> None:
        self.last_error = error
        count = self.failures.failed()
        if count is not None:
            event(
                log,
                logging.WARNING,
                "resolve failed",
                bastion=self.endpoint.address,
                error=error,
                failures=count,
                keeping=",".join(self.links) or "-",
            )

    def _resolved(self, answer: tuple[str, ...]) -> None:
        self._retry.reset()
        self.addresses = answer
        self.resolved_at = time.time()
        self.last_error = ""
        outage = self.failures.resolved()
        if outage:
            event(
                log,
                logging.INFO,
                "resolves again",
                bastion=self.endpoint.address,
                failures=outage,
            )
