"""File mode and owner checks on stat results, as tables."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.doctor.files import (
    FileStat,
    check_access_file_mode,
    check_authorized_keys,
    check_config_file,
    check_home_dir,
    check_private_key_file,
    check_ssh_dir,
)
from sshtunnel_mgr.doctor.findings import Level

OK, WARN, FAIL = Level.OK, Level.WARN, Level.FAIL
USER = {1000, 0}


def st(mode: int, uid: int = 1000, is_dir: bool = False) -> FileStat:
    return FileStat("/p", True, mode, uid, is_dir)


@pytest.mark.parametrize(
    ("mode", "uid", "level"),
    [
        (0o600, 1000, OK),
        (0o400, 1000, OK),
        (0o640, 1000, FAIL),
        (0o644, 1000, FAIL),
        (0o604, 1000, FAIL),
        (0o666, 1000, FAIL),
        (0o600, 0, OK),
        (0o600, 1234, WARN),
    ],
)
def test_private_key(mode: int, uid: int, level: Level) -> None:
    finding = check_private_key_file(st(mode, uid), "agent.key-mode", "agent key", USER)
    assert finding is not None and finding.level is level
    if level is FAIL:
        assert finding.fix == "chmod 600 /p"


def test_a_missing_private_key_fails_with_how_to_make_one() -> None:
    finding = check_private_key_file(FileStat("/p", False), "agent.key-mode", "agent key")
    assert finding is not None and finding.level is FAIL
    assert "sshtun keys gen" in finding.fix


@pytest.mark.parametrize(
    ("mode", "uid", "level"),
    [
        (0o700, 1000, OK),
        (0o750, 1000, WARN),
        (0o755, 1000, WARN),
        (0o770, 1000, FAIL),
        (0o707, 1000, FAIL),
        (0o700, 1234, FAIL),
    ],
)
def test_ssh_dir(mode: int, uid: int, level: Level) -> None:
    finding = check_ssh_dir(st(mode, uid, True), USER)
    assert finding is not None and finding.level is level


def test_a_missing_ssh_dir_is_not_reported() -> None:
    assert check_ssh_dir(FileStat("/h/.ssh", False), USER) is None


@pytest.mark.parametrize(
    ("mode", "uid", "level"),
    [
        (0o600, 1000, OK),
        (0o644, 1000, OK),
        (0o664, 1000, FAIL),
        (0o646, 1000, FAIL),
        (0o644, 0, OK),
        (0o644, 1234, FAIL),
    ],
)
def test_authorized_keys(mode: int, uid: int, level: Level) -> None:
    finding = check_authorized_keys(st(mode, uid), USER)
    assert finding is not None and finding.level is level


@pytest.mark.parametrize(
    ("mode", "level"), [(0o755, OK), (0o700, OK), (0o775, FAIL), (0o1777, FAIL)]
)
def test_home_dir(mode: int, level: Level) -> None:
    finding = check_home_dir(st(mode, is_dir=True), USER)
    assert finding is not None and finding.level is level


@pytest.mark.parametrize(
    ("mode", "level"), [(0o644, OK), (0o600, OK), (0o664, WARN), (0o666, FAIL), (0o646, FAIL)]
)
def test_config_file(mode: int, level: Level) -> None:
    finding = check_config_file(st(mode), "agent.config-mode", "config")
    assert finding is not None and finding.level is level


@pytest.mark.parametrize(
    ("mode", "uid", "level"),
    [(0o600, 0, OK), (0o644, 0, OK), (0o664, 0, FAIL), (0o646, 0, FAIL), (0o644, 1234, WARN)],
)
def test_access_file(mode: int, uid: int, level: Level) -> None:
    finding = check_access_file_mode(st(mode, uid), {0})
    assert finding is not None and finding.level is level


def test_the_message_says_who_may_do_what() -> None:
    finding = check_config_file(st(0o646), "c", "config")
    assert finding is not None
    assert "others write" in finding.message and "0646" in finding.message


def test_a_stat_error_fails() -> None:
    finding = check_config_file(FileStat("/p", False, error="Permission denied"), "c", "config")
    assert finding is not None and finding.level is FAIL
