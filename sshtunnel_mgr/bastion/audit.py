"""The bastion's audit log: one JSON object per line, appended, flushed per event.

Events: ``login``, ``publish``, ``unpublish``, ``route`` (a routed channel, written once
when it ends: who, which name, from where, bytes each way, duration, why it ended),
``penalty`` (a source starts a cool-down) and ``refused`` (every refusal, with ``stage``
auth / penalty / limit / publish / open / session / connection / handshake
(a connection that left before logging in) / revoked / web (the web front), and its
reason). A ``route`` of the web front (bastion/web) has ``via`` ("https" or "http").
Every event has ``ts`` (ISO-8601, UTC) and ``event``; events about a connection carry
``conn``, ``from`` and, once it has authenticated, ``key`` (SHA256 fingerprint) and
``comment``. Never a secret: only fingerprints, names, addresses, counts and reasons.

The file is opened append-only, created with mode 0600 (an existing one is tightened to
0600), never through a symlink, and reopened on reload (for log rotation). A record is
written whole or not at all: when the disk fills mid-record, the file is cut back to where
the record began (it is dropped, counted and logged at most once a minute), so every line
stays one JSON object. The data path pays nothing: a routed channel is written once, when
it closes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sshtunnel_mgr.bastion.splice import Pipe
from sshtunnel_mgr.core.access import AccessEntry
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.runtime.logsetup import event as log_event

log = logging.getLogger("sshtunnel_mgr.bastion")

DROP_LOG_INTERVAL = 60.0  # seconds between log lines while records are being dropped
MAX_FIELD = 512  # client-supplied strings (names, user names) are cut to this length


class Peer(Protocol):
    """What the audit log reads from a connection (``BastionConnection``)."""

    conn_id: int
    peer_ip: str
    peer_port: int
    entry: AccessEntry | None


def utc_timestamp(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD:
        return value[:MAX_FIELD] + "..."
    return value


def who(peer: Peer) -> dict[str, Any]:
    fields: dict[str, Any] = {"conn": peer.conn_id, "from": f"{peer.peer_ip}:{peer.peer_port}"}
    if peer.entry is not None:
        fields["key"] = peer.entry.fingerprint
        fields["comment"] = peer.entry.comment
    return fields


@dataclass(frozen=True)
class RouteRecord:
    name: str
    port: int
    agent_conn: int
    agent_key: str
    started: float  # time.monotonic()
    via: str = ""  # "https"/"http" for a web route (bastion/web); "" for an SSH channel


class RoutedPipe(Pipe):
    """A splice end that remembers how it ended and (client end) what it routes to."""

    record: RouteRecord | None = None
    ended: str = ""  # "" while open, then "closed" or the error
    outcome: str = ""  # why its channel never opened ("client left during open", ...)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            self.ended = f"{exc}" if exc is not None else "closed"
        super().connection_lost(exc)

    def never_opened(self, reason: str) -> None:
        self.outcome = reason
        super().never_opened(reason)


def end_reason(client: str, home: str, shutting_down: bool, outcome: str = "") -> str:
    """Why a routed channel ended, from how each end ended (``home`` is ``""`` when the
    home end was still open when the client end closed). ``outcome`` is why the client's
    channel never opened (the splice decided it): that is the reason, whatever else."""
    if outcome:
        return outcome
    if shutting_down:
        return "bastion shutting down"
    if client not in ("", "closed"):
        return f"client connection lost: {client}"
    if home not in ("", "closed"):
        return f"agent connection lost: {home}"
    return "home side closed" if home else "client closed"


class AuditLog:
    """``AuditLog(None)`` is switched off: every event is a no-op."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.now = now
        self.clock = clock
        self.write_errors = 0  # records dropped (not written at all), ever
        self._fd: int | None = None
        self._cut_to: int | None = None  # a partial record starts here: cut it first
        self._dropped = 0  # records dropped since writing last worked
        self._logged_at: float | None = None  # when the last "dropping" line was logged
        self.static: dict[str, Any] = {}  # fields every record carries (a worker's number)

    # File -----------------------------------------------------------------------------
    def open(self) -> AuditLog:
        if self.path is None:
            return self
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open audit log {self.path}: {exc.strerror or exc}",
                hint="check bastion.audit_log: its directory must exist and be writable, "
                "and it must not be a symlink",
            ) from None
        try:
            os.fchmod(fd, 0o600)
        except OSError:
            os.close(fd)
            raise
        self.close()
        self._fd = fd
        return self

    def reopen(self, path: Path | None) -> None:
        """Reload: open ``path`` (the same one again after a log rotation) or switch off.
        On failure the file that was open stays open."""
        old = self.path
        self.path = path
        try:
            self.open() if path is not None else self.close()
        except ConfigError:
            self.path = old
            raise

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if self._cut_to is not None:  # a partial record is still there: one more try
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._cut_to)
                self._cut_to = None
            os.close(fd)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def write(self, event: str, fields: dict[str, Any]) -> None:
        if self._fd is None:
            return
        record = {"ts": utc_timestamp(self.now()), "event": event}
        record.update((k, _clip(v)) for k, v in fields.items())
        record.update(self.static)
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            self._append(self._fd, data)
        except OSError as exc:
            self._drop(exc)
            return
        if self._logged_at is not None:
            log_event(
                log,
                logging.WARNING,
                "audit log writable again",
                path=str(self.path),
                dropped=self._dropped,
            )
            self._dropped, self._logged_at = 0, None

    def _append(self, fd: int, data: bytes) -> None:
        """Append one whole record or nothing. A full disk can take part of a record (a
        short write) and refuse the rest: the file is then cut back to where the record
        began, so every line stays one JSON object and none merges with the next. If even
        the cut fails, it is retried before the next record, which is dropped until then."""
        if self._cut_to is not None:
            os.ftruncate(fd, self._cut_to)
            self._cut_to = None
        start = os.fstat(fd).st_size  # O_APPEND: where this record begins
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            self._cut_to = start
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                self._cut_to = None
            raise

    def _drop(self, exc: OSError) -> None:
        """Count a dropped record; log the first, then at most one line a minute."""
        self.write_errors += 1
        self._dropped += 1
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= DROP_LOG_INTERVAL:
            log_event(
                log,
                logging.ERROR,
                "audit log write failed; record dropped",
                path=str(self.path),
                error=exc.strerror or str(exc),
                dropped=self._dropped,
                dropped_total=self.write_errors,
            )
            self._logged_at = now

    # Events ---------------------------------------------------------------------------
    def login(self, peer: Peer) -> None:
        self.write("login", who(peer))

    def publish(self, peer: Peer, name: str, port: int) -> None:
        self.write("publish", {**who(peer), "name": name, "port": port})

    def unpublish(self, peer: Peer | None, name: str, port: int, conn_id: int, why: str) -> None:
        fields = who(peer) if peer is not None else {"conn": conn_id}
        self.write("unpublish", {**fields, "name": name, "port": port, "reason": why})

    def key_request(self, peer: Peer, request: str, result: dict[str, Any]) -> None:
        """A key rotation request the bastion carried out (bastion/keyrequests.py)."""
        self.write("key_request", {**who(peer), "request": request, **result})

    def refused(self, peer: Peer, stage: str, reason: str, **extra: Any) -> None:
        self.write("refused", {**who(peer), "stage": stage, **extra, "reason": reason})

    def penalty(self, peer: Peer, source: str, failures: int, seconds: float) -> None:
        self.write(
            "penalty",
            {**who(peer), "source": source, "failures": failures, "seconds": seconds},
        )

    def routed(self, peer: Peer, client_end: Pipe, shutting_down: bool) -> None:
        """A routed channel ended (called from the client end's close)."""
        if self._fd is None or not isinstance(client_end, RoutedPipe):
            return
        record = client_end.record
        if record is None:
            return
        home_end = client_end.peer
        home = home_end.ended if isinstance(home_end, RoutedPipe) else ""
        self.write(
            "route",
            {
                **who(peer),
                "name": record.name,
                "port": record.port,
                "agent_conn": record.agent_conn,
                "agent_key": record.agent_key,
                "bytes_to_home": client_end.bytes_in,
                "bytes_from_home": home_end.bytes_in if home_end is not None else 0,
                "duration_s": round(time.monotonic() - record.started, 3),
                "end": end_reason(client_end.ended, home, shutting_down, client_end.outcome),
                **({"via": record.via} if record.via else {}),
            },
        )
