"""Judge a peer's guessed first key-exchange packet as RFC 4253 §7 says (see kexinit.py).

asyncssh 2.24 decides in ``SSHConnection._process_kexinit`` whether to drop the packet
that follows a KEXINIT with ``first_kex_packet_follows`` set, and stores the decision in
``_ignore_first_kex``; it compares the negotiated key exchange with the peer's first
entry, which lets a wrong guess through when the client's first choice is not the
server's first (Dropbear then sends its packet again and asyncssh aborts with "Key
exchange not in progress"). ``install`` wraps that handler on one connection: the stock
handler runs unchanged, then the decision is recomputed from the two KEXINITs as sent,
the peer's (read from the packet) and our own (``_server_kexinit``/``_client_kexinit``,
which asyncssh keeps for the exchange hash). The guessed packet cannot be read in
between: asyncssh holds incoming data until an async handler has finished.

asyncssh internals used (looked up on the connection, checked, never at import):
``_packet_handlers`` (the per-class dispatch table, read through the instance, so an
instance attribute overrides it for this connection only), its ``MSG_KEXINIT`` entry,
``_ignore_first_kex``, ``_server_kexinit``/``_client_kexinit`` and ``is_server()``.
If any is missing, the connection keeps stock behaviour and one line is logged.
``check`` looks for the same on asyncssh's class, without a connection.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import asyncssh

from sshtunnel_mgr.core.kexinit import KexInit, ignore_guessed_packet, parse_kexinit
from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.sshcompat import Shim, checked, missing, stepped_aside

log = logging.getLogger(__name__)

MSG_KEXINIT = 20  # RFC 4253 §12
_told: set[str] = set()  # reasons already logged: one line per process, not per connection


def check() -> str:
    cls = asyncssh.SSHServerConnection
    handlers = getattr(cls, "_packet_handlers", None)
    if not isinstance(handlers, Mapping):
        return "asyncssh's _packet_handlers is not a mapping"
    if not inspect.iscoroutinefunction(handlers.get(MSG_KEXINIT)):
        return "asyncssh's KEXINIT handler is not the expected coroutine function"
    return missing(cls, "_ignore_first_kex", "_server_kexinit", "_client_kexinit", "is_server")


SHIM = Shim(
    "kexguess",
    internals="SSHConnection._packet_handlers[MSG_KEXINIT], _ignore_first_kex, "
    "_server_kexinit/_client_kexinit",
    fallback="asyncssh's own guess check (Dropbear's dbclient is cut off when its guess "
    "is not the server's first choice)",
    check=check,
)


def install(conn: object) -> bool:
    """Apply RFC 4253 §7's guess rule on this connection; call it from ``connection_made``.
    Never raises; False (and one log line per process) if asyncssh's internals differ."""
    try:
        reason = checked(SHIM) or _install(conn)
    except (AttributeError, TypeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if reason:
        stepped_aside(SHIM.name, reason, logged=True)
        if reason not in _told:
            _told.add(reason)
            event(
                log,
                logging.INFO,
                "kex guess shim skipped",
                reason=reason,
                fallback="asyncssh's own guess check",
            )
        return False
    return True


def _install(conn: Any) -> str:
    """Install the wrapper; the reason it cannot be, or "" once it is in place."""
    handlers = conn._packet_handlers
    if not isinstance(handlers, Mapping):
        return "asyncssh's _packet_handlers is not a mapping"
    original = handlers.get(MSG_KEXINIT)
    if not inspect.iscoroutinefunction(original):
        return "asyncssh's KEXINIT handler is not the expected coroutine function"
    if not isinstance(conn._ignore_first_kex, bool):
        return "asyncssh has no boolean _ignore_first_kex"
    we_are_server = bool(conn.is_server())
    ours_attr = "_server_kexinit" if we_are_server else "_client_kexinit"
    getattr(conn, ours_attr)  # the attribute the wrapper reads must exist

    async def process_kexinit(self: Any, pkttype: int, pktid: int, packet: Any) -> None:
        peer_body = bytes(packet.get_remaining_payload())
        await original(self, pkttype, pktid, packet)  # stock: negotiates, may raise
        ours = getattr(self, ours_attr)
        try:
            peer = parse_kexinit(peer_body)
            mine = parse_kexinit(bytes(ours)[1:])  # asyncssh keeps the type byte
        except (TypeError, ValueError) as exc:  # stock parsing accepted it: keep stock
            event(log, logging.DEBUG, "kex guess check kept stock", error=exc)
            return
        ignore = ignore_guessed_packet(peer, mine, we_are_server=we_are_server)
        if ignore != self._ignore_first_kex:
            _log_override(peer, mine, ignore, we_are_server)
        self._ignore_first_kex = ignore

    conn._packet_handlers = {**handlers, MSG_KEXINIT: process_kexinit}
    return ""


def _log_override(peer: KexInit, mine: KexInit, ignore: bool, we_are_server: bool) -> None:
    client, server = (peer, mine) if we_are_server else (mine, peer)
    event(
        log,
        logging.DEBUG,
        "kex guess decision changed",
        guess="wrong: packet dropped" if ignore else "right: packet used",
        rule="RFC 4253 section 7 (asyncssh alone decided otherwise)",
        client_kex=client.kex_algs[0] if client.kex_algs else "",
        server_kex=server.kex_algs[0] if server.kex_algs else "",
        client_host_key=client.host_key_algs[0] if client.host_key_algs else "",
        server_host_key=server.host_key_algs[0] if server.host_key_algs else "",
    )
