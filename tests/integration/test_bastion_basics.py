"""Bastion start-up, algorithm policy and unpublishing."""

from __future__ import annotations

import stat
from pathlib import Path

import asyncssh
import pytest

from sshtunnel_mgr.core.errors import KeyFileError
from sshtunnel_mgr.keys.store import generate_key, load_private_key
from tests.harness import (
    Keys,
    access_text,
    bastion_config,
    bastion_pub,
    run_ssh,
    running_bastion,
    wait_for,
    write_ssh_config,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene


async def test_missing_host_key_is_an_error_and_a_restart_keeps_the_key(
    keys: Keys, tmp_path: Path
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    host_key = tmp_path / "state" / "host_key"
    cfg = bastion_config(keys, access).model_copy(update={"host_key": host_key})
    with pytest.raises(KeyFileError, match="does not exist"):
        async with running_bastion(cfg):
            pass
    assert not host_key.exists()  # never created behind the owner's back
    host_key.parent.mkdir()
    generate_key(host_key)
    async with running_bastion(cfg) as bastion:
        assert stat.S_IMODE(host_key.stat().st_mode) == 0o600
        key = load_private_key(host_key)
        assert bastion.host_key is not None
        assert bastion.host_key.public_data == key.public_data
    # A restart keeps the same key (clients pinned it).
    async with running_bastion(cfg) as again:
        assert again.host_key is not None
        assert again.host_key.public_data == key.public_data


@pytest.mark.parametrize(
    "option",
    [
        "KexAlgorithms=ecdh-sha2-nistp256",
        "KexAlgorithms=diffie-hellman-group14-sha1",
        "KexAlgorithms=diffie-hellman-group-exchange-sha1",
        "Ciphers=aes128-cbc",
        "MACs=hmac-sha1",
        "HostKeyAlgorithms=ecdsa-sha2-nistp256",
    ],
)
async def test_weak_algorithms_are_not_offered(keys: Keys, tmp_path: Path, option: str) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        bastion = s.bastion
        extra = "  Ciphers aes128-ctr\n" if option.startswith("MACs") else ""
        cfg = write_ssh_config(tmp_path / "c", keys, bastion.port, extra_opts=extra)
        result = await run_ssh(
            cfg, "-o", option, "-o", "LogLevel=INFO", "-W", "homebox:22", "bastion"
        )
        assert result.returncode == 255
        assert "no matching" in result.stderr, result.stderr


async def test_compression_is_not_offered(keys: Keys, tmp_path: Path) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        bastion = s.bastion
        with pytest.raises(asyncssh.KeyExchangeFailed):
            await asyncssh.connect(
                "127.0.0.1",
                bastion.port,
                username="x",
                config=None,
                agent_path=None,
                client_keys=[load_private_key(keys.client.path)],
                known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
                compression_algs=["zlib@openssh.com", "zlib"],
            )


async def test_cancel_tcpip_forward_unpublishes_and_the_connection_stays(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys, listen="homebox:22,other:22"))
    async with (
        running_bastion(bastion_config(keys, access)) as bastion,
        asyncssh.connect(
            "127.0.0.1",
            bastion.port,
            username="sshtun",
            config=None,
            agent_path=None,
            client_keys=[load_private_key(keys.agent.path)],
            known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
        ) as agent,
    ):
        first = await agent.forward_remote_port("homebox", 22, "127.0.0.1", 9)
        await agent.forward_remote_port("other", 22, "127.0.0.1", 9)
        assert bastion.state.routes.lookup("homebox", 22)
        first.close()
        await first.wait_closed()
        await wait_for(lambda: not bastion.state.routes.lookup("homebox", 22))
        assert bastion.state.routes.lookup("other", 22)
        assert logged(caplog, "unpublish", "name=homebox")
        # Publishing again on the same connection works.
        await agent.forward_remote_port("homebox", 22, "127.0.0.1", 9)
        assert bastion.state.routes.lookup("homebox", 22)


async def test_two_keys_allowed_the_same_name_both_serve_it(keys: Keys, tmp_path: Path) -> None:
    second = keys.extra("second_agent")
    pinned = ([asyncssh.import_public_key(bastion_pub(keys))], [], [])
    access = access_text(keys, extra=[f'permitlisten="homebox:22" {second.public_line}'])
    async with scene(keys, tmp_path, access=access, home=False) as s:
        bastion = s.bastion
        conns = []
        for path in (keys.agent.path, second.path):
            conn = await asyncssh.connect(
                "127.0.0.1",
                bastion.port,
                username="sshtun",
                config=None,
                agent_path=None,
                client_keys=[load_private_key(path)],
                known_hosts=pinned,
            )
            await conn.forward_remote_port("homebox", 22, "127.0.0.1", 9)
            conns.append(conn)
        owners = {r.owner for r in bastion.state.routes.lookup("homebox", 22)}
        assert owners == {keys.agent.fingerprint, second.fingerprint}
        conns[0].close()
        await conns[0].wait_closed()
        await wait_for(lambda: len(bastion.state.routes.lookup("homebox", 22)) == 1)
        conns[1].close()
        await conns[1].wait_closed()


async def test_the_client_config_can_reach_a_bastion_only_with_the_pinned_key(
    keys: Keys, tmp_path: Path
) -> None:
    """Strict host-key checking is real: a wrong pinned key stops the real ssh client."""
    async with scene(keys, tmp_path, home=False) as s:
        bastion, cfg = s.bastion, s.client_cfg
        known = cfg.parent / "known_hosts"
        other = keys.extra("not_the_bastion")
        known.write_text(f"[127.0.0.1]:{bastion.port} {other.public_line}\n")
        result = await run_ssh(cfg, "-o", "LogLevel=INFO", "-W", "homebox:22", "bastion")
        assert result.returncode == 255
        assert (
            "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
            or "Host key verification failed" in result.stderr
        )
