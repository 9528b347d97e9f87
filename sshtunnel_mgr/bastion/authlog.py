"""Log refused authentication methods (password, keyboard-interactive, ...).

asyncssh never offers those methods when the server says they are unsupported, but it
refuses a client that tries them anyway without telling the application. We wrap its
method lookup once so the bastion can log every such attempt with its reason; the
decision itself stays asyncssh's (the method is refused).
"""

from __future__ import annotations

from typing import Any

import asyncssh.connection as _conn

_ORIGINAL: Any = getattr(_conn, "lookup_server_auth")  # noqa: B009 (not re-exported)


def _lookup_server_auth(conn: Any, username: str, method: bytes, packet: Any) -> Any:
    owner: Any = getattr(conn, "_owner", None)
    if method not in (b"publickey", b"none") and hasattr(owner, "auth_method_refused"):
        owner.auth_method_refused(method.decode("ascii", "replace"), username)
    return _ORIGINAL(conn, username, method, packet)


def install() -> None:
    """Idempotent: wrap asyncssh's server auth lookup with the logging one."""
    if getattr(_conn, "lookup_server_auth") is not _lookup_server_auth:  # noqa: B009
        setattr(_conn, "lookup_server_auth", _lookup_server_auth)  # noqa: B010
