"""Refuse users' signatures made with an algorithm the bastion's policy does not accept
(shim ``sigpolicy``).

asyncssh advertises ``server-sig-algs`` but verifies whatever algorithm a client signs
with (``ssh-rsa``, SHA-1, included), and tells the application nothing about it: the
signature is checked after ``validate_public_key`` has said yes to the key. So each
server connection gets a wrapper around its ``validate_public_key`` coroutine (what
asyncssh's public-key auth awaits with the signature), which reads the signature's
algorithm name first and refuses it with a reason (``policy.signature_refusal``).

asyncssh internal used: ``SSHServerConnection.validate_public_key(username, key_data,
msg, signature)``, awaited by asyncssh's server public-key auth (not the documented
``SSHServer.validate_public_key``, which never sees the signature). Checked on the class
and looked up on the connection at install time: if it is missing or not a coroutine
function, the connection keeps asyncssh's stock behaviour (any algorithm asyncssh
verifies is accepted) and ``sshcompat.stepped_aside`` logs it once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import asyncssh

from sshtunnel_mgr.core.policy import signature_refusal
from sshtunnel_mgr.sshcompat import Shim, checked, parameters, stepped_aside

_ATTR = "validate_public_key"
_SIGNATURE = ["self", "username", "key_data", "msg", "signature"]


def check() -> str:
    found = getattr(asyncssh.SSHServerConnection, _ATTR, None)
    if found is None or not inspect.iscoroutinefunction(found):
        return f"asyncssh's SSHServerConnection has no {_ATTR} coroutine"
    if parameters(found) != _SIGNATURE:
        return f"asyncssh's {_ATTR} does not take (username, key_data, msg, signature)"
    return ""


SHIM = Shim(
    "sigpolicy",
    internals="SSHServerConnection.validate_public_key(username, key_data, msg, signature)",
    fallback="signature algorithms not checked: any algorithm asyncssh verifies is accepted",
    check=check,
    roles=("bastion",),
)


def signature_algorithm(signature: bytes) -> str:
    """The algorithm name an SSH signature blob starts with ("" if it cannot be read)."""
    if len(signature) < 4:
        return ""
    length = int.from_bytes(signature[:4], "big")
    name = signature[4 : 4 + length]
    if len(name) != length or not name.isascii():
        return ""
    return name.decode("ascii")


def install(conn: object, refused: Callable[[str, bytes, str, str], None]) -> bool:
    """Check every signature on ``conn`` against the policy; ``refused(username, key_data,
    algorithm, reason)`` is called for one that is not accepted (then auth fails). Returns
    whether the check is in place."""
    original: Any = getattr(conn, _ATTR, None)
    reason = checked(SHIM)
    if not reason and (original is None or not inspect.iscoroutinefunction(original)):
        reason = f"this connection has no {_ATTR} coroutine"
    if reason:
        stepped_aside(SHIM.name, reason)
        return False

    async def validate(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        if msg or signature:  # a signed request; a query (no signature) goes through as is
            algorithm = signature_algorithm(signature)
            reason = signature_refusal(algorithm or "?")
            if reason:
                refused(username, key_data, algorithm, reason)
                return False
        return bool(await original(username, key_data, msg, signature))

    setattr(conn, _ATTR, validate)
    return True
