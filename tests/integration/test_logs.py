"""Logs: one event per line, key=value or JSON, never a key or a secret."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from sshtunnel_mgr.logsetup import render_event
from tests.harness import (
    SSHTUN,
    Keys,
    access_text,
    bastion_config,
    free_port,
    process,
    read_until,
    run_ssh,
    write_ssh_config,
    write_toml,
)


async def test_json_logs_carry_each_refusal_as_fields(keys: Keys, tmp_path: Path) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    port = free_port()
    bfile = write_toml(tmp_path / "bastion.toml", "bastion", bastion_config(keys, access, port))
    async with process(
        *SSHTUN, "--log-format", "json", "bastion", "--config", str(bfile)
    ) as bastion:
        await read_until(bastion.stderr, "listening on")
        client = write_ssh_config(tmp_path / "c", keys, port)
        result = await run_ssh(client, "-W", "127.0.0.1:22", "bastion")
        assert result.returncode != 0
        bastion.send_signal(signal.SIGTERM)
        await bastion.wait()
        assert bastion.stderr is not None
        lines = (await bastion.stderr.read()).decode().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    [refusal] = [e for e in events if e["event"] == "refused open"]
    assert refusal["level"] == "warning"
    assert refusal["dest"] == "127.0.0.1:22"
    assert refusal["reason"].startswith("'127.0.0.1' is an IP address, not a name")
    assert refusal["key"].startswith(keys.client.fingerprint)
    # No private or public key material, only fingerprints.
    blob = keys.client.public_line.split()[1]
    assert all(blob not in line for line in lines)
    private = keys.client.path.read_text().splitlines()[1]
    assert all(private not in line for line in lines)


@pytest.mark.parametrize(
    ("name", "fields", "text"),
    [
        (
            "publish",
            {"conn": 1, "name": "homebox", "port": 22},
            "publish conn=1 name=homebox port=22",
        ),
        ("stopping", {}, "stopping"),
        (
            "auth refused",
            {"conn": 3, "from": "::1", "reason": "unknown key (user 'a')"},
            "auth refused conn=3 from=::1 reason=\"unknown key (user 'a')\"",
        ),
    ],
)
def test_render_event(name: str, fields: dict[str, object], text: str) -> None:
    assert render_event(name, fields) == text
