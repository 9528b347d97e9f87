"""The rotation record and where a rerun starts from it (pure tables, plus the record's
file on disk: atomic, 0600, a damaged one refused with a reason)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sshtunnel_mgr.cli.rotate import progress
from sshtunnel_mgr.cli.status import format_retiring, format_rotation_record
from sshtunnel_mgr.core.errors import KeyFileError, RotationError
from sshtunnel_mgr.doctor.findings import Level
from sshtunnel_mgr.doctor.keycheck import check_rotation
from sshtunnel_mgr.keys import rotation
from sshtunnel_mgr.keys.rotation import RotationState

OLD, NEW, OTHER = "SHA256:old", "SHA256:new", "SHA256:other"


@pytest.mark.parametrize(
    ("state", "on_disk", "expected"),
    [
        (None, OLD, "fresh"),
        (RotationState(OLD, NEW, "enrol"), OLD, "before-swap"),
        (RotationState(OLD, NEW, "switched"), OLD, "before-swap"),
        (RotationState(OLD, NEW, "switched"), NEW, "after-swap"),  # cut mid-swap
        (RotationState(OLD, NEW, "swapped"), NEW, "after-swap"),
    ],
)
def test_phase(state: RotationState | None, on_disk: str, expected: str) -> None:
    assert rotation.phase(state, on_disk) == expected


@pytest.mark.parametrize(
    ("state", "on_disk", "reason"),
    [
        (RotationState(OLD, NEW, "swapped"), OLD, "holds the old key"),
        (RotationState(OLD, NEW, "enrol"), OTHER, "neither the old key"),
    ],
)
def test_phase_refuses_a_record_that_does_not_match_the_key(
    state: RotationState, on_disk: str, reason: str
) -> None:
    with pytest.raises(RotationError, match=reason):
        rotation.phase(state, on_disk)


def test_record_round_trip_is_0600_and_cleared(tmp_path: Path) -> None:
    key = tmp_path / "agent_key"
    assert rotation.load_state(key) is None
    rotation.save_state(key, RotationState(OLD, NEW, "switched"))
    path = rotation.state_path(key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert rotation.load_state(key) == RotationState(OLD, NEW, "switched")
    rotation.clear_state(key)
    assert not path.exists() and rotation.load_state(key) is None


@pytest.mark.parametrize("text", ["{", '{"old": "a"}', '{"old": "a", "new": "b", "step": "x"}'])
def test_a_damaged_record_is_refused(tmp_path: Path, text: str) -> None:
    key = tmp_path / "agent_key"
    rotation.state_path(key).write_text(text)
    with pytest.raises(KeyFileError, match="rotation record"):
        rotation.load_state(key)


@pytest.mark.parametrize(
    ("link", "shown", "waits"),
    [
        ({"state": "draining", "sessions": 2}, "2 routed session(s) still open", True),
        ({"state": "draining", "sessions": 0}, "retiring the old key", False),
        ({"state": "retiring", "sessions": 0}, "retiring the old key", False),
        ({"state": "retired", "sessions": 0}, "old key retired", False),
        ({"state": "failed", "error": "refused"}, "failed: refused", False),
    ],
)
def test_progress(link: dict[str, object], shown: str, waits: bool) -> None:
    text, waiting = progress(link)
    assert shown in text and waiting is waits


def test_status_and_doctor_texts() -> None:
    finish = "sshtun keys rotate --config /etc/sshtun/agent.toml"
    text = format_rotation_record("described", finish, can_undo=True)
    assert f"finish it: {finish}" in text and f"{finish} --undo" in text
    assert "--undo" not in format_rotation_record("described", finish, can_undo=False)
    retiring = {
        "key": NEW,
        "done": False,
        "links": [{"bastion": "b:22", "state": "draining", "sessions": 1}],
    }
    assert "b:22: 1 routed session(s) still open" in format_retiring(retiring)
    assert format_retiring({**retiring, "done": True}) == "" and format_retiring(None) == ""
    assert check_rotation(None, finish, False).level is Level.OK
    half = check_rotation("described", finish, True)
    assert half.level is Level.WARN and finish in half.fix and "--undo" in half.fix


def test_the_record_keeps_the_earliest_expiry_of_the_old_key(tmp_path: Path) -> None:
    state = RotationState(OLD, NEW, "enrol").expiring("2026-12-03T08:00:00+00:00")
    state = state.expiring("2026-12-02T09:00:00+00:00").expiring("")
    assert state.old_expires == "2026-12-02T09:00:00+00:00"
    assert "the old key expires 2026-12-02T09:00:00+00:00" in rotation.describe(state)
    key = tmp_path / "agent_key"
    rotation.save_state(key, state.at("switched"))
    assert rotation.load_state(key) == state.at("switched")


@pytest.mark.parametrize(
    ("creds", "key", "rotated"),
    [
        (None, "$CREDENTIALS_DIRECTORY/agent_key", "/etc/sshtun/agent_key"),  # outside the unit
        ("/run/credentials/a", "/run/credentials/a/agent_key", "/etc/sshtun/agent_key"),  # inside
        (None, "/etc/sshtun/agent_key", "/etc/sshtun/agent_key"),
        ("/run/credentials/a", "/home/me/agent_key", "/home/me/agent_key"),
    ],
)
def test_a_systemd_credential_is_rotated_at_its_source(
    monkeypatch: pytest.MonkeyPatch, creds: str | None, key: str, rotated: str
) -> None:
    """The unit's copy of the key cannot be rotated (unset outside the service, read-only
    inside): status and doctor read the record beside the LoadCredential= source."""
    if creds is None:
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    else:
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", creds)
    config = Path("/etc/sshtun/agent.toml")
    assert rotation.rotated_key(Path(key), config) == Path(rotated)
