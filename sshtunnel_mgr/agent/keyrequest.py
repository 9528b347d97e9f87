"""One key request (``sshtun-enrol``, ``sshtun-finish``, ``sshtun-hostkey``, ...; see
bastion/keyrequests.py) run as a session on a connection to a bastion, answered in JSON.

The bastion holds only a few sessions per connection (max_sessions_per_connection), so an
agent sends its key requests on one connection one at a time.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

import asyncssh

from sshtunnel_mgr.agent.client import describe

_KEY_REQUESTS: weakref.WeakKeyDictionary[asyncssh.SSHClientConnection, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def _one_at_a_time(
    conn: asyncssh.SSHClientConnection, command: str
) -> asyncssh.SSHCompletedProcess:
    async with _KEY_REQUESTS.setdefault(conn, asyncio.Lock()):
        return await conn.run(command, check=False)


async def run_key_request(
    conn: asyncssh.SSHClientConnection, command: str, timeout: float
) -> dict[str, Any]:
    """The bastion's JSON answer to ``command``, or ``{"ok": False, "error": ...}``."""
    try:
        result = await asyncio.wait_for(_one_at_a_time(conn, command), timeout)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        return {"ok": False, "error": f"request failed: {describe(exc)}"}
    text = result.stdout if isinstance(result.stdout, str) else ""
    try:
        answer = json.loads(text.strip().splitlines()[-1]) if text.strip() else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        status = result.exit_status
        return {
            "ok": False,
            "error": f"the bastion does not offer key rotation (exit status {status}); "
            "is it an sshtun bastion with allow_key_rotation?",
        }
    return answer
