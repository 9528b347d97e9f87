"""Opening a routed channel: the agent's ``forwarded-tcpip`` for a client's ``direct-tcpip``.

The client's open waits while the bastion opens a channel down the agent's connection (the
agent connects to its local target before it answers). That wait is bounded by
``limits.open_timeout``, and whatever ends first decides:

- the agent answers: the caller splices the two ends (the client's channel opens at once);
- the agent refuses, or its connection goes: the client is refused, with the reason;
- the timeout passes: the client is refused;
- the client's connection goes: there is nobody left to answer.

In the last three cases the caller ends the client end with ``never_opened``, so the
agent's channel, if it opens later, is closed as soon as it does (and with it the home
side's TCP connection).

The agent's open is never cancelled. SSH has no way to withdraw a ``CHANNEL_OPEN``, and when
the coroutine waiting for it is cancelled asyncssh leaves the channel that the agent
confirms later open with no session, holding its data (up to the window) until the
connection closes. So the open runs to its end in its own task, kept in
``RouteStats.opening`` until it ends; its outcome is always retrieved. An agent that
leaves ``limits.max_unanswered_opens`` of them unanswered for a name is sent no more, so
what the bastion keeps for opens nobody waits for is bounded too.
"""

from __future__ import annotations

import asyncio
from asyncio import FIRST_COMPLETED
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncssh
from asyncssh import ChannelOpenError

from sshtunnel_mgr.bastion.splice import Pipe
from sshtunnel_mgr.core.config import LimitsConfig
from sshtunnel_mgr.core.limits import AGENT_HOP_MAX_PACKET
from sshtunnel_mgr.core.routing import Route

CLIENT_LEFT = "client left during open"
TIMED_OUT = "open timed out"
NOT_ANSWERING = "agent not answering opens"


class ClientSide(Protocol):
    """The client's side of a routed open: an SSH connection, or a web front's TCP one."""

    def is_closed(self) -> bool: ...

    async def wait_closed(self) -> None: ...


@dataclass
class RouteStats:
    """Traffic through one published name on one agent connection."""

    counters: Counter[str]  # the bastion-wide ones, for totals that outlive a connection
    live: set[Pipe] = field(default_factory=set)
    # Opens sent down the agent's connection and not answered yet (some given up on).
    opening: dict[asyncio.Future[Any], Pipe] = field(default_factory=dict)
    channels_total: int = 0
    bytes_to_home: int = 0  # closed channels only; live ones are added on read
    bytes_from_home: int = 0

    def opened(self, agent_end: Pipe) -> None:
        if not agent_end.closed:  # the home side may have closed it already
            self.live.add(agent_end)
        self.channels_total += 1

    def closed(self, agent_end: Pipe) -> None:
        self.live.discard(agent_end)
        to_home = agent_end.peer.bytes_in if agent_end.peer else 0
        self.bytes_from_home += agent_end.bytes_in
        self.bytes_to_home += to_home
        self.counters["bytes_from_home"] += agent_end.bytes_in
        self.counters["bytes_to_home"] += to_home

    def totals(self) -> tuple[int, int]:
        to_home = self.bytes_to_home + sum(p.peer.bytes_in for p in self.live if p.peer)
        from_home = self.bytes_from_home + sum(p.bytes_in for p in self.live)
        return to_home, from_home

    def held_bytes(self) -> int:
        """Bytes the splices of this route hold for an end that is not open yet."""
        ends = self.live.union(self.opening.values())
        return sum(p.pending_bytes + (p.peer.pending_bytes if p.peer else 0) for p in ends)

    def track(self, opening: asyncio.Future[Any], agent_end: Pipe) -> None:
        self.opening[opening] = agent_end
        opening.add_done_callback(self._open_ended)

    def _open_ended(self, opening: asyncio.Future[Any]) -> None:
        self.opening.pop(opening, None)
        if not opening.cancelled():
            opening.exception()  # retrieved: the splice reports it if anyone still waits


@dataclass(frozen=True)
class OpenResult:
    """How an open ended: ``outcome`` is "" when the agent's channel opened, else the
    route's end reason for the audit log; ``refusal`` is what the client is told (""
    when it is gone)."""

    outcome: str = ""
    refusal: str = ""


async def open_agent_end(
    agent_conn: asyncssh.SSHServerConnection,
    agent_end: Pipe,
    route: Route[Any],
    orig: tuple[str, int],
    stats: RouteStats,
    limits: LimitsConfig,
    client: ClientSide,
) -> OpenResult:
    """Open ``agent_end``'s channel for ``route`` down ``agent_conn`` (in the agent's own
    spelling of the name) and wait for it, at most ``limits.open_timeout`` seconds or
    until the ``client``'s connection closes. An agent that already leaves
    ``limits.max_unanswered_opens`` opens unanswered for this name is not sent another."""
    dest = f"{route.name}:{route.port}"
    if len(stats.opening) >= limits.max_unanswered_opens:
        return OpenResult(
            NOT_ANSWERING,
            f"{dest}: the agent has not answered {len(stats.opening)} channel opens; "
            "try again later",
        )
    timeout = limits.open_timeout
    opening = asyncio.ensure_future(
        agent_conn.create_connection(
            lambda: agent_end,
            route.spelling or route.name,
            route.port,
            orig[0],
            orig[1],
            max_pktsize=AGENT_HOP_MAX_PACKET,
        )
    )
    stats.track(opening, agent_end)
    gone = asyncio.ensure_future(client.wait_closed())
    try:
        await asyncio.wait({opening, gone}, timeout=timeout, return_when=FIRST_COMPLETED)
    finally:
        gone.cancel()
    if client.is_closed():
        return OpenResult(CLIENT_LEFT)
    if not opening.done():
        return OpenResult(
            TIMED_OUT, f"{dest}: the agent did not answer the channel open in {timeout:g} s"
        )
    exc = opening.exception() if not opening.cancelled() else asyncio.CancelledError()
    if exc is None:
        return OpenResult()
    if agent_conn.is_closed():
        return OpenResult(
            "agent connection lost during open", f"{dest}: the agent's connection was lost"
        )
    if isinstance(exc, ChannelOpenError):
        return OpenResult(
            f"home side refused: {exc.reason}", f"{dest}: the home side refused: {exc.reason}"
        )
    return OpenResult(f"agent connection failed: {exc}", f"{dest}: agent connection failed: {exc}")
