"""The one thing a session on the bastion may do: manage the requesting key's own rotation.

No shell, no subsystem, no pty, no other command. An authenticated key may run exactly:

``sshtun-enrol <type> <base64> [comment]``
    Enrol a successor key with exactly this key's permissions and expiry, marked
    ``sshtun-rotated-from``; this key then expires after ``rotation_grace`` seconds.
    Idempotent; at most one successor per key.
``sshtun-unenrol``
    Undo that: remove this key's successor and restore this key's expiry.
``sshtun-finish``
    Asked by a successor once it serves every name: remove its predecessor (the key named
    by its ``sshtun-rotated-from``; that key's remaining sessions close) and drop the mark.
    A no-op when there is none, so a rerun is safe.

``sshtun-hostkey <name> <port> <type> <base64>``
    An agent tells which SSH host key the service behind a name it publishes (on this
    connection) presents, so ``sshtun ssh-config`` can pin the inner hop too. Kept in
    memory with the route; never written anywhere.

Each answers one JSON line on stdout (``{"ok": true, ...}`` or ``{"ok": false, "error": …}``)
and exit status 0 or 1. The access file is rewritten atomically under a lock, then
re-read by the running bastion exactly as ``sshtun reload`` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncssh

from sshtunnel_mgr.access import KEY_TYPES, decode_key, fingerprint
from sshtunnel_mgr.accessedit import enrol_successor, retire_predecessor, unenrol_successor
from sshtunnel_mgr.errors import ConfigError, RotationError
from sshtunnel_mgr.fsutil import edit_atomic
from sshtunnel_mgr.names import InvalidName, normalize_name

if TYPE_CHECKING:
    from sshtunnel_mgr.bastion.server import BastionConnection

log = logging.getLogger("sshtunnel_mgr.bastion")

COMMANDS = ("sshtun-enrol", "sshtun-unenrol", "sshtun-finish", "sshtun-hostkey")
MAX_COMMAND = 4096


class KeyRequestSession(asyncssh.SSHServerSession[str]):
    def __init__(self, conn: BastionConnection) -> None:
        self._conn = conn
        self._chan: asyncssh.SSHServerChannel[str] | None = None
        self._command = ""

    def connection_made(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        self._chan = chan

    def exec_requested(self, command: str) -> bool:
        verb = command.split(None, 1)[0] if command.strip() else ""
        if verb not in COMMANDS or len(command) > MAX_COMMAND:
            self._conn.log_refused_session(f"command {command[:60]!r} is not offered here")
            return False
        self._command = command
        return True

    def shell_requested(self) -> bool:
        self._conn.log_refused_session("no shell here")
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        self._conn.log_refused_session(f"no subsystem {subsystem[:40]!r} here")
        return False

    def session_started(self) -> None:
        chan = self._chan
        assert chan is not None
        answer, after = self._run()
        chan.write(json.dumps(answer) + "\n")
        chan.exit(0 if answer.get("ok") else 1)
        if after is not None:
            asyncio.get_running_loop().call_soon(after)

    def _run(self) -> tuple[dict[str, Any], Callable[[], object] | None]:
        conn = self._conn
        verb, _, rest = self._command.partition(" ")
        entry = conn.entry
        config = conn.state.config
        if entry is None:
            return {"ok": False, "error": "not authenticated"}, None
        if verb == "sshtun-hostkey":
            return self._home_host_key(rest), None
        if not config.allow_key_rotation:
            reason = "key rotation is disabled on this bastion (allow_key_rotation = false)"
            conn.log_key_request(verb, reason, ok=False)
            return {"ok": False, "error": reason}, None
        path = config.access_file
        me = entry.fingerprint
        result: dict[str, Any] = {}
        now = datetime.now(UTC)

        def enrol(text: str) -> str:
            until = now + timedelta(seconds=config.rotation_grace)
            done = enrol_successor(text, me, rest, until, str(path))
            result.update(
                new_key=done.new_fingerprint,
                old_key=me,
                old_key_expires=done.old_expiry.isoformat(timespec="seconds"),
                changed=done.changed,
            )
            return done.text

        def unenrol(text: str) -> str:
            new_text, removed = unenrol_successor(text, me, str(path))
            result.update(removed=removed or None, key=me)
            return new_text

        def finish(text: str) -> str:
            new_text, retired = retire_predecessor(text, me, str(path))
            result.update(retired=retired or None, key=me)
            return new_text

        edit = {"sshtun-enrol": enrol, "sshtun-unenrol": unenrol, "sshtun-finish": finish}[verb]
        try:
            edit_atomic(path, edit)
        except (RotationError, ConfigError) as exc:
            conn.log_key_request(verb, exc.message, ok=False)
            return {"ok": False, "error": exc.message}, None
        except OSError as exc:
            reason = f"cannot update the access file {path}: {exc.strerror or exc}"
            conn.log_key_request(verb, reason, ok=False)
            return {"ok": False, "error": reason}, None
        conn.log_key_request(verb, json.dumps(result, sort_keys=True), ok=True, result=result)
        return {"ok": True, **result}, conn.state.access_changed

    def _home_host_key(self, rest: str) -> dict[str, Any]:
        conn = self._conn
        parts = rest.split()
        try:
            name, port, key_type, b64 = normalize_name(parts[0]), int(parts[1]), *parts[2:4]
            decode_key(key_type, b64)
            if len(parts) != 4 or key_type not in KEY_TYPES:
                raise ValueError("expected: name port type base64")
        except (IndexError, ValueError, InvalidName) as exc:
            reason = f"bad host key announcement: {getattr(exc, 'message', exc)}"
            conn.log_key_request("sshtun-hostkey", reason, ok=False)
            return {"ok": False, "error": reason}
        if not any(r.conn_id == conn.conn_id for r in conn.state.routes.lookup(name, port)):
            reason = f"{name}:{port} is not published on this connection"
            conn.log_key_request("sshtun-hostkey", reason, ok=False)
            return {"ok": False, "error": reason}
        conn.home_host_keys[(name, port)] = f"{key_type} {b64}"
        result = {"name": name, "port": port, "host_key": fingerprint(decode_key(key_type, b64))}
        conn.log_key_request("sshtun-hostkey", json.dumps(result), ok=True, result=result)
        return {"ok": True, **result}
