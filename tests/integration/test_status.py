"""``sshtun status`` over the admin socket, while tunnels are up and after a reconnect."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from sshtunnel_mgr.cli.main import main
from sshtunnel_mgr.cli.status import format_status
from sshtunnel_mgr.runtime.admin import AdminServer
from tests.clisamples import systemd_agent
from tests.harness import Keys, agent_config, wait_for, write_toml
from tests.integration.scene import scene, sshtun_process


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_status_on_both_ends_while_up_and_after_a_reconnect(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with scene(keys, tmp_path, bastion=False) as s:
        port = s.port
        bfile = s.bastion_file(admin_socket=tmp_path / "run" / "bastion.sock")
        agent_kw: dict[str, Any] = {
            "backoff": {"base": 0.2, "cap": 0.5},
            "admin_socket": tmp_path / "run" / "agent.sock",
        }
        afile = s.agent_file(**agent_kw)
        bastion_cm = sshtun_process("bastion", "--config", str(bfile), ready="listening on")
        async with bastion_cm as bastion, s.agent(**agent_kw) as agent:
            sock = tmp_path / "run" / "bastion.sock"
            await wait_for(sock.exists)
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            result = await s.reach("head -c 100000 /dev/zero")
            assert len(result.stdout) == 100000, result.stderr

            code, out, err = await cli(capsys, "status", "--config", str(bfile), "--json")
            assert code == 0, err
            answer = json.loads(out)
            [name] = answer["names"]
            assert (name["name"], name["port"]) == ("homebox", 22)
            assert name["key"] == keys.agent.fingerprint
            assert name["comment"] == "agent@home"
            assert name["source"].startswith("127.0.0.1:")
            assert name["channels_total"] >= 1
            assert name["bytes_from_home"] > 100000
            code, out, _ = await cli(capsys, "status", "--config", str(bfile))
            assert "homebox:22" in out and keys.agent.fingerprint in out

            code, out, err = await cli(capsys, "status", "--config", str(afile), "--json")
            assert code == 0, err
            [link] = json.loads(out)["links"]
            assert link["state"] == "up" and link["published"] == ["homebox:22"]
            code, out, _ = await cli(capsys, "status", "--config", str(afile))
            assert f"127.0.0.1:{port}" in out and "up" in out

            # The bastion goes away: the agent's status says so, and when it will retry.
            bastion.send_signal(signal.SIGKILL)
            await bastion.wait()
            link_obj = agent.agent.links[0]
            # The link cycles backoff -> connecting every 0.2-0.5 s: on a loaded machine one
            # status call can land in "connecting", so ask until one lands in "backoff".
            for _ in range(50):
                await wait_for(lambda: link_obj.status.state == "backoff")
                code, out, _ = await cli(capsys, "status", "--config", str(afile), "--json")
                [link] = json.loads(out)["links"]
                if link["state"] == "backoff":
                    break
            assert link["state"] == "backoff"
            assert link["last_error"]
            assert link["next_retry_at"] is not None
            for _ in range(50):
                await wait_for(lambda: link_obj.status.state == "backoff")
                code, out, _ = await cli(capsys, "status", "--config", str(afile))
                if "retry in" in out:
                    break
            assert "retry in" in out

            async with sshtun_process("bastion", "--config", str(bfile), ready="listening on"):
                await wait_for(lambda: link_obj.status.state == "up")
                code, out, _ = await cli(capsys, "status", "--config", str(afile), "--json")
                [link] = json.loads(out)["links"]
                assert link["state"] == "up" and link["connects"] == 2


async def test_status_without_a_running_service_says_so(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acfg = agent_config(
        keys, 1, [("homebox", 22, "127.0.0.1:22")], admin_socket=tmp_path / "nothing.sock"
    )
    afile = write_toml(tmp_path / "agent.toml", "agent", acfg)
    code, _, err = await cli(capsys, "status", "--config", str(afile))
    assert code == 1
    assert f"no admin socket at {tmp_path / 'nothing.sock'}" in err
    assert "hint: is the service running?" in err


async def test_status_finds_the_rotation_record_of_a_systemd_credential_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """key = "$CREDENTIALS_DIRECTORY/agent_key" (unset outside the unit): the record sits
    beside the LoadCredential= source that `sshtun keys rotate --key SOURCE` rotated."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    afile, source = systemd_agent(tmp_path, rotating=True)
    code, _, err = await cli(capsys, "status", "--config", str(afile))
    assert code == 1 and "no admin socket" in err
    assert "key rotation not finished: the new key" in err
    assert f"finish it: sshtun keys rotate --config {afile} --key {source}" in err
    code, _, err = await cli(capsys, "keys", "rotate", "--config", str(afile))
    assert code == 6 and f"--key {source}" in err  # rotate names the same source


def test_format_status_tables() -> None:
    now = 1000.0
    bastion = {
        "role": "bastion",
        "listening": ["0.0.0.0:2222"],
        "connections": 3,
        "names": [
            {
                "name": "homebox",
                "port": 22,
                "key": "SHA256:abc",
                "comment": "agent@home",
                "source": "192.0.2.1:5555",
                "since": 880.0,
                "open_channels": 1,
                "channels_total": 4,
                "bytes_to_home": 2048,
                "bytes_from_home": 3 << 20,
            }
        ],
    }
    text = format_status(bastion, now)
    assert text.splitlines()[0] == "bastion listening on 0.0.0.0:2222: 1 names, 3 connections"
    assert "homebox:22" in text and "2m" in text and "1/4" in text
    assert "2.0KiB/3.0MiB" in text
    agent = {
        "role": "agent",
        "healthy": False,
        "links": [
            {
                "bastion": "b:22",
                "state": "backoff",
                "up_since": None,
                "next_retry_at": 1007.0,
                "published": [],
                "refused": {"secret:22": "refused"},
                "last_error": "connect: refused",
                "probe_error": "",
            }
        ],
    }
    text = format_status(agent, now)
    assert "agent (not healthy)" in text
    assert "retry in 7s" in text and "refused secret:22" in text and "connect: refused" in text


async def test_status_after_a_revoke(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Remove the agent's key and reload: the bastion's status no longer lists its name,
    and the agent's status shows the refusal it got when it tried to come back."""
    async with scene(keys, tmp_path, home=False) as s:
        access, bcfg, bastion = s.access, s.bastion_cfg, s.bastion
        bfile = write_toml(
            tmp_path / "bastion.toml",
            "bastion",
            bcfg.model_copy(update={"listen": [f"127.0.0.1:{bastion.port}"]}),
        )
        assert bcfg.admin_socket is not None
        admin = AdminServer(bcfg.admin_socket, bastion.handle_admin)
        assert await admin.start()
        try:
            afile = s.agent_file(
                [("homebox", 22, "127.0.0.1:9")], backoff={"base": 0.1, "cap": 0.2}
            )
            # It is meant to exit on its own (5: refused): the test checks that itself.
            up = sshtun_process("up", "--config", str(afile), ready="published", check=False)
            async with up as agent:
                access.write_text(f'permitopen="homebox:22" {keys.client.public_line}\n')
                answer = bastion.reload(bcfg)
                assert answer["revoked"] == [keys.agent.fingerprint]
                code, out, _ = await cli(capsys, "status", "--config", str(bfile), "--json")
                assert code == 0 and json.loads(out)["names"] == []
                # The agent is refused on its way back in: a fatal, clearly reported error.
                assert await agent.wait(20) == 5
                await agent.wait_log("refused key")
        finally:
            await admin.stop()
