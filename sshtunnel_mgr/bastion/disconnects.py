"""Remember the reason the bastion's own SSH DISCONNECT gave, for the log of a connection
that ends before logging in.

When a client gives up at once (OpenSSH exits as soon as it sees no common algorithm),
asyncssh may report the connection to ``connection_lost`` as a plain "Connection lost",
though it did find the failed negotiation and sent its DISCONNECT with the reason just
before (the key exchange runs in a task whose result is handled a loop pass later). So
each server connection records the reason it sends; ``connection_lost`` prefers it.

asyncssh internal used: ``SSHConnection._send_disconnect(code, reason, lang)`` (asyncssh
2.14-2.24), looked up at install time and guarded: if it is missing, the connection keeps
asyncssh's stock behaviour (the reason ``connection_lost`` gets) and a debug line says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sshtunnel_mgr.logsetup import event

log = logging.getLogger("sshtunnel_mgr.bastion")

_ATTR = "_send_disconnect"


def install(conn: object, sent: Callable[[int, str], None]) -> bool:
    """Call ``sent(code, reason)`` for every DISCONNECT ``conn`` sends; whether it is in
    place."""
    original: Any = getattr(conn, _ATTR, None)
    if not callable(original):
        event(
            log,
            logging.DEBUG,
            "disconnect shim skipped",
            reason=f"asyncssh has no {_ATTR}: disconnect reasons come from connection_lost",
        )
        return False

    def send_disconnect(code: int, reason: str, lang: str) -> None:
        sent(code, reason)
        original(code, reason, lang)

    setattr(conn, _ATTR, send_disconnect)
    return True
