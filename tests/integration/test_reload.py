"""Live changes: SIGHUP / `sshtun reload` apply new access and tunnels without dropping
anything the change does not concern — proven with a stream flowing during the reload."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncssh
import pytest

from sshtunnel_mgr.cli.main import main
from sshtunnel_mgr.keys.store import load_private_key
from tests.harness import (
    SSHTUN,
    Keys,
    access_text,
    agent_config,
    bastion_config,
    bastion_pub,
    free_port,
    home_sshd,
    process,
    read_until,
    run_ssh,
    running_agent,
    running_bastion,
    wait_for,
    write_ssh_config,
    write_toml,
)
from tests.integration.conftest import logged

STREAM = "for i in $(seq 1 40); do echo line$i; sleep 0.05; done"
EXPECTED = "".join(f"line{i}\n" for i in range(1, 41)).encode()


async def test_bastion_sighup_revokes_only_what_changed_while_a_stream_flows(
    keys: Keys, tmp_path: Path
) -> None:
    bob, carol = keys.extra("bob_key"), keys.extra("carol_key")
    access = tmp_path / "access"
    bob_line = f'permitopen="homebox:22" {bob.public_line}'
    carol_line = f'permitopen="homebox:22" {carol.public_line}'
    access.write_text(access_text(keys, extra=[bob_line]))
    port = free_port()
    bfile = write_toml(tmp_path / "bastion.toml", "bastion", bastion_config(keys, access, port))
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        process(*SSHTUN, "bastion", "--config", str(bfile)) as bastion,
    ):
        await read_until(bastion.stderr, "listening on")
        log_lines: list[str] = []

        async def collect() -> None:
            assert bastion.stderr is not None
            async for raw in bastion.stderr:
                log_lines.append(raw.decode())

        collector = asyncio.create_task(collect())
        async with running_agent(
            agent_config(keys, port, [("homebox", 22, f"127.0.0.1:{home.port}")])
        ):
            client = write_ssh_config(tmp_path / "alice", keys, port)
            pinned = ([asyncssh.import_public_key(bastion_pub(keys))], [], [])
            bob_conn = await asyncssh.connect(
                "127.0.0.1",
                port,
                username="bob",
                client_keys=[load_private_key(bob.path)],
                known_hosts=pinned,
                config=None,
                agent_path=None,
            )
            stream = asyncio.create_task(run_ssh(client, "homebox", STREAM))
            await asyncio.sleep(0.5)  # the stream is flowing
            access.write_text(access_text(keys, extra=[carol_line]))  # bob out, carol in
            bastion.send_signal(signal.SIGHUP)
            await asyncio.wait_for(bob_conn.wait_closed(), 10)
            result = await stream
            assert result.returncode == 0, result.stderr
            assert result.stdout == EXPECTED  # not one line lost
            carol_cfg = write_ssh_config(tmp_path / "carol", keys, port, identity=carol.path)
            # Carol may now reach the name (her key is not on the home box: she sees its banner).
            reached = await run_ssh(carol_cfg, "-W", "homebox:22", "bastion")
            assert reached.stdout.startswith(b"SSH-2.0-OpenSSH"), reached.stderr
            assert (await run_ssh(client, "homebox", "echo alice")).stdout == b"alice\n"
        await wait_for(lambda: any("reload done" in line for line in log_lines))
        assert any("revoked" in line and bob.fingerprint in line for line in log_lines)
        assert not any("revoked" in line and keys.client.fingerprint in line for line in log_lines)
        bastion.send_signal(signal.SIGTERM)
        await bastion.wait()
        collector.cancel()


async def test_narrowed_permitlisten_withdraws_the_name_and_a_bad_file_is_refused(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys, listen="homebox:22,other:22"))
    bcfg = bastion_config(keys, access)
    async with (
        running_bastion(bcfg) as bastion,
        running_agent(
            agent_config(
                keys, bastion.port, [("homebox", 22, "127.0.0.1:9"), ("other", 22, "127.0.0.1:9")]
            )
        ),
    ):
        # A broken file is refused whole; the running policy stays.
        access.write_text("permitlisten=oops ssh-ed25519 AAAA\n")
        answer = bastion.reload(bcfg)
        assert answer["ok"] is False and f"{access}:1" in answer["error"]
        assert logged(caplog, "reload refused", "the running access policy stays")
        assert bastion.state.routes.lookup("other", 22)
        # Narrowed: "other" is withdrawn, "homebox" and its agent connection stay.
        access.write_text(access_text(keys, listen="homebox:22"))
        answer = bastion.reload(bcfg)
        assert answer == {
            "ok": True,
            "host_keys": [keys.bastion_host.fingerprint],
            "keys": 2,
            "revoked": [],
            "withdrawn": ["other:22"],
            "notes": [],
        }
        assert not bastion.state.routes.lookup("other", 22)
        assert bastion.state.routes.lookup("homebox", 22)


async def test_agent_reload_publishes_and_withdraws_tunnels_without_dropping_a_stream(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys, listen="*.lan:22,homebox:22", open_="*:22"))
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion_config(keys, access)) as bastion,
    ):
        target = f"127.0.0.1:{home.port}"
        acfg = agent_config(keys, bastion.port, [("homebox", 22, target)])
        afile = write_toml(tmp_path / "agent.toml", "agent", acfg)
        async with process(*SSHTUN, "up", "--config", str(afile)) as agent:
            await read_until(agent.stderr, "published")
            client = write_ssh_config(tmp_path / "c", keys, bastion.port)
            stream = asyncio.create_task(run_ssh(client, "homebox", STREAM))
            await asyncio.sleep(0.5)
            # Add nas.lan over the admin socket (`sshtun reload`) ...
            write_toml(
                afile,
                "agent",
                acfg.model_copy(
                    update={
                        "tunnels": [
                            *acfg.tunnels,
                            acfg.tunnels[0].model_copy(update={"name": "nas.lan"}),
                        ]
                    }
                ),
            )
            code = await asyncio.to_thread(main, ["reload", "--config", str(afile)])
            out, err = capsys.readouterr()
            assert code == 0, err
            assert "published: nas.lan:22" in out
            await wait_for(lambda: bastion.state.routes.lookup("nas.lan", 22))
            nas = write_ssh_config(tmp_path / "nas", keys, bastion.port, name="nas.lan")
            assert (await run_ssh(nas, "nas.lan", "echo nas")).stdout == b"nas\n"
            # ... and take it away again with SIGHUP.
            write_toml(afile, "agent", acfg)
            agent.send_signal(signal.SIGHUP)
            await wait_for(lambda: not bastion.state.routes.lookup("nas.lan", 22))
            result = await stream
            assert result.stdout == EXPECTED, result.stderr
            assert bastion.state.routes.lookup("homebox", 22)
            # A broken agent config is refused; the agent keeps running as it was.
            afile.write_text("[agent]\nkey = 1\n")
            code = await asyncio.to_thread(main, ["reload", "--config", str(afile)])
            _, err = capsys.readouterr()
            assert code == 3  # the CLI itself cannot read the file: a config error
            agent.send_signal(signal.SIGHUP)
            await read_until(agent.stderr, "reload refused")
            assert agent.returncode is None
            assert (await run_ssh(client, "homebox", "echo still")).stdout == b"still\n"
