from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.harness import Keys


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys.create(tmp_path / "keys")


@pytest.fixture(autouse=True)
def _sshtun_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sshtunnel_mgr")


def logged(caplog: pytest.LogCaptureFixture, *parts: str) -> bool:
    """Whether one sshtun log line contains every part."""
    return any(all(p in r.getMessage() for p in parts) for r in caplog.records)
