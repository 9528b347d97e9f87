"""``sshtun ssh-config`` output, used as-is by the real ssh client to reach the home box."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sshtunnel_mgr.admin import AdminServer
from sshtunnel_mgr.cli.main import main
from tests.harness import (
    USER,
    Keys,
    access_text,
    agent_config,
    bastion_config,
    home_sshd,
    pub_of,
    run_ssh,
    running_agent,
    running_bastion,
    wait_for,
    write_ssh_config,
    write_toml,
)
from tests.integration.conftest import logged


async def test_generated_config_reaches_the_home_box(
    keys: Keys,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    bcfg = bastion_config(keys, access)
    async with home_sshd(keys, tmp_path / "home") as home, running_bastion(bcfg) as bastion:
        bcfg = bcfg.model_copy(update={"listen": [f"127.0.0.1:{bastion.port}"]})
        bfile = write_toml(tmp_path / "bastion.toml", "bastion", bcfg)
        assert bcfg.admin_socket is not None
        admin = AdminServer(bcfg.admin_socket, bastion.handle_admin)
        assert await admin.start()
        known = tmp_path / "client" / "known_hosts"
        argv = [
            "ssh-config",
            "--config",
            str(bfile),
            "--address",
            f"127.0.0.1:{bastion.port}",
            "--known-hosts",
            str(known),
            "--user",
            USER,
            "--identity",
            str(keys.client.path),
        ]
        try:
            async with running_agent(
                agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home.port}")])
            ):
                await wait_for(lambda: logged(caplog, "key request", "sshtun-hostkey"))
                code = await asyncio.to_thread(main, argv)
                out, err = capsys.readouterr()
                assert code == 0, err
                assert "Host homebox\n" in out and "ProxyJump sshtun-bastion" in out
                # The bastion's key, and the home box's own key as its agent read it from
                # the home sshd: both hops pinned, no trust-on-first-use, no manual step.
                pinned = (
                    f"[127.0.0.1]:{bastion.port} {pub_of(keys.bastion_host)}\n"
                    f"homebox {pub_of(keys.home_host)}\n"
                )
                assert known.read_text() == pinned
                cfg = tmp_path / "client" / "config"
                cfg.write_text(
                    out + "\nHost *\n    BatchMode yes\n"
                    "    GlobalKnownHostsFile /dev/null\n    LogLevel ERROR\n"
                )
                result = await run_ssh(cfg, "homebox", "echo generated-config-works")
                assert result.stdout == b"generated-config-works\n", result.stderr
        finally:
            await admin.stop()


async def test_without_a_running_bastion_names_come_from_the_access_file(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys, listen="homebox:22,*.home.example.com:2222"))
    bcfg = bastion_config(keys, access).model_copy(update={"admin_socket": tmp_path / "none.sock"})
    bfile = write_toml(tmp_path / "bastion.toml", "bastion", bcfg)
    code = await asyncio.to_thread(
        main,
        [
            "ssh-config",
            "--config",
            str(bfile),
            "--address",
            "bastion.example.com",
            "--known-hosts",
            str(tmp_path / "kh"),
        ],
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Host homebox\n    HostName homebox\n    Port 22\n" in out
    assert "Host *.home.example.com\n    HostName %h\n    Port 2222\n" in out
    assert "    HostName bastion.example.com\n    Port 22\n" in out
    assert (tmp_path / "kh").read_text().startswith("bastion.example.com ssh-ed25519 ")


async def test_only_the_publishing_connection_may_announce_a_host_key(
    keys: Keys, tmp_path: Path
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    async with running_bastion(bastion_config(keys, access)) as bastion:
        client = write_ssh_config(tmp_path / "alice", keys, bastion.port)
        line = pub_of(keys.home_host)
        for command, error in [
            (f"sshtun-hostkey homebox 22 {line}", b"homebox:22 is not published on this"),
            ("sshtun-hostkey homebox 22 ssh-ed25519 AAAA", b"bad host key announcement"),
            ("sshtun-hostkey homebox", b"bad host key announcement"),
        ]:
            got = await run_ssh(client, "bastion", command)
            assert got.returncode == 1 and error in got.stdout, (got.stdout, got.stderr)
        assert all(not c.home_host_keys for c in bastion.state.connections.values())
