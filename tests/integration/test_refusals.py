"""Everything not explicitly allowed is refused, with a clear reason in the log."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import paramiko
import pytest

from sshtunnel_mgr.core.access import fingerprint
from sshtunnel_mgr.keys.store import load_private_key
from tests.harness import (
    SSH,
    Keys,
    access_text,
    agent_config,
    bastion_pub,
    free_port,
    process,
    require_openssh,
    run_ssh,
    running_agent,
    wait_for,
    write_ssh_config,
)
from tests.integration.conftest import logged
from tests.integration.scene import Scene
from tests.integration.scene import scene as shared_scene


@contextlib.asynccontextmanager
async def scene(
    keys: Keys,
    tmp_path: Path,
    access: str,
    tunnels: list[tuple[str, int]] | None = None,
    **bastion_kw: object,
) -> AsyncIterator[Scene]:
    """Home sshd + sshtun bastion + sshtun agent publishing ``tunnels`` (all to the sshd)."""
    async with (
        shared_scene(keys, tmp_path, access=access, **bastion_kw) as s,
        s.agent([(n, p, s.target) for n, p in (tunnels or [("homebox", 22)])]),
    ):
        yield s


def paramiko_client(keys: Keys, port: int, tmp_path: Path) -> paramiko.SSHClient:
    known = tmp_path / "pk_known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {bastion_pub(keys)}\n")
    client = paramiko.SSHClient()
    client.load_host_keys(str(known))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


# Authentication ---------------------------------------------------------------------------
async def test_unknown_key_is_refused(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = keys.extra("stranger_key")
    async with scene(keys, tmp_path, access_text(keys)) as s:
        cfg = write_ssh_config(tmp_path / "stranger", keys, s.bastion.port, identity=stranger.path)
        result = await run_ssh(cfg, "homebox", "true")
        assert result.returncode == 255
        assert "Permission denied (publickey)" in result.stderr
        assert logged(caplog, "auth refused", f"unknown key {stranger.fingerprint}")


@pytest.mark.parametrize("method", ["password", "keyboard-interactive"])
async def test_password_and_kbdint_are_never_offered_and_attempts_are_logged(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    async with shared_scene(keys, tmp_path, home=False) as s:
        bastion = s.bastion

        def attempt() -> list[str]:
            client = paramiko_client(keys, bastion.port, tmp_path)
            try:
                client.connect(
                    "127.0.0.1",
                    bastion.port,
                    username="root",
                    password="hunter2",
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=10,
                )
            except paramiko.BadAuthenticationType as exc:
                return list(exc.allowed_types)
            finally:
                client.close()
            return ["connected?!"]

        def attempt_kbdint() -> list[str]:
            sock = socket.create_connection(("127.0.0.1", bastion.port), 10)
            transport = paramiko.Transport(sock)
            try:
                transport.start_client(timeout=10)
                transport.auth_interactive("root", lambda *a: ["hunter2"])
            except paramiko.BadAuthenticationType as exc:
                return list(exc.allowed_types)
            finally:
                transport.close()
            return ["connected?!"]

        allowed = await asyncio.to_thread(attempt if method == "password" else attempt_kbdint)
        assert allowed == ["publickey"]
        assert logged(
            caplog, "auth refused", f"{method} authentication is not accepted, only publickey"
        )


async def test_expired_key_is_refused(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = access_text(keys).replace(
        'permitopen="homebox:22"', 'permitopen="homebox:22",expiry-time="20200101Z"'
    )
    async with scene(keys, tmp_path, access) as s:
        result = await run_ssh(s.client_cfg, "homebox", "true")
        assert result.returncode == 255
        assert "Permission denied" in result.stderr
        assert logged(
            caplog, "auth refused", keys.client.fingerprint, "expired at 2020-01-01T00:00:00+00:00"
        )


async def test_key_outside_its_from_addresses_is_refused(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = access_text(keys).replace(
        'permitopen="homebox:22"', 'permitopen="homebox:22",from="192.0.2.0/24"'
    )
    async with scene(keys, tmp_path, access) as s:
        result = await run_ssh(s.client_cfg, "homebox", "true")
        assert result.returncode == 255
        assert logged(caplog, "auth refused", "not allowed from 127.0.0.1", "from=192.0.2.0/24")


async def test_too_many_failed_keys_disconnects(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    strangers = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(9)]
    async with shared_scene(keys, tmp_path, home=False, limits={"max_auth_tries": 3}) as s:
        bastion = s.bastion
        with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError, ConnectionError)):
            async with asyncssh.connect(
                "127.0.0.1",
                bastion.port,
                username="x",
                client_keys=strangers,
                known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
                config=None,
                agent_path=None,
            ):
                pass
        await wait_for(lambda: logged(caplog, "too many authentication failures (3)"))
        refused = [r for r in caplog.records if "auth refused" in r.getMessage()]
        assert len(refused) == 3


async def test_unauthenticated_connection_is_dropped_after_login_timeout(
    keys: Keys, tmp_path: Path
) -> None:
    async with shared_scene(keys, tmp_path, home=False, limits={"login_timeout": 0.5}) as s:
        bastion = s.bastion
        reader, writer = await asyncio.open_connection("127.0.0.1", bastion.port)
        banner = await reader.readline()
        assert banner.startswith(b"SSH-2.0-")
        rest = await asyncio.wait_for(reader.read(), 10)  # returns at EOF: the bastion hung up
        assert isinstance(rest, bytes)
        writer.close()


# Publishing -------------------------------------------------------------------------------
async def test_agent_cannot_publish_a_name_it_is_not_allowed(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(
        keys, tmp_path, access_text(keys), tunnels=[("homebox", 22), ("secret", 22)]
    ) as s:
        assert s.bastion.state.routes.lookup("homebox", 22)
        assert not s.bastion.state.routes.lookup("secret", 22)
        assert logged(
            caplog,
            "refused publish",
            "name=secret",
            "port=22",
            "may publish only homebox:22, not secret:22",
        )
        assert logged(caplog, "publish refused", "name=secret:22", 'permitlisten=\\"secret:22\\"')


async def test_agent_with_only_refused_names_backs_off_to_the_cap(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with shared_scene(keys, tmp_path, home=False) as s:
        bastion = s.bastion
        cfg = agent_config(
            keys, bastion.port, [("secret", 22, "127.0.0.1:9")], backoff={"base": 0.1, "cap": 120}
        )
        async with running_agent(cfg, wait=False) as agent:
            link = agent.agent.links[0]
            await wait_for(lambda: link.status.state == "backoff")
            assert link.status.refused == {"secret:22": link.status.refused["secret:22"]}
            assert link.status.next_retry_at is not None
            import time

            assert link.status.next_retry_at - time.time() > 100  # the cap, not a tight loop
            assert link.status.connects == 1
            assert logged(caplog, "no tunnel could be published")


async def test_second_key_cannot_hijack_a_published_name(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_openssh()
    assert SSH is not None
    mallory = keys.extra("mallory_key")
    access = access_text(keys, extra=[f'permitlisten="mallory:22" {mallory.public_line}'])
    async with scene(keys, tmp_path, access) as s:
        cfg = write_ssh_config(tmp_path / "mallory", keys, s.bastion.port, identity=mallory.path)
        async with process(
            SSH,
            "-F",
            str(cfg),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "homebox:22:127.0.0.1:9",
            "bastion",
        ) as proc:
            await asyncio.wait_for(proc.wait(), 20)
            assert proc.returncode == 255
            assert proc.stderr is not None
            assert b"remote port forwarding failed" in await proc.stderr.read()
        assert logged(
            caplog,
            "refused publish",
            mallory.fingerprint,
            "name=homebox",
            "may publish only mallory:22, not homebox:22",
        )
        owners = {r.owner for r in s.bastion.state.routes.lookup("homebox", 22)}
        assert owners == {keys.agent.fingerprint}
        result = await run_ssh(s.client_cfg, "homebox", "echo still-mine")
        assert result.stdout == b"still-mine\n", result.stderr


@pytest.mark.parametrize(
    ("forward", "reason"),
    [
        ("0.0.0.0:2222:127.0.0.1:9", "wildcard bind address"),
        ("2222:127.0.0.1:9", "is a local name and cannot be routed"),
        ("127.0.0.1:2222:127.0.0.1:9", "'127.0.0.1' is an IP address, not a name"),
        ("homebox:0:127.0.0.1:9", "port 0 (a dynamic port) cannot be published"),
    ],
)
async def test_wildcard_ip_and_dynamic_binds_are_refused(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, forward: str, reason: str
) -> None:
    require_openssh()
    assert SSH is not None
    async with shared_scene(
        keys, tmp_path, access=access_text(keys, listen="*:*"), home=False
    ) as s:
        bastion = s.bastion
        cfg = s.ssh_config("agent", identity=keys.agent.path)
        async with process(
            SSH, "-F", str(cfg), "-N", "-o", "ExitOnForwardFailure=yes", "-R", forward, "bastion"
        ) as proc:
            await asyncio.wait_for(proc.wait(), 20)
            assert proc.returncode == 255
        assert logged(caplog, "refused publish", reason)
        assert len(bastion.state.routes) == 0


# Routing ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dest", "reason"),
    [
        ("nothere:22", "nothere:22 is not published (no agent serves it)"),
        (
            "127.0.0.1:22",
            "'127.0.0.1' is an IP address, not a name; this bastion routes published names only",
        ),
        ("192.0.2.7:80", "'192.0.2.7' is an IP address, not a name"),
        ("[::1]:22", "'::1' is an IP address, not a name"),
        ("localhost:22", "'localhost' is a local name and cannot be routed"),
        ("homebox:2222", "may reach only homebox:22,nothere:22, not homebox:2222"),
    ],
)
async def test_direct_tcpip_outside_the_route_table_is_refused(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, dest: str, reason: str
) -> None:
    async with scene(keys, tmp_path, access_text(keys, open_="homebox:22,nothere:22")) as s:
        result = await run_ssh(s.client_cfg, "-W", dest, "bastion")
        assert result.returncode != 0
        assert "open failed" in result.stderr or "stdio forwarding failed" in result.stderr
        assert logged(caplog, "refused open", reason)


async def test_client_cannot_reach_a_published_name_it_is_not_allowed(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = access_text(keys, listen="homebox:22,other:22", open_="homebox:22")
    async with scene(keys, tmp_path, access, tunnels=[("homebox", 22), ("other", 22)]) as s:
        assert s.bastion.state.routes.lookup("other", 22)
        result = await run_ssh(s.client_cfg, "-o", "LogLevel=INFO", "-W", "other:22", "bastion")
        assert result.returncode != 0
        # OpenSSH shows the bastion's reason to the person.
        assert "open failed: administratively prohibited: key" in result.stderr
        assert "may reach only homebox:22, not other:22" in result.stderr
        assert logged(
            caplog,
            "refused open",
            keys.client.fingerprint,
            "may reach only homebox:22, not other:22",
        )


async def test_agent_key_cannot_reach_and_client_key_cannot_publish(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(keys, tmp_path, access_text(keys)) as s:
        agent_as_client = write_ssh_config(
            tmp_path / "ac", keys, s.bastion.port, identity=keys.agent.path
        )
        result = await run_ssh(agent_as_client, "-W", "homebox:22", "bastion")
        assert result.returncode != 0
        assert logged(caplog, "refused open", "has no permitopen (it may not reach names)")


async def test_no_shell_exec_or_subsystem_on_the_bastion(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(keys, tmp_path, access_text(keys)) as s:
        for args in (["bastion", "id"], ["-s", "bastion", "sftp"]):
            result = await run_ssh(s.client_cfg, *args)
            assert result.returncode != 0
        assert logged(caplog, "refused session", "no shell, exec or subsystem here")


async def test_a_shell_or_ssh_l_without_n_is_told_what_to_do(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Plain `ssh bastion`, `ssh bastion cmd` and `ssh -L … bastion` (no -N) get one line
    saying this bastion only routes, and exit status 1 (OpenSSH used to say only "shell
    request failed on channel 0")."""
    async with scene(keys, tmp_path, access_text(keys)) as s:
        forward = f"127.0.0.1:{free_port()}:homebox:22"
        for args in (["bastion"], ["bastion", "id"], ["-L", forward, "bastion"]):
            result = await run_ssh(s.client_cfg, *args)
            assert result.returncode == 1, (args, result.stderr)
            assert "this bastion only routes" in result.stderr, (args, result.stderr)
            assert "request failed" not in result.stderr
        assert logged(caplog, "refused session", "no shell here")


async def test_channels_per_connection_are_capped(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(
        keys, tmp_path, access_text(keys), limits={"max_channels_per_connection": 2}
    ) as s:
        client_key = load_private_key(keys.client.path)
        async with asyncssh.connect(
            "127.0.0.1",
            s.bastion.port,
            username="alice",
            client_keys=[client_key],
            known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
            config=None,
            agent_path=None,
        ) as conn:
            first = await conn.open_connection("homebox", 22)
            second = await conn.open_connection("homebox", 22)
            with pytest.raises(asyncssh.ChannelOpenError, match="too many open channels"):
                await conn.open_connection("homebox", 22)
            first[1].close()
            # Once a channel closes (the bastion counts it closed), a new one is allowed again.
            [alice] = [bc for bc in s.bastion.state.connections.values() if not bc.published]
            await wait_for(lambda: alice.open_channels == 1)
            _, third = await conn.open_connection("homebox", 22)
            third.close()
            second[1].close()
    assert logged(caplog, "refused open", "too many open channels (max 2)")
    assert fingerprint(client_key.public_data) == keys.client.fingerprint
