"""Start a server connection on an accepted socket with the listener's own options (shim
``serverstart``).

``asyncssh.run_server(sock, options=...)`` builds a new ``SSHServerConnectionOptions`` from
the given ones for every connection, in an executor thread (host keys wrapped anew, every
algorithm list validated again), only because the options object carries the future the
connection completes when the client has logged in (``options.waiter``). The connection
reads that future once, in its constructor; everything else it reads from its options
stays as the bastion made it. So this starts the connection as ``run_server`` does for an
accepted socket (asyncssh's ``_connect``: no tunnel, proxy or host canonicalisation for a
server) on the listener's one options object, handing each connection its own future as it
is constructed: no thread hop per connection, no options object per idle agent (about
3.7 KiB each, measured with idle_agents.py). The object is shared, so a change to it (a
host key rotation: ``Listener.update``, which re-prepares it in place) is seen by every
connection that reads it later; a server connection copies what it uses (host keys,
algorithms, auth methods, timeouts) in its constructor and reads the options again only
in ``reload_config`` (shim ``noreload``), so, as asyncssh documents for ``update``, the
change reaches connections accepted after it.

asyncssh internals used: the ``SSHServerConnection(loop, options, acceptor, error_handler,
wait)`` constructor, which keeps ``options.waiter`` and completes it when ``wait`` is
``"auth"``; the options' ``host``, ``port`` and ``connect_timeout``. If they are not as
expected, ``asyncssh.run_server`` starts the connection (stock), logged once.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import asyncssh

from sshtunnel_mgr.sshcompat import Shim, checked, missing, parameters, stepped_aside

_INIT = ["self", "loop", "options", "acceptor", "error_handler", "wait"]


def _annotated(cls: type, attr: str) -> bool:
    return any(attr in vars(k).get("__annotations__", {}) for k in cls.__mro__)


def check() -> str:
    if parameters(asyncssh.SSHServerConnection.__init__) != _INIT:
        return "asyncssh's SSHServerConnection() does not take (loop, options, ..., wait)"
    for attr in ("waiter", "host", "port", "connect_timeout"):
        if not _annotated(asyncssh.SSHServerConnectionOptions, attr):
            return f"asyncssh's server options have no {attr}"
    return missing(asyncssh.SSHServerConnection, "_waiter")


SHIM = Shim(
    "serverstart",
    internals="SSHServerConnection(loop, options, acceptor, error_handler, wait), "
    "options.waiter/host/port/connect_timeout",
    fallback="asyncssh.run_server builds a copy of the server options for every connection, "
    "in a thread (about 3.7 KiB per connection)",
    check=check,
    roles=("bastion",),
)


async def start(
    sock: socket.socket, options: asyncssh.SSHServerConnectionOptions
) -> asyncssh.SSHServerConnection:
    """A server connection on ``sock``, returned once the client has logged in (raises
    as ``run_server`` does when it fails first)."""
    reason = checked(SHIM)
    if reason:
        stepped_aside(SHIM.name, reason)
        return await asyncssh.run_server(sock, options=options)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def connection() -> asyncssh.SSHServerConnection:
        options.waiter = waiter  # read by the constructor, now: this connection's alone
        try:
            return asyncssh.SSHServerConnection(loop, options, wait="auth")
        finally:
            options.waiter = None

    return await asyncio.wait_for(
        _started(loop, sock, connection, waiter, options), timeout=options.connect_timeout
    )


async def _started(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    connection: Callable[[], asyncssh.SSHServerConnection],
    waiter: asyncio.Future[None],
    options: asyncssh.SSHServerConnectionOptions,
) -> asyncssh.SSHServerConnection:
    try:
        _, conn = await loop.create_connection(connection, sock=sock)
    except asyncio.CancelledError:
        waiter.cancel()
        raise
    conn.set_extra_info(host=options.host, port=options.port)
    done = False
    try:
        await waiter
        done = True
        return conn
    finally:
        if not done:  # failed, timed out or cancelled before the login: as run_server does
            conn.abort()
            await conn.wait_closed()
