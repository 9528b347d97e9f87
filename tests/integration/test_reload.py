"""Live changes: SIGHUP / `sshtun reload` apply new access and tunnels without dropping
anything the change does not concern — proven with a stream that flows before and after
the reload (more lines arrive after it, and not one is lost)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from sshtunnel_mgr.cli.main import main
from tests.harness import Keys, access_text, wait_for, write_toml
from tests.integration.conftest import logged
from tests.integration.scene import scene


async def test_bastion_sighup_revokes_only_what_changed_while_a_stream_flows(
    keys: Keys, tmp_path: Path
) -> None:
    bob, carol = keys.extra("bob_key"), keys.extra("carol_key")
    bob_line = f'permitopen="homebox:22" {bob.public_line}'
    carol_line = f'permitopen="homebox:22" {carol.public_line}'
    access = access_text(keys, extra=[bob_line])
    async with (
        scene(keys, tmp_path, access=access, bastion=False) as s,
        s.bastion_process() as bastion,
    ):
        async with s.agent():
            bob_conn = await s.connect(bob.path, username="bob")
            async with s.stream() as stream:
                await stream.wait_lines(5)  # the stream is flowing
                s.access.write_text(access_text(keys, extra=[carol_line]))  # bob out, carol in
                bastion.send_signal(signal.SIGHUP)
                await asyncio.wait_for(bob_conn.wait_closed(), 10)
                await bastion.wait_log("reload done")
                await stream.more(10)  # and still flowing after the reload
                result = await stream.finish()
            assert result.returncode == 0, result.stderr
            assert result.stdout == stream.expected()  # not one line lost
            carol_cfg = s.ssh_config("carol", identity=carol.path)
            # Carol may now reach the name (her key is not on the home box: she sees its banner).
            reached = await s.ssh("-W", "homebox:22", "bastion", cfg=carol_cfg)
            assert reached.stdout.startswith(b"SSH-2.0-OpenSSH"), reached.stderr
            assert (await s.reach("echo alice")).stdout == b"alice\n"
        assert bastion.logged("reload done")
        assert bastion.logged("revoked", bob.fingerprint)
        assert not bastion.logged("revoked", keys.client.fingerprint)
        await bastion.stop()


async def test_narrowed_permitlisten_withdraws_the_name_and_a_bad_file_is_refused(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    access = access_text(keys, listen="homebox:22,other:22")
    async with scene(keys, tmp_path, access=access, home=False) as s:
        bastion, bcfg = s.bastion, s.bastion_cfg
        async with s.agent([("homebox", 22, "127.0.0.1:9"), ("other", 22, "127.0.0.1:9")]):
            # A broken file is refused whole; the running policy stays.
            s.access.write_text("permitlisten=oops ssh-ed25519 AAAA\n")
            answer = bastion.reload(bcfg)
            assert answer["ok"] is False and f"{s.access}:1" in answer["error"]
            assert logged(caplog, "reload refused", "the running access policy stays")
            assert bastion.state.routes.lookup("other", 22)
            # Narrowed: "other" is withdrawn, "homebox" and its agent connection stay.
            s.access.write_text(access_text(keys, listen="homebox:22"))
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
    access = access_text(keys, listen="*.lan:22,homebox:22", open_="*:22")
    async with scene(keys, tmp_path, access=access) as s:
        bastion = s.bastion
        acfg = s.agent_config()
        afile = write_toml(tmp_path / "agent.toml", "agent", acfg)
        async with s.agent_process(afile) as agent, s.stream() as stream:
            await stream.wait_lines(5)  # the stream is flowing
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
            nas = s.ssh_config("nas", name="nas.lan")
            assert (await s.ssh("nas.lan", "echo nas", cfg=nas)).stdout == b"nas\n"
            # ... and take it away again with SIGHUP.
            write_toml(afile, "agent", acfg)
            agent.send_signal(signal.SIGHUP)
            await wait_for(lambda: not bastion.state.routes.lookup("nas.lan", 22))
            await stream.more(10)  # still flowing after both reloads
            result = await stream.finish()
            assert result.stdout == stream.expected(), result.stderr
            assert bastion.state.routes.lookup("homebox", 22)
            # A broken agent config is refused; the agent keeps running as it was.
            afile.write_text("[agent]\nkey = 1\n")
            code = await asyncio.to_thread(main, ["reload", "--config", str(afile)])
            _, err = capsys.readouterr()
            assert code == 3  # the CLI itself cannot read the file: a config error
            mark = agent.mark()
            agent.send_signal(signal.SIGHUP)
            await agent.wait_log("reload refused", start=mark)
            assert agent.returncode is None
            assert (await s.reach("echo still")).stdout == b"still\n"
