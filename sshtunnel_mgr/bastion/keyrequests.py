"""The one thing a session on the bastion may do: manage the requesting key's own rotation.

No shell, no subsystem, no pty, no other command: a shell or another command (a plain
``ssh bastion``, or ``ssh -L … bastion`` without ``-N``) gets one line on stderr saying
what to do instead, and exit status 1. An authenticated key may run exactly:

``sshtun-enrol <type> <base64> [comment]``
    Enrol a successor key with exactly this key's permissions and expiry, marked
    ``sshtun-rotated-from``; this key then expires after ``rotation_grace`` seconds.
    Idempotent; at most one successor per key.
``sshtun-unenrol``
    Undo that: remove this key's successor and restore this key's expiry.
``sshtun-finish``
    Asked by a successor once the agent's key file holds it and the predecessor's
    connection has drained (``sshtun keys rotate``): remove its predecessor (the key named
    by its ``sshtun-rotated-from``; that key's remaining sessions close) and drop the mark.
    A no-op when there is none, so a rerun is safe.

``sshtun-hostkey <name> <port> <type> <base64>``
    An agent tells which SSH host key the service behind a name it publishes (on this
    connection) presents, so ``sshtun ssh-config`` can pin the inner hop too. Kept in
    memory with the route; never written anywhere.

Each answers one JSON line on stdout (``{"ok": true, ...}`` or ``{"ok": false, "error": …}``)
and exit status 0 or 1. The access file is rewritten atomically under a lock, in a worker
thread (the event loop keeps serving tunnels while it waits for the lock), then re-read by
the running bastion exactly as ``sshtun reload`` does, before the answer is sent.

Bounded whatever the peer does: the command is at most ``MAX_COMMAND`` characters and is
the only thing read (stdin is discarded); a session must be answered within
``key_request_timeout`` seconds of its open (waiting for the command and for the lock
included) or it is closed; a connection holds at most ``max_sessions_per_connection``
sessions (``BastionConnection.session_requested``).

A session sees its connection as a ``KeyRequester``: this module never imports server.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncssh

from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core.access import KEY_TYPES, AccessEntry, decode_key, fingerprint
from sshtunnel_mgr.core.accessedit import enrol_successor, retire_predecessor, unenrol_successor
from sshtunnel_mgr.core.config import BastionConfig
from sshtunnel_mgr.core.errors import ConfigError, RotationError
from sshtunnel_mgr.core.names import InvalidName, normalize_name
from sshtunnel_mgr.runtime.fsutil import LockTimeout
from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.runtime.strictmodes import edit_trusted

log = logging.getLogger("sshtunnel_mgr.bastion")

COMMANDS = ("sshtun-enrol", "sshtun-unenrol", "sshtun-finish", "sshtun-hostkey")
MAX_COMMAND = 4096
ONLY_ROUTES = (
    "sshtun: this bastion only routes; there is no shell or command here. Use "
    "`ssh -J BASTION HOST` to reach a published host, or add -N to keep -L/-R/-D "
    "forwards open without a command."
)


class KeyRequester(Protocol):
    """The connection a key request arrives on (``BastionConnection``)."""

    conn_id: int
    entry: AccessEntry | None
    state: BastionState
    home_host_keys: dict[tuple[str, int], str]

    def session_closed(self) -> None: ...

    def log_refused_session(self, reason: str) -> None: ...

    def log_key_request(
        self, verb: str, detail: str, *, ok: bool, result: dict[str, Any] | None = None
    ) -> None: ...


class KeyRequestSession(asyncssh.SSHServerSession[str]):
    def __init__(self, conn: KeyRequester, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout
        self._chan: asyncssh.SSHServerChannel[str] | None = None
        self._command = ""
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._gone = threading.Event()  # set when the session ends: stop waiting for the lock
        self._expired = False
        self._explain = False  # a shell or a foreign command: explain, exit 1

    def connection_made(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        self._chan = chan
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self._timeout
        self._timer = loop.call_later(self._timeout, self._expire)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone.set()
        self._chan = None
        if self._timer is not None:
            self._timer.cancel()
        self._conn.session_closed()

    def _expire(self) -> None:
        """``key_request_timeout`` passed and nothing was answered: close the session."""
        self._gone.set()
        self._expired = True
        verb = self._command.partition(" ")[0] or "-"
        reason = f"no answer within key_request_timeout ({self._timeout:g} s); session closed"
        self._conn.log_key_request(verb, reason, ok=False)
        if self._chan is not None:
            self._chan.close()

    def exec_requested(self, command: str) -> bool:
        verb = command.split(None, 1)[0] if command.strip() else ""
        if self._command or self._explain:
            return False  # one request per session
        if verb not in COMMANDS or len(command) > MAX_COMMAND:
            self._conn.log_refused_session(f"command {command[:60]!r} is not offered here")
            self._explain = True  # answered on stderr with exit 1, not a bare failure
            return True
        self._command = command
        return True

    def shell_requested(self) -> bool:
        if self._command or self._explain:
            return False
        self._conn.log_refused_session("no shell here")
        self._explain = True
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self._conn.log_refused_session(f"no subsystem {subsystem[:40]!r} here")
        return False

    def data_received(self, data: str, datatype: asyncssh.DataType) -> None:
        """stdin is not read: a request is its command line only."""

    def eof_received(self) -> bool:
        return True  # stay half-open: the answer may still be on its way

    def session_started(self) -> None:
        if self._explain:
            if self._timer is not None:
                self._timer.cancel()
            if self._chan is not None:
                self._chan.write_stderr(ONLY_ROUTES + "\r\n")
                self._chan.exit(1)
            return
        self._task = task = asyncio.create_task(self._answer())
        tasks = self._conn.state.tasks  # kept, and awaited when the bastion stops
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(_log_failure)

    async def _answer(self) -> None:
        answer = await self._run()
        chan = self._chan
        if chan is None or chan.is_closing():
            return  # the peer left (or the timeout closed it); the outcome is logged
        if self._timer is not None:
            self._timer.cancel()
        chan.write(json.dumps(answer) + "\n")
        chan.exit(0 if answer.get("ok") else 1)

    async def _run(self) -> dict[str, Any]:
        conn = self._conn
        verb, _, rest = self._command.partition(" ")
        entry = conn.entry
        config = conn.state.config
        if entry is None:
            return {"ok": False, "error": "not authenticated"}
        if verb == "sshtun-hostkey":
            return self._home_host_key(rest)
        if not config.allow_key_rotation:
            reason = "key rotation is disabled on this bastion (allow_key_rotation = false)"
            conn.log_key_request(verb, reason, ok=False)
            return {"ok": False, "error": reason}
        path = config.access_file
        result: dict[str, Any] = {}
        edit = _edit(verb, rest, entry.fingerprint, config, result)
        try:
            await asyncio.to_thread(
                edit_trusted, path, edit, timeout=self._lock_wait(), cancel=self._gone
            )
        except (RotationError, ConfigError) as exc:
            conn.log_key_request(verb, exc.message, ok=False)
            return {"ok": False, "error": exc.message}
        except LockTimeout as exc:
            reason = f"the access file {path} is being edited by another process: {exc}"
            if not self._expired:  # else already logged by _expire
                conn.log_key_request(verb, reason, ok=False)
            return {"ok": False, "error": reason + "; try again"}
        except OSError as exc:
            reason = f"cannot update the access file {path}: {exc.strerror or exc}"
            conn.log_key_request(verb, reason, ok=False)
            return {"ok": False, "error": reason}
        if self._timer is not None:
            self._timer.cancel()  # done: the session is no longer cut off, it gets the answer
        conn.log_key_request(verb, json.dumps(result, sort_keys=True), ok=True, result=result)
        # Re-read before answering: the client's next step is to log in with the new key.
        await conn.state.access_changed()
        return {"ok": True, **result}

    def _lock_wait(self) -> float:
        """How long to wait for the access file's lock: what is left of the timeout, less
        a margin (a quarter, at most 5 s) to answer why in time."""
        left = self._deadline - asyncio.get_running_loop().time()
        return max(0.0, left - min(5.0, left / 4))

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


def _edit(
    verb: str, rest: str, me: str, config: BastionConfig, result: dict[str, Any]
) -> Callable[[str], str]:
    """The access-file edit for ``verb`` (run in a worker thread); fills ``result``."""
    path = str(config.access_file)
    until = datetime.now(UTC) + timedelta(seconds=config.rotation_grace)

    def enrol(text: str) -> str:
        done = enrol_successor(text, me, rest, until, path)
        result.update(
            new_key=done.new_fingerprint,
            old_key=me,
            old_key_expires=done.old_expiry.isoformat(timespec="seconds"),
            changed=done.changed,
        )
        return done.text

    def unenrol(text: str) -> str:
        new_text, removed = unenrol_successor(text, me, path)
        result.update(removed=removed or None, key=me)
        return new_text

    def finish(text: str) -> str:
        new_text, retired = retire_predecessor(text, me, path)
        result.update(retired=retired or None, key=me)
        return new_text

    return {"sshtun-enrol": enrol, "sshtun-unenrol": unenrol, "sshtun-finish": finish}[verb]


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        event(log, logging.ERROR, "key request failed", error=repr(exc))
