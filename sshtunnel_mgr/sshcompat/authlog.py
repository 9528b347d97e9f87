"""Log refused authentication methods (password, keyboard-interactive, ...): shim ``authlog``.

asyncssh never offers those methods when the server says they are unsupported, but it
refuses a client that tries them anyway without telling the application. ``install``
wraps its method lookup so the bastion can log every such attempt with its reason; the
decision itself stays asyncssh's (the method is refused).

asyncssh internal used: the module function ``asyncssh.connection.lookup_server_auth(conn,
username, method, packet)``, which ``SSHServerConnection`` calls by its module-global name
for each userauth request, and the connection's ``_owner`` (our ``SSHServer``). Nothing
happens at import: the bastion calls ``install`` as it starts, which checks the function is
there with that signature and only then wraps it (process-wide: the wrapper only calls an
owner that has ``auth_method_refused``, so other asyncssh servers see no difference).
Missing or different: attempts are refused by asyncssh as before, without a log line.
"""

from __future__ import annotations

import importlib
from typing import Any

import asyncssh

from sshtunnel_mgr.sshcompat import Shim, missing, parameters, stepped_aside

_MODULE = "asyncssh.connection"
_FUNCTION = "lookup_server_auth"
_SIGNATURE = ["conn", "username", "method", "packet"]


def _module() -> Any:
    return importlib.import_module(_MODULE)


def _current() -> Any:
    return getattr(_module(), _FUNCTION, None)


def check() -> str:
    found = _current()
    if found is None:
        return f"{_MODULE} has no {_FUNCTION}"
    original = getattr(found, "__wrapped__", found)  # ours, once installed
    if parameters(original) != _SIGNATURE:
        return f"{_MODULE}.{_FUNCTION} does not take ({', '.join(_SIGNATURE)})"
    return missing(asyncssh.SSHServerConnection, "_owner")


SHIM = Shim(
    "authlog",
    internals=f"{_MODULE}.{_FUNCTION}, SSHConnection._owner",
    fallback="password and keyboard-interactive attempts are refused without a log line",
    check=check,
    roles=("bastion",),
)


def install() -> bool:
    """Idempotent: wrap asyncssh's server auth lookup with the logging one. Never raises;
    False (asyncssh's own lookup, one log line) if it is not as expected."""
    try:
        reason = check()
    except (AttributeError, TypeError, ValueError, ImportError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if reason:
        stepped_aside(SHIM.name, reason)
        return False
    module = _module()
    original = getattr(module, _FUNCTION)
    if getattr(original, "__wrapped__", None) is not None:
        return True  # installed already

    def lookup_server_auth(conn: Any, username: str, method: bytes, packet: Any) -> Any:
        owner: Any = getattr(conn, "_owner", None)
        if method not in (b"publickey", b"none") and hasattr(owner, "auth_method_refused"):
            owner.auth_method_refused(method.decode("ascii", "replace"), username)
        return original(conn, username, method, packet)

    lookup_server_auth.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(module, _FUNCTION, lookup_server_auth)
    return True


def uninstall() -> None:
    """Put asyncssh's own lookup back (tests)."""
    module = _module()
    original = getattr(getattr(module, _FUNCTION, None), "__wrapped__", None)
    if original is not None:
        setattr(module, _FUNCTION, original)
