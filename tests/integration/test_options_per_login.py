"""Shims ``serverstart`` and ``noreload`` on real logins: an in-process bastion, asyncssh
clients logging in.

Stock asyncssh builds two ``SSHServerConnectionOptions`` for every server connection, each
in an executor thread: ``run_server`` copies the given options (they carry the login
future), and user authentication re-derives them (``reload_config``, for config ``Match``
blocks). With both shims a login builds none: the connection runs on the listener's one
options object. With either stepped aside (its internal changed, as a future asyncssh
might), its copy is back and logins work the same. (What each saves: about 3.7 KiB per
idle agent; idle_agents.py at N = 2,000: 31.7 -> 28.0 KiB with noreload.)
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
    assert {"noreload", "serverstart"} <= set(shims["active"])
    assert built == 0


async def test_noreload_stepped_aside_the_login_derives_options_again(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stock = asyncssh.SSHServerConnection.reload_config
    assert inspect.iscoroutinefunction(stock)

    async def reshaped(self: Any, *args: Any) -> None:
        await stock(self, *args)

    monkeypatch.setattr(asyncssh.SSHServerConnection, "reload_config", reshaped)
    built, shims = await _per_login(keys, tmp_path, monkeypatch)
    assert list(shims["stepped_aside"]) == ["noreload"]
    assert built == 1


async def test_serverstart_stepped_aside_run_server_copies_the_options_again(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = asyncssh.connection.SSHConnectionOptions  # no login future declared any more
    monkeypatch.setattr(options, "__annotations__", {**options.__annotations__})
    monkeypatch.delitem(options.__annotations__, "waiter")
    built, shims = await _per_login(keys, tmp_path, monkeypatch)
    assert list(shims["stepped_aside"]) == ["serverstart"]
    assert built == 1
