"""No packet-log text unless packet logging is on (shim ``quiet_packet_log``).

asyncssh builds each packet's log text (type name, byte count) before its logger checks
whether packet logging (``asyncssh.set_debug_level(3)``) is enabled. ``install`` moves the
check first on one connection and on each channel it adds: the gates read asyncssh's
level per packet, so ``set_debug_level(3)`` at any time turns the packet log back on, and
then the original code runs and the log is the same.

asyncssh internals used: the class attribute ``SSHLogger._debug_level`` (read through
the class of the public ``asyncssh.logger``), and the ``SSHPacketLogger`` methods
``log_sent_packet``/``log_received_packet`` of a connection and its channels, plus the
connection's ``add_channel``. Missing or different: packets are logged (or not) by
asyncssh's own code, which formats each one first.
"""

from __future__ import annotations

import contextlib
from typing import Any

import asyncssh

from sshtunnel_mgr.sshcompat import Shim, parameters

_LEVEL = "_debug_level"


def _logger_class() -> type:
    return type(asyncssh.logger)


def packet_log_level() -> int | None:
    """asyncssh's debug level (3: packets are logged), or None if it keeps none we read."""
    level = _logger_class().__dict__.get(_LEVEL)
    return level if isinstance(level, int) and not isinstance(level, bool) else None


def check() -> str:
    if packet_log_level() is None:
        return f"asyncssh's {_logger_class().__name__} has no integer {_LEVEL}"
    cls = asyncssh.SSHServerConnection
    for name in ("log_sent_packet", "log_received_packet", "add_channel"):
        if not callable(getattr(cls, name, None)):
            return f"asyncssh's {cls.__name__} has no {name}"
    if parameters(cls.log_sent_packet)[:4] != ["self", "pkttype", "pktid", "packet"]:
        return "asyncssh's log_sent_packet does not take (pkttype, pktid, packet, note)"
    return ""


SHIM = Shim(
    "quiet_packet_log",
    internals="SSHLogger._debug_level, SSHPacketLogger.log_sent_packet/log_received_packet",
    fallback="each packet's log text is built, then dropped unless packet logging is on",
    check=check,
)


def install(conn: Any) -> bool:
    """Gate ``conn``'s packet log, and each channel's as it is added. False (stock) when
    the level or the methods are not there; raises AttributeError/TypeError on an object
    that lacks them (``sendpath._install`` turns that into a step aside)."""
    cls = _logger_class()
    if packet_log_level() is None:
        return False
    original_add = conn.add_channel
    if not callable(original_add) or not _gate(conn, cls):
        return False

    def add_channel(chan: Any) -> Any:
        # Each channel logs its own packets (data, window, eof); one without the methods
        # keeps stock logging.
        with contextlib.suppress(AttributeError, TypeError):
            _gate(chan, cls)
        return original_add(chan)

    conn.add_channel = add_channel
    return True


def _gate(handler: Any, cls: type) -> bool:
    """Gate an ``SSHPacketLogger``'s two log methods on the packet-log level."""
    sent, received = handler.log_sent_packet, handler.log_received_packet
    if not callable(sent) or not callable(received):
        return False

    def log_sent_packet(pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        if getattr(cls, _LEVEL, 3) >= 3:
            sent(pkttype, pktid, packet, note)

    def log_received_packet(pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        if getattr(cls, _LEVEL, 3) >= 3:
            received(pkttype, pktid, packet, note)

    handler.log_sent_packet = log_sent_packet
    handler.log_received_packet = log_received_packet
    return True
