"""Shared by every test."""

from __future__ import annotations

import pytest

from sshtunnel_mgr import sshcompat


@pytest.fixture(autouse=True)
def _fresh_sshcompat_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no shim check remembered, none remembered as stepped aside
    and nothing logged about one: a test that removes an asyncssh internal leaves no trace
    in the next one's connections, status or log (sshcompat does each once per process)."""
    monkeypatch.setattr(sshcompat, "_checked", {})
    monkeypatch.setattr(sshcompat, "_aside", {})
    monkeypatch.setattr(sshcompat, "_told", set())
