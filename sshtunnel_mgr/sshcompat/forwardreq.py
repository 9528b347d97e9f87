"""Keep an agent's own spelling of each ``tcpip-forward`` bind address (shim ``forwardreq``).

asyncssh lower-cases the bind address before ``server_requested``, but stock ``ssh -R``
matches the ``forwarded-tcpip`` it later receives against what it sent, so a name
published as ``HomeBox`` must be answered as ``HomeBox``. asyncssh dispatches global
requests by attribute lookup on the connection, so a per-connection wrapper reads the raw
name from the request first (RFC 4254 §7.1: string address, uint32 port), then hands the
request to asyncssh unchanged.

asyncssh internal used: ``SSHServerConnection._process_tcpip_forward_global_request(packet)``
and the packet's ``get_remaining_payload()``. Missing or different: names are answered in
lower case (what ``server_requested`` gets), which stock ``ssh -R`` with a mixed-case name
does not match.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import asyncssh

from sshtunnel_mgr.sshcompat import Shim, checked, parameters, stepped_aside

_ATTR = "_process_tcpip_forward_global_request"


def check() -> str:
    found = getattr(asyncssh.SSHServerConnection, _ATTR, None)
    if found is None:
        return f"asyncssh's SSHServerConnection has no {_ATTR}"
    if parameters(found) != ["self", "packet"]:
        return f"asyncssh's {_ATTR} does not take (packet)"
    return ""


SHIM = Shim(
    "forwardreq",
    internals=f"SSHServerConnection.{_ATTR}(packet)",
    fallback="published names are answered in lower case",
    check=check,
    roles=("bastion",),
)


def bind_address(payload: bytes) -> tuple[str, int] | None:
    """The address and port of a ``tcpip-forward`` request's payload (after the want-reply
    byte), or None if it is not one (pure)."""
    if len(payload) < 4:
        return None
    (length,) = struct.unpack(">I", payload[:4])
    end = 4 + length
    if len(payload) < end + 4:
        return None
    try:
        host = payload[4:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    (port,) = struct.unpack(">I", payload[end : end + 4])
    return host, port


def remember_bind_spellings(conn: object, spellings: dict[tuple[str, int], str]) -> bool:
    """Record ``spellings[(host.lower(), port)] = host`` for each ``tcpip-forward`` on
    ``conn``, before asyncssh handles it. Whether the wrapper is in place."""
    original: Any = getattr(conn, _ATTR, None)
    reason = checked(SHIM)
    if not reason and not callable(original):
        reason = f"this connection has no {_ATTR}"
    if reason:
        stepped_aside(SHIM.name, reason)
        return False

    def peek(packet: Any) -> object:
        with contextlib.suppress(AttributeError, TypeError):
            found = bind_address(bytes(packet.get_remaining_payload()))
            if found is not None:
                spellings[(found[0].lower(), found[1])] = found[0]
        return original(packet)

    setattr(conn, _ATTR, peek)
    return True
