"""Shim ``noreload`` on real logins: an in-process bastion, asyncssh clients logging in.

Stock asyncssh builds a second ``SSHServerConnectionOptions`` for every connection when
its user authentication begins (``reload_config``, in an executor thread). With the shim a
login builds none after the one its connection started with (``run_server``'s), and the
connection keeps that one; with the shim stepped aside (its internal reshaped, as a
future asyncssh might) the second one is back and logins work the same. (What it saves:
about 3.7 KiB per idle agent, idle_agents.py at N = 2,000: 31.7 -> 28.0 KiB.)
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.harness import Keys
from tests.integration.scene import scene

LOGINS = 4


async def _per_login(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[float, dict[str, Any]]:
    """Server options objects built per login, and the bastion's shim summary."""
    built: list[object] = []
    init = asyncssh.SSHServerConnectionOptions.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        init(self, *args, **kwargs)

    async with scene(keys, tmp_path, home=False) as s:
        monkeypatch.setattr(asyncssh.SSHServerConnectionOptions, "__init__", counted)
        conns = [await s.connect(keys.client.path) for _ in range(LOGINS)]
        try:
            for conn in conns:
                assert conn.get_extra_info("username") == "alice"
            per_login = len(built) / LOGINS
        finally:
            for conn in conns:
                conn.close()
                await conn.wait_closed()
        return per_login, s.bastion.snapshot()["asyncssh"]


async def test_a_login_builds_no_second_options_object(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built, shims = await _per_login(keys, tmp_path, monkeypatch)
    assert "noreload" in shims["active"]
    assert built == 1  # run_server's, for the connection


async def test_stepped_aside_the_stock_second_options_object_is_back(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stock = asyncssh.SSHServerConnection.reload_config
    assert inspect.iscoroutinefunction(stock)

    async def reshaped(self: Any, *args: Any) -> None:
        await stock(self, *args)

    monkeypatch.setattr(asyncssh.SSHServerConnection, "reload_config", reshaped)
    built, shims = await _per_login(keys, tmp_path, monkeypatch)
    assert "noreload" in shims["stepped_aside"]
    assert built == 2
