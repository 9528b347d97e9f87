"""The audit log writer and the per-key bookkeeping (bastion/audit.py, bastion/limits.py):
plain files and plain objects, no sockets."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from sshtunnel_mgr.bastion.audit import MAX_FIELD, AuditLog, end_reason, utc_timestamp
from sshtunnel_mgr.core.access import AccessEntry, parse_access
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.limits import KeyUsage, channel_refusal, connection_refusal

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))


@dataclass
class FakePeer:
    conn_id: int = 7
    peer_ip: str = "192.0.2.1"
    peer_port: int = 40000
    entry: AccessEntry | None = None


def entry() -> AccessEntry:
    (e,) = parse_access(f'permitopen="homebox:22" {KEY} alice@laptop\n').entries
    return e


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("now", "text"),
    [
        (NOW, "2026-01-02T03:04:05.678Z"),
        (
            datetime(2026, 1, 2, 5, 4, 5, tzinfo=PLUS2),
            "2026-01-02T03:04:05.000Z",
        ),
        (datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "2026-12-31T23:59:59.999Z"),
    ],
)
def test_timestamps_are_iso_8601_utc(now: datetime, text: str) -> None:
    assert utc_timestamp(now) == text


@pytest.mark.parametrize(
    ("client", "home", "shutting_down", "reason"),
    [
        ("closed", "", False, "client closed"),
        ("closed", "closed", False, "home side closed"),
        ("Connection lost", "", False, "client connection lost: Connection lost"),
        ("closed", "Connection reset", False, "agent connection lost: Connection reset"),
        ("Connection lost", "Connection reset", False, "client connection lost: Connection lost"),
        ("closed", "closed", True, "bastion shutting down"),
        ("", "", False, "client closed"),
    ],
)
def test_end_reason(client: str, home: str, shutting_down: bool, reason: str) -> None:
    assert end_reason(client, home, shutting_down) == reason


@pytest.mark.parametrize(
    ("client", "home", "shutting_down", "outcome"),
    [
        ("closed", "", False, "client left during open"),
        ("closed", "", True, "open timed out"),
        ("closed", "closed", False, "home side refused: Connection refused"),
        ("Connection lost", "Connection reset", True, "agent not answering opens"),
    ],
)
def test_a_channel_that_never_opened_ends_with_why(
    client: str, home: str, shutting_down: bool, outcome: str
) -> None:
    """The splice's own outcome wins over how each end closed (bastion/routeopen.py)."""
    assert end_reason(client, home, shutting_down, outcome) == outcome


def test_events_are_json_lines_in_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, now=lambda: NOW).open()
    peer = FakePeer()
    audit.refused(peer, "auth", "unknown key SHA256:x (user 'root')")
    peer.entry = entry()
    audit.login(peer)
    audit.publish(peer, "homebox", 22)
    audit.unpublish(None, "homebox", 22, 9, "closed")
    audit.penalty(peer, "192.0.2.1", 10, 300.0)
    audit.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    got = lines(path)
    fp = entry().fingerprint
    assert got == [
        {
            "ts": "2026-01-02T03:04:05.678Z",
            "event": "refused",
            "conn": 7,
            "from": "192.0.2.1:40000",
            "stage": "auth",
            "reason": "unknown key SHA256:x (user 'root')",
        },
        {
            "ts": "2026-01-02T03:04:05.678Z",
            "event": "login",
            "conn": 7,
            "from": "192.0.2.1:40000",
            "key": fp,
            "comment": "alice@laptop",
        },
        {
            "ts": "2026-01-02T03:04:05.678Z",
            "event": "publish",
            "conn": 7,
            "from": "192.0.2.1:40000",
            "key": fp,
            "comment": "alice@laptop",
            "name": "homebox",
            "port": 22,
        },
        {
            "ts": "2026-01-02T03:04:05.678Z",
            "event": "unpublish",
            "conn": 9,
            "name": "homebox",
            "port": 22,
            "reason": "closed",
        },
        {
            "ts": "2026-01-02T03:04:05.678Z",
            "event": "penalty",
            "conn": 7,
            "from": "192.0.2.1:40000",
            "key": fp,
            "comment": "alice@laptop",
            "source": "192.0.2.1",
            "failures": 10,
            "seconds": 300.0,
        },
    ]


def test_appends_and_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"old": 1}\n')
    path.chmod(0o644)
    audit = AuditLog(path).open()
    audit.login(FakePeer())
    audit.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [next(iter(d)) for d in lines(path)] == ["old", "ts"]


def test_client_supplied_text_stays_on_one_line_and_is_clipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path).open()
    audit.refused(FakePeer(), "open", "no", dest='evil\n{"event":"login"}' + "x" * 5000)
    audit.close()
    (event,) = lines(path)
    dest = event["dest"]
    assert isinstance(dest, str)
    assert dest.startswith('evil\n{"event":"login"}')
    assert len(dest) == MAX_FIELD + 3


def test_switched_off_writes_nothing(tmp_path: Path) -> None:
    audit = AuditLog(None).open()
    assert not audit.enabled
    audit.login(FakePeer())  # no file, no error
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=r"cannot open audit log .*audit\.jsonl") as info:
        AuditLog(link).open()
    assert "must not be a symlink" in (info.value.hint or "")


def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file or directory"):
        AuditLog(tmp_path / "nope" / "audit.jsonl").open()


def test_reopen_follows_a_rotation_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path).open()
    audit.login(FakePeer(conn_id=1))
    os.rename(path, tmp_path / "audit.jsonl.1")  # logrotate
    audit.reopen(path)
    audit.login(FakePeer(conn_id=2))
    with pytest.raises(ConfigError):
        audit.reopen(tmp_path / "nope" / "x")
    assert audit.path == path
    audit.login(FakePeer(conn_id=3))
    audit.reopen(None)
    assert not audit.enabled
    audit.login(FakePeer(conn_id=4))
    assert [d["conn"] for d in lines(tmp_path / "audit.jsonl.1")] == [1]
    assert [d["conn"] for d in lines(path)] == [2, 3]


def test_a_failing_write_is_counted_not_raised(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    audit = AuditLog(Path("/dev/full"))
    audit._fd = os.open("/dev/full", os.O_WRONLY)  # a device: open() would chmod it
    audit.login(FakePeer())
    audit.login(FakePeer())
    audit.close()
    assert audit.write_errors == 2


def test_dropped_records_are_logged_once_a_minute_then_writing_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    clock = [0.0]
    audit = AuditLog(Path("/dev/full"), now=lambda: NOW, clock=lambda: clock[0])
    audit._fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    for t in (0.0, 1.0, 59.0, 60.0, 61.0):
        clock[0] = t
        audit.login(FakePeer())
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(" dropped=")[1] for m in messages] == ["1 dropped_total=1", "4 dropped_total=4"]
    assert audit.write_errors == 5
    audit.close()
    audit._fd = os.open(tmp_path / "audit.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    audit.login(FakePeer())
    audit.login(FakePeer())
    audit.close()
    assert "audit log writable again" in caplog.records[-1].getMessage()
    assert caplog.records[-1].getMessage().endswith("dropped=5")
    assert len(caplog.records) == 3
    assert [d["event"] for d in lines(tmp_path / "audit.jsonl")] == ["login", "login"]


# Per-key limits ------------------------------------------------------------------------
@dataclass(eq=False)
class Conn:
    open_channels: int = 0


def test_key_usage_counts_connections_and_channels_per_key() -> None:
    usage: KeyUsage[Conn] = KeyUsage()
    a1, a2, b1 = Conn(3), Conn(4), Conn(10)
    usage.add("A", a1)
    usage.add("A", a2)
    usage.add("A", a2)  # twice is once
    usage.add("B", b1)
    assert (usage.connections("A"), usage.channels("A")) == (2, 7)
    assert (usage.connections("B"), usage.channels("B")) == (1, 10)
    assert (usage.connections("C"), usage.channels("C")) == (0, 0)
    a1.open_channels = 0
    assert usage.channels("A") == 4
    usage.remove("A", a1)
    usage.remove("A", a1)
    usage.remove("C", a1)
    assert usage.connections("A") == 1
    usage.remove("A", a2)
    usage.remove("B", b1)
    assert len(usage) == 0


@pytest.mark.parametrize(
    ("held", "limit", "refusal"),
    [
        (0, 1, ""),
        (1, 2, ""),
        (1, 1, "key has too many connections (max 1 per key)"),
        (5, 3, "key has too many connections (max 3 per key)"),
    ],
)
def test_connection_refusal(held: int, limit: int, refusal: str) -> None:
    usage: KeyUsage[Conn] = KeyUsage()
    for _ in range(held):
        usage.add("A", Conn())
    assert connection_refusal(usage, "A", limit) == refusal
    assert connection_refusal(usage, "B", limit) == ""


@pytest.mark.parametrize(
    ("channels", "limit", "refusal"),
    [
        ((), 1, ""),
        ((0, 0), 1, ""),
        ((1, 1), 3, ""),
        ((1, 2), 3, "too many open channels for this key across its connections (max 3)"),
        ((5,), 2, "too many open channels for this key across its connections (max 2)"),
    ],
)
def test_channel_refusal(channels: tuple[int, ...], limit: int, refusal: str) -> None:
    usage: KeyUsage[Conn] = KeyUsage()
    for n in channels:
        usage.add("A", Conn(n))
    assert channel_refusal(usage, "A", limit) == refusal
