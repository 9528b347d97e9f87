"""`sshtun keys rotate`: the agent's key is replaced with no moment in which its names are
unreachable, proven with the real ssh client through the bastion during the rotation, and
every interruption leaves the old key working with a rerun that completes it."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import asyncssh
import pytest

import sshtunnel_mgr
from sshtunnel_mgr.core.errors import EXIT_KEYS
from sshtunnel_mgr.keys.inventory import facts_from_public
from sshtunnel_mgr.keys.store import KeyInfo, load_private_key
from sshtunnel_mgr.runtime.accessfile import load_access
from tests.harness import (
    SSH,
    SSHTUN,
    Keys,
    Result,
    pub_of,
    read_until,
    run_ssh,
    wait_for,
)
from tests.integration.conftest import logged
from tests.integration.scene import Scene as BaseScene
from tests.integration.scene import scene as base_scene


@dataclass
class Scene(BaseScene):
    """The shared scene (home sshd, in-process bastion, alice's ssh config) plus the
    agent's config file that ``sshtun keys rotate`` reads."""

    agent_toml: Path = Path()

    @property
    def key(self) -> Path:
        return self.keys.agent.path

    @property
    def next_key(self) -> Path:
        return Path(str(self.key) + ".next")

    async def rotate(self, *args: str) -> Result:
        return await sshtun(
            "keys", "rotate", "--config", str(self.agent_toml), "--drain", "10", *args, timeout=120
        )

    async def logs_in(self, key_path: Path) -> bool:
        try:
            conn = await self.connect(key_path, username="agent")
        except asyncssh.PermissionDenied:
            return False
        conn.close()
        return True


@asynccontextmanager
async def scene(keys: Keys, tmp_path: Path, **bastion_kw: object) -> AsyncIterator[Scene]:
    async with base_scene(keys, tmp_path, **bastion_kw) as base:
        shared = {f.name: getattr(base, f.name) for f in fields(base)}
        s = Scene(**shared)
        s.agent_toml = s.agent_file([("homebox", 22, "127.0.0.1:1")])
        yield s


async def test_rotation_under_load_no_connection_fails_and_the_stream_survives(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(keys, tmp_path) as s, s.agent(), s.stream() as flowing:
        old_fp = keys.agent.fingerprint
        assert (await s.reach()).stdout == b"through\n"
        await flowing.wait_lines(5)  # the stream flows over the old key's connection

        async def through_the_handover() -> Result:
            await wait_for(lambda: logged(caplog, "handover", "homebox:22"), timeout=120)
            await flowing.more(10)  # still flowing, now on the old, draining connection
            return await flowing.finish()

        stream = asyncio.create_task(through_the_handover())
        rotation = asyncio.create_task(s.rotate())
        # New ssh -J connections every 300 ms for as long as the rotation runs.
        attempts: list[Result] = []
        for _ in range(100):
            attempts.append(await s.reach())
            if rotation.done():
                break
            await asyncio.sleep(0.3)
        attempts.append(await s.reach())
        result = await rotation
        assert result.returncode == 0, result.stderr
        failures = [a for a in attempts if a.returncode != 0 or a.stdout != b"through\n"]
        assert not failures, failures[0].stderr
        assert len(attempts) >= 3
        print(f"rotation under load: {len(attempts)} ssh -J connections, none failed")
        streamed = await stream
        assert streamed.returncode == 0, streamed.stderr
        assert streamed.stdout == flowing.expected()  # it survived on the draining connection

        new = facts_from_public(s.key)
        assert new.fingerprint != old_fp
        assert f"rotated: {s.key} is now {new.fingerprint}" in result.stdout.decode()
        assert not s.next_key.exists()
        entries = load_access(s.access).entries
        agent_entries = [e for e in entries if e.permit_listen]
        assert [e.fingerprint for e in agent_entries] == [new.fingerprint]
        assert agent_entries[0].rotated_from == "" and agent_entries[0].expiry is None
        assert await s.logs_in(s.key)
        # The new connection announced the home box's host key too (for ssh-config).
        await wait_for(
            lambda: (
                [n["host_key"] for n in s.bastion.snapshot()["names"]] == [pub_of(keys.home_host)]
            )
        )
        assert logged(caplog, "key request", "sshtun-enrol")
        assert logged(caplog, "handover", "homebox:22")
        assert logged(caplog, "revoked", old_fp) is False  # drained and closed, not cut


async def test_rotation_run_over_ssh_homebox_is_not_cut_and_retires_when_it_ends(
    keys: Keys, tmp_path: Path
) -> None:
    """The natural way: the owner reaches the home box with ssh -J and runs the rotation
    there, in a routed session on the old key's connection. The command finishes (key file
    swapped, new connection serving) without cutting its own session; the agent retires
    the old key once that session has ended; a restart from disk uses the new key."""
    root = Path(sshtunnel_mgr.__file__).resolve().parent.parent
    command = (
        f"PYTHONPATH={root} {sys.executable} -m sshtunnel_mgr keys rotate "
        f"--config {tmp_path / 'agent.toml'}"
    )
    async with scene(keys, tmp_path) as s:
        old_copy = tmp_path / "old_agent_key"
        old_copy.write_bytes(s.key.read_bytes())
        old_copy.chmod(0o600)
        async with s.agent():
            result = await run_ssh(s.client_cfg, "homebox", command, timeout=120)
            assert result.returncode == 0, result.stderr
            out = result.stdout.decode()
            assert f"swapped: {s.key} now holds the new key" in out
            assert "1 routed session(s) still open on the old connection" in out
            assert "the agent retires the old key" in out
            new_fp = facts_from_public(s.key).fingerprint
            assert new_fp != keys.agent.fingerprint

            def retired() -> bool:
                entries = load_access(s.access).entries
                return [e.fingerprint for e in entries if e.permit_listen] == [new_fp]

            await wait_for(retired, timeout=60)  # the session above has ended
            assert not await s.logs_in(old_copy)
            assert (await s.reach()).stdout == b"through\n"
            status = await sshtun("status", "--config", str(s.agent_toml))
            assert "key rotation done on every bastion" in status.stdout.decode()
            rerun = await s.rotate()  # clears the record
            assert rerun.returncode == 0, rerun.stderr
            assert "rotated:" in rerun.stdout.decode()
            assert not Path(str(s.key) + ".rotation").exists()
        async with s.agent():  # restarted from disk
            assert (await s.reach()).stdout == b"through\n"


async def sshtun(*args: str, timeout: float = 60) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *SSHTUN, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out, err.decode())


@asynccontextmanager
async def held_session(s: Scene) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real ssh -J session to the home sshd (``cat``), proven routed before it is used."""
    assert SSH is not None
    proc = await asyncio.create_subprocess_exec(
        SSH,
        "-F",
        str(s.client_cfg),
        "homebox",
        "cat",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"ping\n")
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ping\n"
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def start_rotate(s: Scene, *args: str) -> Awaitable[asyncio.subprocess.Process]:
    return asyncio.create_subprocess_exec(
        *SSHTUN,
        "keys",
        "rotate",
        "--config",
        str(s.agent_toml),
        "--wait",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def agent_keys_enrolled(s: Scene) -> list[str]:
    return [e.fingerprint for e in load_access(s.access).entries if e.permit_listen]


async def test_rotation_waits_for_routed_sessions_and_shows_them(
    keys: Keys, tmp_path: Path
) -> None:
    async with scene(keys, tmp_path) as s, s.agent(), held_session(s) as held:
        assert held.stdin is not None and held.stdout is not None
        rotate = await start_rotate(s)
        try:
            shown = await read_until(rotate.stdout, "1 routed session(s) still open", 60)
            assert any("swapped:" in line for line in shown)
            # The new connection serves; the old key stays until the session ends.
            assert (await s.reach()).stdout == b"through\n"
            assert keys.agent.fingerprint in agent_keys_enrolled(s)
            held.stdin.write(b"bye\n")
            held.stdin.close()
            assert await asyncio.wait_for(held.stdout.read(), 60) == b"bye\n"
            assert await asyncio.wait_for(held.wait(), 60) == 0  # never cut
            out, err = await asyncio.wait_for(rotate.communicate(), 60)
        finally:
            if rotate.returncode is None:
                rotate.kill()
                await rotate.wait()
        assert rotate.returncode == 0, err.decode()
        assert "old key retired" in out.decode() and "rotated:" in out.decode()
        assert agent_keys_enrolled(s) == [facts_from_public(s.key).fingerprint]


async def test_rotation_with_a_drain_limit_cuts_what_is_left_then_retires(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(keys, tmp_path) as s, s.agent(), held_session(s) as held:
        rotate = await start_rotate(s, "--drain", "2")
        out, err = await asyncio.wait_for(rotate.communicate(), 120)
        assert rotate.returncode == 0, err.decode()
        assert "rotated:" in out.decode()
        assert await asyncio.wait_for(held.wait(), 60) != 0  # cut at the limit
        assert logged(caplog, "drain limit reached", "sessions=1")
        assert agent_keys_enrolled(s) == [facts_from_public(s.key).fingerprint]


async def test_old_key_is_refused_after_rotation(keys: Keys, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    async with scene(keys, tmp_path, audit_log=audit) as s:
        old_copy = tmp_path / "old_agent_key"
        old_copy.write_bytes(s.key.read_bytes())
        old_copy.chmod(0o600)
        async with s.agent():
            result = await s.rotate()
            assert result.returncode == 0, result.stderr
            assert not await s.logs_in(old_copy)
            assert await s.logs_in(s.key)
            assert (await s.reach()).returncode == 0
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    requests = [
        (e["request"], e["key"])
        for e in events
        if e["event"] == "key_request" and e["request"] != "sshtun-hostkey"
    ]
    new_fp = facts_from_public(s.key).fingerprint
    assert requests == [("sshtun-enrol", keys.agent.fingerprint), ("sshtun-finish", new_fp)]
    enrol = next(e for e in events if e.get("request") == "sshtun-enrol")
    assert enrol["new_key"] == new_fp and enrol["old_key_expires"]


async def test_interrupted_after_generate_enrol_and_switch_old_key_works_and_rerun_completes(
    keys: Keys, tmp_path: Path
) -> None:
    async with scene(keys, tmp_path) as s:
        original = s.access.read_text()
        old_copy = tmp_path / "old_agent_key"
        old_copy.write_bytes(s.key.read_bytes())
        old_copy.chmod(0o600)
        # 1. Interrupted after the new key was generated: nothing on the bastion changed.
        async with s.agent():
            stopped = await s.rotate("--stop-after", "enrol")
            assert stopped.returncode == 0, stopped.stderr
            assert "stopped after enrol" in stopped.stdout.decode()
            assert s.next_key.exists()
            assert await s.logs_in(old_copy) and await s.logs_in(s.next_key)
            old = next(
                e for e in load_access(s.access).entries if e.fingerprint == keys.agent.fingerprint
            )
            assert old.expiry is not None  # the old key now has a bounded life
        # The agent "crashes" and restarts with the old key file: it still works.
        async with s.agent():
            assert (await s.reach()).returncode == 0
            # 2. Interrupted after the switch: the agent serves with the new key, the old
            #    key is still enrolled; kill the agent again.
            stopped = await s.rotate("--stop-after", "switch")
            assert stopped.returncode == 0, stopped.stderr
            assert (await s.reach()).returncode == 0
        async with s.agent():  # restarted from the old key file: still accepted
            assert (await s.reach()).returncode == 0
            assert await s.logs_in(old_copy)
            # 3. The rerun completes it.
            done = await s.rotate()
            assert done.returncode == 0, done.stderr
            assert "reusing the new key" in done.stdout.decode()
            assert (await s.reach()).returncode == 0
        assert not await s.logs_in(old_copy)
        assert await s.logs_in(s.key)
        assert s.access.read_text() != original
        async with s.agent():  # a restart after the rotation uses the new key file
            assert (await s.reach()).returncode == 0


async def test_undo_restores_the_access_file_byte_for_byte(keys: Keys, tmp_path: Path) -> None:
    async with scene(keys, tmp_path) as s, s.agent():
        original = s.access.read_text()
        old_fp = keys.agent.fingerprint
        stopped = await s.rotate("--stop-after", "switch")
        assert stopped.returncode == 0, stopped.stderr
        undone = await s.rotate("--undo")
        assert undone.returncode == 0, undone.stderr
        assert s.access.read_text() == original
        assert not s.next_key.exists()
        assert facts_from_public(s.key).fingerprint == old_fp
        assert (await s.reach()).returncode == 0


async def test_refused_enrolment_says_what_happened_and_the_old_key_keeps_working(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(keys, tmp_path, allow_key_rotation=False) as s, s.agent():
        original = s.access.read_text()
        result = await s.rotate()
        assert result.returncode == EXIT_KEYS
        assert "the bastion did not enrol the new key" in result.stderr
        assert "key rotation is disabled on this bastion" in result.stderr
        assert "keeps working" in result.stderr and "--undo" in result.stderr
        assert s.access.read_text() == original
        assert (await s.reach()).returncode == 0
        assert logged(caplog, "refused key request", "sshtun-enrol")


async def test_with_the_agent_stopped_the_cli_rotates_over_its_own_connection(
    keys: Keys, tmp_path: Path
) -> None:
    async with scene(keys, tmp_path) as s:
        old_copy = tmp_path / "old_agent_key"
        old_copy.write_bytes(s.key.read_bytes())
        old_copy.chmod(0o600)
        result = await s.rotate()
        assert result.returncode == 0, result.stderr
        out = result.stdout.decode()
        assert "the agent is not running" in out and "own connection" in out
        assert "rotated:" in out
        assert not await s.logs_in(old_copy)
        assert await s.logs_in(s.key)
        async with s.agent():  # started afterwards: the new key file logs in and publishes
            assert (await s.reach()).stdout == b"through\n"


async def test_only_rotation_requests_run_in_a_session(keys: Keys, tmp_path: Path) -> None:
    async with scene(keys, tmp_path) as s:
        for command in ("ls", "sshtun-enrol; id", "sh -c id", ""):
            got = await run_ssh(s.client_cfg, "bastion", command or "sshtun-enrolx")
            assert got.returncode != 0
            assert got.stdout == b""
        # A client key may rotate itself too (same permissions), but not enrol a key that
        # is already there under another identity.
        got = await run_ssh(s.client_cfg, "bastion", f"sshtun-enrol {keys.agent.public_line}")
        assert got.returncode == 1
        assert b"already in the access file" in got.stdout


async def test_an_encrypted_key_is_rotated_to_an_encrypted_key(keys: Keys, tmp_path: Path) -> None:
    from sshtunnel_mgr.keys.secrets import load_passphrase, store_passphrase
    from sshtunnel_mgr.keys.store import generate_key

    generate_key(keys.agent.path, comment="agent@home", passphrase="old secret 123", overwrite=True)
    store_passphrase(keys.agent.path, "old secret 123")
    keys.agent = facts_to_info(keys.agent.path)
    async with scene(keys, tmp_path) as s:
        async with s.agent():
            result = await s.rotate()
            assert result.returncode == 0, result.stderr
        secret = load_passphrase(s.key)
        assert secret is not None and secret != "old secret 123"
        assert load_private_key(s.key).public_data  # opens with the stored new passphrase
        assert facts_from_public(s.key).encrypted is True
        assert not Path(str(s.next_key) + ".passphrase").exists()
        async with s.agent():  # restarted: loads the new encrypted key by itself
            assert (await s.reach()).returncode == 0


def facts_to_info(path: Path) -> KeyInfo:
    facts = facts_from_public(path)
    line = Path(str(path) + ".pub").read_text().strip()
    return KeyInfo(path, line, facts.fingerprint, facts.algorithm)
