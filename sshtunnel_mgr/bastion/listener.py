"""The bastion's own accept loop: admission before any key-exchange work.

asyncssh starts the handshake (banner, KEXINIT) the moment its server accepts a
connection, so a connection that must wait for a slot cannot wait there. The bastion
listens on its own non-blocking sockets instead; each accepted socket is judged by
``Admission`` (per-source startups, bounded queues, MaxStartups random early drop) and
either dropped at once, kept waiting (nothing sent, nothing read: it costs a file
descriptor), or handed to ``asyncssh.run_server`` with the one set of server options.
``run_server`` returns when the connection has logged in and raises when it ends before:
either way its startup slot is free, and the next waiting connection of the same source
starts. Every server task is kept, its failures are logged, and ``close``/``wait_closed``
end them all.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core.access import AccessEntry
from sshtunnel_mgr.core.admission import Admission, StartupLimits, Verdict
from sshtunnel_mgr.core.config import LimitsConfig
from sshtunnel_mgr.core.limits import LISTEN_BACKLOG
from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.sshcompat import hostkeys, serverstart

log = logging.getLogger("sshtunnel_mgr.bastion")

BACKLOG = LISTEN_BACKLOG
# After accept() fails for lack of descriptors or memory, as asyncio's own servers do.
ACCEPT_RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(eq=False)
class Arrival:
    """One accepted connection, from ``accept()`` until it has logged in or gone (an
    audit ``Peer`` too: not yet a numbered connection, so ``conn`` 0)."""

    sock: socket.socket
    peer_ip: str
    peer_port: int
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    conn_id: int = 0
    entry: AccessEntry | None = None


def startup_limits(limits: LimitsConfig) -> StartupLimits:
    return StartupLimits(
        max_startups=limits.max_startups_spec,
        per_source=limits.max_startups_per_source,
        queue_per_source=limits.startup_queue_per_source,
        queue_total=limits.startup_queue_total,
    )


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (an IP address from the config, or ``localhost``):
    one per address it stands for, as asyncio's ``create_server`` binds them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class Listener:
    """Accepts on every listening socket of the bastion; one admission for all of them."""

    def __init__(self, state: BastionState, options: asyncssh.SSHServerConnectionOptions) -> None:
        self.state = state
        self.options = options
        self._limits = state.config.limits
        self.admission: Admission[Arrival] = Admission(startup_limits(self._limits))
        self.sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self.sockets]

    def listen(self, host: str, port: int) -> None:
        """Bind ``host:port`` and start accepting on it (``OSError`` if it cannot)."""
        for sock in bind(host, port):
            self.sockets.append(sock)
            self._accepting.append(asyncio.create_task(self._accept(sock)))

    def adopt(self, sock: socket.socket) -> None:
        """Start accepting on a socket bound and listening already (a worker's, from its
        supervisor: bastion/workers)."""
        sock.setblocking(False)
        self.sockets.append(sock)
        self._accepting.append(asyncio.create_task(self._accept(sock)))

    def update(self, **kwargs: Any) -> None:
        """New server options (e.g. host keys) for connections accepted from now on."""
        self.options.update(**kwargs)

    def close(self) -> None:
        """Stop accepting; connections still waiting for a slot are closed unread."""
        self._closed = True
        for task, sock in zip(self._accepting, self.sockets, strict=True):
            # Closed once its accept loop has let go of it (the loop unregisters the fd
            # first, so the number cannot be reused under a pending registration).
            task.add_done_callback(functools.partial(_close_after, sock))
            task.cancel()
        for arrival in self.admission.waiting_items():
            self.admission.abandon(arrival)
            self._close_waiting(arrival)

    async def wait_closed(self) -> None:
        """Until every accept loop and every server task has ended (cancelled if this
        wait is)."""
        try:
            await asyncio.gather(*self._accepting, *self._tasks, return_exceptions=True)
        finally:
            for task in list(self._tasks):
                task.cancel()

    # Admission ---------------------------------------------------------------------------
    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listening)
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    continue  # e.g. ECONNABORTED: that peer left already
                event(
                    log,
                    logging.ERROR,
                    "accept failed",
                    error=exc.strerror or str(exc),
                    retry_in=ACCEPT_RETRY_DELAY,
                )
                await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            self._arrived(Arrival(sock, str(address[0]), int(address[1])))

    def _arrived(self, arrival: Arrival) -> None:
        if self._closed or not self.state.accepting:
            arrival.sock.close()
            return
        limits = self.state.config.limits
        if limits is not self._limits:  # reloaded
            self._limits = limits
            self.admission.limits = startup_limits(limits)
        verdict = self.admission.arrive(arrival, arrival.peer_ip)
        if verdict.action == "drop":
            self._drop(arrival, verdict)
        elif verdict.action == "wait":
            self.state.counters["startup_queued"] += 1
            loop = asyncio.get_running_loop()
            arrival.timer = loop.call_later(limits.login_timeout, self._wait_expired, arrival)
            event(
                log,
                logging.DEBUG,
                "waiting",
                from_=arrival.peer_ip,
                source=verdict.source,
                reason=verdict.reason,
                queued=self.admission.waiting(arrival.peer_ip),
            )
        else:
            if verdict.evict is not None:
                self._evict(verdict.evict, verdict)
            self._start(arrival)

    def _drop(self, arrival: Arrival, verdict: Verdict[Arrival]) -> None:
        """Closed before a byte is sent or read; counted, and logged (rate-limited by the
        counter: the first 10, then every 100th)."""
        counters = self.state.counters
        counters["startup_refused"] += 1
        if counters["startup_refused"] <= 10 or counters["startup_refused"] % 100 == 0:
            event(
                log,
                logging.WARNING,
                "refused connection",
                from_=arrival.peer_ip,
                reason=verdict.reason,
                refused_total=counters["startup_refused"],
            )
            self.state.audit.refused(arrival, "connection", verdict.reason)
        _abort(arrival.sock)

    def _evict(self, victim: Arrival, verdict: Verdict[Arrival]) -> None:
        self.state.counters["startup_evicted"] += 1
        event(
            log,
            logging.WARNING,
            "evicted startup",
            from_=victim.peer_ip,
            reason="the bastion's pre-login slots are full and this source holds the most; "
            f"its oldest connection not logged in gives way to one from {verdict.source}",
        )
        if victim.task is not None:
            victim.task.cancel()

    def _wait_expired(self, arrival: Arrival) -> None:
        if self.admission.abandon(arrival):
            self.state.counters["startup_wait_expired"] += 1
            event(
                log,
                logging.INFO,
                "refused connection",
                from_=arrival.peer_ip,
                reason="waited login_timeout for a slot of its source",
            )
            self._close_waiting(arrival)

    def _close_waiting(self, arrival: Arrival) -> None:
        if arrival.timer is not None:
            arrival.timer.cancel()
        _abort(arrival.sock)

    # Serving -----------------------------------------------------------------------------
    def _start(self, arrival: Arrival) -> None:
        if arrival.timer is not None:
            arrival.timer.cancel()
            arrival.timer = None
        task = asyncio.create_task(self._serve(arrival))
        arrival.task = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._served, arrival))

    async def _serve(self, arrival: Arrival) -> None:
        """One connection up to its login (or its end)."""
        try:
            conn = await serverstart.start(arrival.sock, self.options)  # run_server, lighter
        except (asyncssh.Error, OSError) as exc:
            # Left, refused or failed before logging in: BastionConnection logged why.
            event(log, logging.DEBUG, "startup ended", from_=arrival.peer_ip, reason=str(exc))
            arrival.sock.close()
        except Exception as exc:  # a bug: log it, never let it kill the slot accounting
            event(
                log,
                logging.ERROR,
                "startup failed",
                from_=arrival.peer_ip,
                error=repr(exc),
                exc_info=exc,
            )
            arrival.sock.close()
        else:
            # asyncssh (2.24) returns from run_server's wait for the login before it sends
            # the host key list (hostkeys-00) that create_server's connections get after
            # login: send it here, or clients with UpdateHostKeys miss a host key rotation.
            if not conn.is_closed():
                hostkeys.send_after_login(conn)  # sshcompat: an undocumented asyncssh method

    def _served(self, arrival: Arrival, task: asyncio.Task[None]) -> None:
        """Logged in, gone or cancelled (even before it ran): its slot is free, and the
        next waiting connection of its source starts."""
        self._tasks.discard(task)
        if task.cancelled():
            arrival.sock.close()  # a no-op if asyncssh's transport closed it already
        nxt = self.admission.finished(arrival)
        if nxt is None:
            return
        if self._closed or not self.state.accepting:
            self.admission.finished(nxt)
            self._close_waiting(nxt)
        else:
            self._start(nxt)


def _close_after(sock: socket.socket, _task: asyncio.Task[None]) -> None:
    sock.close()


def _abort(sock: socket.socket) -> None:
    """Closed unread: the peer sees the connection end before any banner."""
    sock.close()
