"""ConnectionGuard and the one refusal path, with the bastion's real tables and no network:
a refusal is logged, counted and audited by one call, and the guard's caps, cool-downs and
per-key admission decide as the integration tests (test_abuse, test_refusals) see them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from sshtunnel_mgr.bastion.audit import AuditLog
from sshtunnel_mgr.bastion.guard import ConnectionGuard
from sshtunnel_mgr.bastion.refusals import Refusals
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.core.access import AccessEntry, AccessPolicy
from sshtunnel_mgr.core.config import BastionConfig, LimitsConfig

ALICE = AccessEntry(key_type="ssh-ed25519", key_blob=b"alice-key", comment="alice", line=1)


class FakeConnection:
    """What the guard sees of a ``BastionConnection``; records the disconnects it asks for."""

    def __init__(self, conn_id: int, ip: str = "192.0.2.7") -> None:
        self.conn_id, self.peer_ip, self.peer_port = conn_id, ip, 40000 + conn_id
        self.entry: AccessEntry | None = None
        self.conn: asyncssh.SSHServerConnection | None = None
        self.open_channels = 0
        self.published: list[str] = []
        self.route_stats: dict[Any, Any] = {}
        self.home_host_keys: dict[tuple[str, int], str] = {}
        self.disconnects: list[tuple[int, str]] = []

    def revoke(self, reason: str) -> None:
        raise AssertionError("not used here")

    def reapply(self, entry: AccessEntry) -> list[str]:
        raise AssertionError("not used here")


class FakeSocket:
    """The asyncssh connection ``refuse_start`` drops."""

    def __init__(self) -> None:
        self.dropped = ""

    def abort(self) -> None:
        self.dropped = "abort"

    def close(self) -> None:
        self.dropped = "close"


@pytest.fixture
def state(tmp_path: Path) -> BastionState:
    limits = LimitsConfig(
        max_auth_tries=2,
        max_auth_failures_per_source=1,
        max_connections_per_key=1,
        max_channels_per_connection=3,
        max_channels_per_key=4,
    )
    config = BastionConfig(
        host_key=tmp_path / "host", access_file=tmp_path / "access", limits=limits
    )
    state = BastionState(config, AccessPolicy((ALICE,)))
    state.audit = AuditLog(tmp_path / "audit.log").open()
    return state


def guard_for(state: BastionState, conn: FakeConnection) -> ConnectionGuard:
    def disconnect(code: int, reason: str) -> None:
        conn.disconnects.append((code, reason))

    return ConnectionGuard(state, conn, Refusals(state, conn), disconnect)


def audited(state: BastionState) -> list[dict[str, Any]]:
    assert state.audit.path is not None
    return [json.loads(line) for line in state.audit.path.read_text().splitlines()]


def test_one_call_logs_counts_and_audits_the_same_fields(
    state: BastionState, caplog: pytest.LogCaptureFixture
) -> None:
    conn = FakeConnection(5)
    conn.entry = ALICE
    with caplog.at_level(logging.INFO, logger="sshtunnel_mgr.bastion"):
        Refusals(state, conn).refuse(
            "publish",
            "no permitlisten",
            event="refused publish",
            counter="publish_refused",
            log_only={"note": "for the operator"},
            name="homebox",
            port=22,
        )
    assert state.counters["publish_refused"] == 1
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    line = record.getMessage()
    for part in ("refused publish", "conn=5", "from=192.0.2.7", ALICE.fingerprint, "port=22"):
        assert part in line
    assert "homebox" in line and "no permitlisten" in line and "for the operator" in line
    [refused] = audited(state)
    assert refused["event"] == "refused" and refused["stage"] == "publish"
    assert refused["name"] == "homebox" and refused["port"] == 22
    assert refused["reason"] == "no permitlisten"
    assert refused["key"] == ALICE.fingerprint and refused["from"] == "192.0.2.7:40005"
    assert "note" not in refused  # log_only stays in the log


def test_a_refusal_not_recorded_is_still_counted(
    state: BastionState, caplog: pytest.LogCaptureFixture
) -> None:
    refusals = Refusals(state, FakeConnection(1))
    with caplog.at_level(logging.DEBUG, logger="sshtunnel_mgr.bastion"):
        refusals.refuse("session", "too many", counter="sessions_refused", record=False)
        refusals.refuse("connection", "shutting down", level=logging.INFO, audit=False)
    assert state.counters["sessions_refused"] == 1
    assert [r.getMessage().startswith("refused") for r in caplog.records] == [True]
    assert audited(state) == []


def test_max_auth_tries_disconnects_and_the_source_is_penalised_when_it_leaves(
    state: BastionState,
) -> None:
    conn = FakeConnection(1)
    guard = guard_for(state, conn)
    guard.auth_failed("unknown key")
    assert conn.disconnects == []
    guard.auth_failed("unknown key")
    assert conn.disconnects == [
        (asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication failures")
    ]
    assert state.counters["auth_failures"] == 2
    guard.left_before_login(None)
    assert state.counters["penalties"] == 1  # max_auth_failures_per_source = 1
    stages = [(r["event"], r.get("stage")) for r in audited(state)]
    assert stages == [
        ("refused", "auth"),
        ("refused", "auth"),
        ("refused", "handshake"),
        ("penalty", None),
    ]
    # The next connection from that source is dropped before any key exchange work.
    sock = FakeSocket()
    assert guard_for(state, FakeConnection(2)).refuse_start(sock)  # type: ignore[arg-type]
    assert sock.dropped == "abort"
    assert state.counters["penalty_refused"] == 1
    # One that got in before the cool-down began may not log in during it.
    late = FakeConnection(3)
    assert guard_for(state, late).refuse_auth_while_cooling()
    assert late.disconnects[0][0] == asyncssh.DISC_HOST_NOT_ALLOWED_TO_CONNECT


def test_leaving_before_any_auth_request_costs_the_source_nothing(state: BastionState) -> None:
    guard_for(state, FakeConnection(1)).left_before_login(ConnectionResetError("reset"))
    assert state.penalties.check("192.0.2.7") is None
    [refused] = audited(state)
    assert refused["stage"] == "handshake" and refused["phase"] == "key exchange"


def test_per_key_admission_and_release(state: BastionState) -> None:
    first, second = FakeConnection(1), FakeConnection(2)
    first.entry = second.entry = ALICE
    guard = guard_for(state, first)
    assert guard.admit_key()
    assert not guard_for(state, second).admit_key()
    assert second.disconnects == [
        (asyncssh.DISC_TOO_MANY_CONNECTIONS, "key has too many connections (max 1 per key)")
    ]
    assert state.counters["key_limit_refused"] == 1
    guard.release()
    assert guard_for(state, second).admit_key()
    assert [r["event"] for r in audited(state)] == ["login", "refused", "login"]


def test_channel_caps_per_connection_then_per_key(state: BastionState) -> None:
    conn = FakeConnection(1)
    conn.entry = ALICE
    guard = guard_for(state, conn)
    assert guard.admit_key()
    conn.open_channels = 3
    assert guard.channel_refusal() == "too many open channels (max 3)"
    conn.open_channels = 2
    assert guard.channel_refusal() == ""
    other = FakeConnection(2)
    other.open_channels = 2
    state.key_usage.add(ALICE.fingerprint, other)  # the key's other connection
    assert guard.channel_refusal().startswith("too many open channels for this key")


def test_refused_while_shutting_down_without_an_audit_record(state: BastionState) -> None:
    state.accepting = False
    sock = FakeSocket()
    assert guard_for(state, FakeConnection(1)).refuse_start(sock)  # type: ignore[arg-type]
    assert sock.dropped == "close"
    assert audited(state) == []
