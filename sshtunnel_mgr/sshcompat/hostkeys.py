"""Send a live connection the bastion's host key list, hostkeys-00 (shim ``hostkeys``).

Two places need it. After login: the bastion serves each admitted socket with
``asyncssh.run_server``, which (asyncssh 2.24) returns from its wait for the login before
it sends the list that ``create_server``'s connections get, so clients with UpdateHostKeys
would miss a host key rotation; ``send_after_login`` sends it. On a rotation: asyncssh
sends the list only at login, from a per-connection copy of its options;
``announce`` replaces that copy and sends the new list, so agents and clients with
UpdateHostKeys follow a rotation without reconnecting.

asyncssh internals used: ``SSHServerConnection.send_server_host_keys()`` (undocumented)
and its ``_all_server_host_keys`` (public key blob -> key pair). Missing or different:
connections learn the host keys at their next login instead.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import asyncssh

from sshtunnel_mgr.sshcompat import Shim, checked, missing, parameters, stepped_aside

_KEYS = "_all_server_host_keys"


def check() -> str:
    cls = asyncssh.SSHServerConnection
    reason = missing(cls, _KEYS, "send_server_host_keys")
    if not reason and parameters(cls.send_server_host_keys) != ["self"]:
        reason = "asyncssh's send_server_host_keys takes arguments"
    return reason


SHIM = Shim(
    "hostkeys",
    internals=f"SSHServerConnection.send_server_host_keys(), {_KEYS}",
    fallback="clients learn new host keys at their next login only",
    check=check,
    roles=("bastion",),
)


def _usable(conn: Any, *, keys: bool) -> bool:
    reason = checked(SHIM)
    if not reason and not callable(getattr(conn, "send_server_host_keys", None)):
        reason = "this connection has no send_server_host_keys"
    if not reason and keys and not isinstance(getattr(conn, _KEYS, None), dict):
        reason = f"this connection has no {_KEYS} dict"
    if reason:
        stepped_aside(SHIM.name, reason)
        return False
    return True


def send_after_login(conn: asyncssh.SSHServerConnection) -> bool:
    """Send the host key list a just-logged-in connection was configured with."""
    if not _usable(conn, keys=False):
        return False
    conn.send_server_host_keys()
    return True


def announce(conn: asyncssh.SSHServerConnection, keys: list[asyncssh.SSHKey]) -> bool:
    """Make ``keys`` the host key list of a live connection and send it; False (it learns
    them at its next login) if asyncssh keeps the list differently."""
    if not _usable(conn, keys=True):
        return False
    pairs = asyncssh.load_keypairs(keys)
    setattr(conn, _KEYS, OrderedDict((kp.public_data, kp) for kp in pairs))
    conn.send_server_host_keys()
    return True
