"""Refuse users' signatures made with an algorithm the bastion's policy does not accept.

asyncssh advertises ``server-sig-algs`` but verifies whatever algorithm a client signs
with (``ssh-rsa``, SHA-1, included), and tells the application nothing about it: the
signature is checked after ``validate_public_key`` has said yes to the key. So each
server connection gets a wrapper around its ``validate_public_key`` coroutine (what
asyncssh's public-key auth awaits with the signature), which reads the signature's
algorithm name first and refuses it with a reason (``policy.signature_refusal``).

asyncssh internal used: ``SSHServerConnection.validate_public_key(username, key_data,
msg, signature)``, awaited by ``asyncssh.auth._ServerPublicKeyAuth`` (asyncssh 2.14-2.24).
Looked up at install time and guarded: if it is missing or not a coroutine function, the
connection keeps asyncssh's stock behaviour and a debug line says so.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from sshtunnel_mgr.logsetup import event
from sshtunnel_mgr.policy import signature_refusal

log = logging.getLogger("sshtunnel_mgr.bastion")

_ATTR = "validate_public_key"


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
    if original is None or not inspect.iscoroutinefunction(original):
        event(
            log,
            logging.DEBUG,
            "signature policy skipped",
            reason=f"asyncssh has no {_ATTR} coroutine: signature algorithms not checked",
        )
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
