"""Remember the reason the bastion's own SSH DISCONNECT gave, for the log of a connection
that ends before logging in (shim ``disconnects``).

When a client gives up at once (OpenSSH exits as soon as it sees no common algorithm),
asyncssh may report the connection to ``connection_lost`` as a plain "Connection lost",
though it did find the failed negotiation and sent its DISCONNECT with the reason just
before (the key exchange runs in a task whose result is handled a loop pass later). So
each server connection records the reason it sends; ``connection_lost`` prefers it.

asyncssh internal used: ``SSHConnection._send_disconnect(code, reason, lang)``, checked on
the class and looked up on the connection at install time: if it is missing, the
connection keeps asyncssh's stock behaviour (the reason ``connection_lost`` gets) and
``sshcompat.stepped_aside`` logs it once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncssh

from sshtunnel_mgr.sshcompat import Shim, checked, parameters, stepped_aside

_ATTR = "_send_disconnect"


def check() -> str:
    found = getattr(asyncssh.SSHServerConnection, _ATTR, None)
    if found is None:
        return f"asyncssh's SSHServerConnection has no {_ATTR}"
    if parameters(found) != ["self", "code", "reason", "lang"]:
        return f"asyncssh's {_ATTR} does not take (code, reason, lang)"
    return ""


SHIM = Shim(
    "disconnects",
    internals="SSHConnection._send_disconnect(code, reason, lang)",
    fallback="a connection that ends before login is logged with the reason asyncssh "
    "reports to connection_lost (may be a plain 'Connection lost')",
    check=check,
    roles=("bastion",),
)


def install(conn: object, sent: Callable[[int, str], None]) -> bool:
    """Call ``sent(code, reason)`` for every DISCONNECT ``conn`` sends; whether it is in
    place."""
    original: Any = getattr(conn, _ATTR, None)
    reason = checked(SHIM)
    if not reason and not callable(original):
        reason = f"this connection has no {_ATTR}"
    if reason:
        stepped_aside(SHIM.name, reason)
        return False

    def send_disconnect(code: int, reason: str, lang: str) -> None:
        sent(code, reason)
        original(code, reason, lang)

    setattr(conn, _ATTR, send_disconnect)
    return True
