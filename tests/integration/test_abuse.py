"""Abuse resistance with real peers on loopback: the per-source cool-down after failed
logins (time moved by the bastion's injected clock, never slept), per-key connection and
channel caps, the login timeout, and the JSON-lines audit log after real transfers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.keys.store import load_private_key
from tests.harness import (
    Keys,
    access_text,
    agent_config,
    bastion_config,
    bastion_pub,
    home_sshd,
    run_ssh,
    running_agent,
    running_bastion,
    wait_for,
    write_ssh_config,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A plain TCP echo service on loopback: the home target, with exact byte counts."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class EchoScene:
    bastion: Bastion
    keys: Keys
    audit: Path


@contextlib.asynccontextmanager
async def echo_scene(keys: Keys, tmp_path: Path, **bastion_kw: Any) -> AsyncIterator[EchoScene]:
    """sshtun bastion (with an audit log) + sshtun agent publishing homebox:22 -> echo."""
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    audit = tmp_path / "audit.jsonl"
    bastion_kw.setdefault("audit_log", audit)
    async with (
        echo_server() as echo_port,
        running_bastion(bastion_config(keys, access, **bastion_kw)) as bastion,
        running_agent(
            agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{echo_port}")])
        ),
    ):
        yield EchoScene(bastion, keys, audit)


def connect(keys: Keys, port: int, *client_keys: asyncssh.SSHKey) -> Any:
    """An asyncssh client (a second SSH implementation) with the bastion's key pinned; the
    client key by default."""
    return asyncssh.connect(
        "127.0.0.1",
        port,
        username="alice",
        client_keys=list(client_keys) or [load_private_key(keys.client.path)],
        known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
        config=None,
        agent_path=None,
        connect_timeout=20,
    )


def events(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in found if kind is None or e["event"] == kind]


# The brute-force cool-down ------------------------------------------------------------------
async def test_failed_logins_put_the_source_in_a_cool_down(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "access"
    path.write_text(access_text(keys))
    audit = tmp_path / "audit.jsonl"
    limits = {"max_auth_tries": 2, "max_auth_failures_per_source": 4, "penalty_seconds": 300}
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion_config(keys, path, limits=limits, audit_log=audit)) as bastion,
        running_agent(
            agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home.port}")])
        ),
    ):
        clock = FakeClock()
        bastion.state.penalties.clock = clock
        cfg = write_ssh_config(tmp_path / "client", keys, bastion.port)

        # Four connections of two wrong keys each, from 127.0.0.1: four failures (one per
        # connection that did not log in, not one per refused key).
        for _ in range(4):
            strangers = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(2)]
            with pytest.raises((asyncssh.Error, OSError)):
                async with connect(keys, bastion.port, *strangers):
                    pass
        await wait_for(lambda: logged(caplog, "penalty source=127.0.0.1 failures=4 seconds=300"))
        assert len(events(audit, "penalty")) == 1

        # Now even the good key is refused, by the real ssh and by asyncssh, before any
        # key exchange (the socket closes without a banner).
        result = await run_ssh(cfg, "homebox", "echo through")
        assert result.returncode == 255
        assert "kex_exchange_identification" in result.stderr, result.stderr
        with pytest.raises((asyncssh.Error, OSError)):
            async with connect(keys, bastion.port):
                pass
        reason = (
            'reason="source 127.0.0.1 is cooling down for 300 s after 4 failed authentications"'
        )
        assert logged(caplog, "refused conn=", "from=127.0.0.1", reason)

        # Raw socket: not one byte from the bastion.
        reader, writer = await asyncio.open_connection("127.0.0.1", bastion.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()

        # 299 s later: still cooling down. The agent's connection, made before, is untouched.
        clock.now += 299
        with pytest.raises((asyncssh.Error, OSError)):
            async with connect(keys, bastion.port):
                pass
        assert logged(caplog, "cooling down for 1 s after 4 failed authentications")
        assert bastion.state.routes.lookup("homebox", 22)

        # The cool-down is over: the good key gets through again, end to end.
        clock.now += 1
        result = await run_ssh(cfg, "homebox", "echo through")
        assert result.stdout == b"through\n", result.stderr
        async with connect(keys, bastion.port) as conn:
            assert conn.get_extra_info("peername")[0] == "127.0.0.1"

    stages = [e["stage"] for e in events(audit, "refused")]
    assert stages.count("auth") == 8  # every refused key is audited
    assert stages.count("penalty") >= 4
    (penalty,) = events(audit, "penalty")
    assert (penalty["source"], penalty["failures"], penalty["seconds"]) == ("127.0.0.1", 4, 300)


async def test_a_good_login_clears_earlier_failures(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"max_auth_failures_per_source": 3}
    async with scene(keys, tmp_path, home=False, limits=limits) as s:
        bastion = s.bastion
        bastion.state.penalties.clock = FakeClock()
        good = load_private_key(keys.client.path)
        for _ in range(3):
            # One wrong key, then the right one, on the same connection (an ssh-agent that
            # offers another key first): never a cool-down.
            stranger = asyncssh.generate_private_key("ssh-ed25519")
            async with connect(keys, bastion.port, stranger, good):
                pass
        assert len(bastion.state.penalties) == 0
        assert not logged(caplog, "penalty source=")


async def test_a_connection_opened_before_the_cool_down_cannot_log_in_during_it(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"max_auth_failures_per_source": 2}
    async with scene(keys, tmp_path, home=False, limits=limits) as s:
        bastion = s.bastion
        bastion.state.penalties.clock = FakeClock()

        def key_exchange() -> paramiko.Transport:
            """paramiko (a third SSH implementation): key exchange now, log in later."""
            transport = paramiko.Transport(socket.create_connection(("127.0.0.1", bastion.port)))
            transport.start_client(timeout=10)
            # Pinned: the bastion's host key is checked before any credential is sent.
            assert transport.get_remote_server_key().get_base64() == bastion_pub(keys).split()[1]
            return transport

        early = await asyncio.to_thread(key_exchange)
        try:
            for _ in range(2):
                with pytest.raises((asyncssh.Error, OSError)):
                    async with connect(
                        keys, bastion.port, asyncssh.generate_private_key("ssh-ed25519")
                    ):
                        pass
            await wait_for(lambda: logged(caplog, "penalty source=127.0.0.1 failures=2"))
            good = paramiko.Ed25519Key.from_private_key_file(str(keys.client.path))
            with pytest.raises(paramiko.SSHException):
                await asyncio.to_thread(early.auth_publickey, "alice", good)
            assert not early.is_authenticated()
        finally:
            early.close()
        assert logged(caplog, "auth refused", "is cooling down for 300 s after 2 failed")


# Login timeout ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "send", [b"", b"SSH-2.0-OpenSSH_9.2p1 silent\r\n"], ids=["nothing", "banner only"]
)
async def test_a_connection_that_does_not_log_in_is_dropped(
    keys: Keys, tmp_path: Path, send: bytes
) -> None:
    async with scene(keys, tmp_path, home=False, limits={"login_timeout": 0.5}) as s:
        bastion = s.bastion
        reader, writer = await asyncio.open_connection("127.0.0.1", bastion.port)
        writer.write(send)
        await writer.drain()
        await wait_for(lambda: len(bastion.state.connections) == 1)
        # Read (the banner, a KEXINIT) until the bastion hangs up: EOF, bounded.
        received = b""
        for _ in range(100):
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError("the bastion never hung up")
        assert received.startswith(b"SSH-2.0-sshtun")
        writer.close()
        await wait_for(lambda: len(bastion.state.connections) == 0)
        # A socket that never logs in does not cost its source a penalty.
        assert len(bastion.state.penalties) == 0


async def test_connections_not_logged_in_are_capped_per_source(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of key exchanges from one address (DHEat) is cut at max_startups_per_source
    (with no queue to wait in: see test_floods.py for the queue); logged-in connections and
    other sources are not affected."""
    limits = {"max_startups_per_source": 2, "startup_queue_per_source": 0}
    async with scene(keys, tmp_path, home=False, limits=limits) as s:
        bastion = s.bastion
        assert bastion.listener is not None
        admission = bastion.listener.admission
        idle = [await asyncio.open_connection("127.0.0.1", bastion.port) for _ in range(2)]
        for reader, _ in idle:
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"SSH-2.0-sshtun")
        reader, writer = await asyncio.open_connection("127.0.0.1", bastion.port)
        assert await asyncio.wait_for(reader.read(100), 10) == b""  # hung up, no banner
        writer.close()
        assert logged(caplog, "refused connection", "not logged in yet (max 2, and 0 waiting)")
        assert bastion.state.counters["startup_refused"] == 1
        # Another address (127.0.0.2 is loopback too) still gets in, and so does a login
        # from the first once a slot is free.
        o_reader, o_writer = await asyncio.open_connection(
            "127.0.0.1", bastion.port, local_addr=("127.0.0.2", 0)
        )
        assert (await asyncio.wait_for(o_reader.readline(), 10)).startswith(b"SSH-2.0-sshtun")
        o_writer.close()
        idle[0][1].close()
        await wait_for(lambda: admission.active("127.0.0.1") == 1)
        conn = await asyncssh.connect(
            "127.0.0.1",
            bastion.port,
            username="alice",
            client_keys=[load_private_key(keys.client.path)],
            known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
            config=None,
            agent_path=None,
        )
        await wait_for(lambda: admission.active("127.0.0.1") == 1)  # logged in: freed
        conn.close()
        idle[1][1].close()
        await wait_for(lambda: admission.total_active == 0)


# Per-key limits ---------------------------------------------------------------------------
async def test_connections_per_key_are_capped(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with echo_scene(keys, tmp_path, limits={"max_connections_per_key": 2}) as s:
        port = s.bastion.port
        cfg = write_ssh_config(tmp_path / "client", keys, port)
        async with connect(keys, port) as first, connect(keys, port):
            # The real ssh, third connection with the same key: told why, by the bastion.
            result = await run_ssh(cfg, "-o", "LogLevel=INFO", "-W", "homebox:22", "bastion")
            assert result.returncode == 255
            assert "key has too many connections (max 2 per key)" in result.stderr
            assert logged(
                caplog,
                "refused conn=",
                keys.client.fingerprint,
                'reason="key has too many connections (max 2 per key)"',
            )
            # Other keys are not affected: the agent's own connection is still there.
            assert s.bastion.state.routes.lookup("homebox", 22)
            first.close()
            await first.wait_closed()
            fp = keys.client.fingerprint
            await wait_for(lambda: s.bastion.state.key_usage.connections(fp) == 1)
            async with connect(keys, port) as third:
                reader, writer = await third.open_connection("homebox", 22)
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                writer.close()
        (refusal,) = [e for e in events(s.audit, "refused") if e["stage"] == "limit"]
        assert refusal["key"] == keys.client.fingerprint
        assert refusal["reason"] == "key has too many connections (max 2 per key)"


async def test_channels_per_key_are_capped_across_its_connections(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"max_channels_per_key": 3, "max_channels_per_connection": 2}
    async with echo_scene(keys, tmp_path, limits=limits) as s:
        async with connect(keys, s.bastion.port) as one, connect(keys, s.bastion.port) as two:
            a = await one.open_connection("homebox", 22)
            await one.open_connection("homebox", 22)
            await two.open_connection("homebox", 22)
            reason = "too many open channels for this key across its connections (max 3)"
            with pytest.raises(asyncssh.ChannelOpenError, match=re.escape(reason)):
                await two.open_connection("homebox", 22)
            # The per-connection cap still applies on its own.
            with pytest.raises(
                asyncssh.ChannelOpenError, match=r"too many open channels \(max 2\)"
            ):
                await one.open_connection("homebox", 22)
            a[1].close()
            fp = keys.client.fingerprint
            await wait_for(lambda: s.bastion.state.key_usage.channels(fp) == 2)
            reader, writer = await two.open_connection("homebox", 22)
            writer.write(b"again")
            assert await reader.readexactly(5) == b"again"
        assert logged(caplog, "refused open", keys.client.fingerprint, reason)
        refused = [e for e in events(s.audit, "refused") if e["stage"] == "open"]
        assert [e["reason"] for e in refused] == [reason, "too many open channels (max 2)"]
        assert all(e["dest"] == "homebox:22" for e in refused)


# The audit log ----------------------------------------------------------------------------
async def test_audit_log_records_publish_routes_with_byte_counts_and_refusals(
    keys: Keys, tmp_path: Path
) -> None:
    up = os.urandom(300_000)
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    async with echo_scene(keys, tmp_path) as s:
        assert stat.S_IMODE(s.audit.stat().st_mode) == 0o600
        async with connect(keys, s.bastion.port) as conn:
            reader, writer = await conn.open_connection("homebox", 22)
            writer.write(up)
            writer.write_eof()
            back = await asyncio.wait_for(reader.read(), 20)
            assert back == up
            writer.close()
            await wait_for(lambda: events(s.audit, "route"))
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("nothere", 22)
        with pytest.raises((asyncssh.Error, OSError)):
            async with connect(keys, s.bastion.port, stranger):
                pass
        await wait_for(lambda: any(e["stage"] == "auth" for e in events(s.audit, "refused")))
    await wait_for(lambda: events(s.audit, "unpublish"))

    agent_fp, client_fp = keys.agent.fingerprint, keys.client.fingerprint
    lines = s.audit.read_text().splitlines()
    assert all(json.loads(line)["ts"].endswith("Z") for line in lines)
    assert all("PRIVATE" not in line for line in lines)

    (publish,) = events(s.audit, "publish")
    assert (publish["name"], publish["port"], publish["key"], publish["comment"]) == (
        "homebox",
        22,
        agent_fp,
        "agent@home",
    )
    assert publish["from"].startswith("127.0.0.1:")

    (route,) = events(s.audit, "route")  # the agent's own health probes are not audited
    assert route["key"] == client_fp
    assert route["comment"] == "alice@laptop"
    assert (route["name"], route["port"]) == ("homebox", 22)
    assert (route["agent_conn"], route["agent_key"]) == (publish["conn"], agent_fp)
    assert route["bytes_to_home"] == len(up)
    assert route["bytes_from_home"] == len(up)
    assert route["duration_s"] >= 0
    assert route["end"] in ("home side closed", "client closed")
    assert route["from"].startswith("127.0.0.1:")

    logins = {e["key"] for e in events(s.audit, "login")}
    assert logins == {agent_fp, client_fp}

    refusals = {e["stage"]: e for e in events(s.audit, "refused")}
    assert refusals["open"]["dest"] == "nothere:22"
    assert refusals["open"]["reason"] == (
        f"key {client_fp} (alice@laptop) may reach only homebox:22, not nothere:22"
    )
    assert refusals["auth"]["reason"].startswith("unknown key SHA256:")
    assert "key" not in refusals["auth"]

    (unpublish,) = events(s.audit, "unpublish")
    assert (unpublish["name"], unpublish["port"], unpublish["key"]) == ("homebox", 22, agent_fp)


async def test_audit_log_of_a_real_ssh_session_through_a_real_sshd(
    keys: Keys, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    async with scene(keys, tmp_path, audit_log=audit) as s, s.agent():
        cfg = s.client_cfg
        payload = os.urandom(50_000)
        result = await run_ssh(cfg, "homebox", "wc -c", stdin=payload)
        assert result.stdout.split() == [b"50000"], result.stderr
        await wait_for(lambda: events(audit, "route"))
    (route,) = events(audit, "route")
    assert route["key"] == keys.client.fingerprint
    assert (route["name"], route["port"]) == ("homebox", 22)
    # The inner SSH session is end-to-end encrypted: more than the payload went up.
    assert route["bytes_to_home"] > len(payload)
    assert route["bytes_from_home"] > 0
    assert route["end"] in ("home side closed", "client closed")


async def test_reload_reopens_the_audit_log_after_rotation(keys: Keys, tmp_path: Path) -> None:
    async with echo_scene(keys, tmp_path) as s:
        rotated = tmp_path / "audit.jsonl.1"
        os.rename(s.audit, rotated)
        assert s.bastion.reload(s.bastion.config)["ok"]
        async with connect(keys, s.bastion.port):
            pass
        await wait_for(lambda: events(s.audit, "login"))
    assert {e["event"] for e in events(rotated)} >= {"login", "publish"}
    assert [e["key"] for e in events(s.audit, "login")] == [keys.client.fingerprint]
