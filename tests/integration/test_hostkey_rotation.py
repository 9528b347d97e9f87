"""`sshtun keys rotate --host-key`: the bastion serves a new host key beside the old one and
announces it (hostkeys-00@openssh.com); a pinned sshtun agent and the real OpenSSH client
with UpdateHostKeys learn it without any trust prompt, then `--finish` drops the old key."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.core.config import AgentConfig, BastionEndpoint, TunnelConfig
from sshtunnel_mgr.keys.inventory import facts_from_public
from sshtunnel_mgr.runtime.admin import AdminServer
from tests.harness import (
    SSHTUN,
    Keys,
    Result,
    bastion_pub,
    free_port,
    run_ssh,
    running_agent,
    wait_for,
    write_ssh_config,
    write_toml,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene


async def sshtun(*args: str) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *SSHTUN, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out, err.decode())


def known_keys(path: Path, pattern: str) -> set[str]:
    return {
        line.split()[2]
        for line in path.read_text().splitlines()
        if line.split() and line.split()[0] == pattern
    }


async def test_host_key_rotation_followed_by_agent_and_openssh_without_prompt(
    keys: Keys, tmp_path: Path, caplog: object
) -> None:
    async with scene(keys, tmp_path, port=free_port()) as s:
        port, config, bastion, home = s.port, s.bastion_cfg, s.bastion, s.home
        bfile = write_toml(tmp_path / "bastion.toml", "bastion", config)
        assert config.admin_socket is not None
        admin = AdminServer(config.admin_socket, bastion.handle_admin)
        await admin.start()
        try:
            await _scenario(keys, tmp_path, port, bfile, bastion, home.port, caplog)
        finally:
            await admin.stop()


async def _scenario(
    keys: Keys,
    tmp_path: Path,
    port: int,
    bfile: Path,
    bastion: Bastion,
    home_port: int,
    caplog: object,
) -> None:
    pattern = f"[127.0.0.1]:{port}"
    old_b64 = bastion_pub(keys).split()[1]
    agent_known = tmp_path / "agent_known_hosts"
    agent_known.write_text(f"{pattern} {bastion_pub(keys)}\n")
    agent_cfg = AgentConfig(
        key=keys.agent.path,
        bastions=[BastionEndpoint(address=f"127.0.0.1:{port}", known_hosts=agent_known)],
        tunnels=[TunnelConfig(name="homebox", port=22, target=f"127.0.0.1:{home_port}")],
        admin_socket=keys.dir / "agent.sock",
    )
    client = write_ssh_config(tmp_path / "alice", keys, port, extra_opts="  UpdateHostKeys yes\n")
    client_known = tmp_path / "alice" / "known_hosts"
    stale = write_ssh_config(tmp_path / "stale", keys, port)  # never connects meanwhile
    async with running_agent(agent_cfg):
        assert (await run_ssh(client, "homebox", "echo hi")).stdout == b"hi\n"

        started = await sshtun("keys", "rotate", "--host-key", "--config", str(bfile))
        assert started.returncode == 0, started.stderr
        new_fp = facts_from_public(Path(str(keys.bastion_host_path) + ".next")).fingerprint
        new_b64 = Path(str(keys.bastion_host_path) + ".next.pub").read_text().split()[1]
        assert new_fp in started.stdout.decode()
        assert len(bastion.host_keys) == 2
        # The live agent connection is told at once and pins the proven new key.
        await wait_for(lambda: known_keys(agent_known, pattern) == {old_b64, new_b64})
        # OpenSSH learns it on its next connection (UpdateHostKeys, no prompt); it may take
        # one more if the session ends before the bastion has proved the key.
        for _ in range(20):
            got = await run_ssh(client, "homebox", "echo hi")
            assert got.returncode == 0, got.stderr
            if new_b64 in known_keys(client_known, pattern):
                break
        assert known_keys(client_known, pattern) == {old_b64, new_b64}

        finished = await sshtun("keys", "rotate", "--host-key", "--finish", "--config", str(bfile))
        assert finished.returncode == 0, finished.stderr
        assert [k.public_data for k in bastion.host_keys] == [
            bastion.host_key.public_data  # type: ignore[union-attr]
        ]
        assert not Path(str(keys.bastion_host_path) + ".next").exists()
        assert facts_from_public(keys.bastion_host_path).fingerprint == new_fp
        # The agent drops the old key from its known_hosts.
        await wait_for(lambda: known_keys(agent_known, pattern) == {new_b64})
        assert (await run_ssh(client, "homebox", "echo hi")).returncode == 0
    # A restarted agent trusts only the new key now, and connects.
    async with running_agent(agent_cfg):
        got = await run_ssh(client, "homebox", "echo again")
        assert got.stdout == b"again\n", got.stderr
    # A client that slept through the rotation gets a loud host key failure, no prompt.
    refused = await run_ssh(stale, "homebox", "echo hi")
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr
    assert logged(caplog, "host keys now")  # type: ignore[arg-type]
