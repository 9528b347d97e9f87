"""A key rotation killed at any moment never locks the owner out.

Real processes throughout: ``sshtun bastion`` and ``sshtun up`` run as child processes, a
real OpenSSH sshd is the home box, and the real ``ssh -J`` logs in through the bastion.
The CLI or the agent is killed with SIGKILL at one step of the rotation (the test-only
``SSHTUN_TEST_CRASH`` kill point); then every process is killed and restarted from what is
on disk (the agent from its config and key file, the bastion from its access file). The
restarted agent must log in and publish, ``ssh -J`` must reach the home sshd, and a rerun
of ``sshtun keys rotate`` (agent running or stopped) must complete, or ``--undo`` restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from sshtunnel_mgr.core.errors import EXIT_PERMISSION
from sshtunnel_mgr.keys.inventory import facts_from_public
from sshtunnel_mgr.keys.store import generate_key, load_private_key
from sshtunnel_mgr.runtime.accessfile import load_access
from sshtunnel_mgr.runtime.fsutil import write_atomic
from tests.harness import (
    SSHTUN,
    HomeSshd,
    Keys,
    Result,
    bastion_pub,
    process,
    run_ssh,
    wait_for,
)
from tests.integration.scene import scene

CLI_POINTS = [
    "cli:prepared",
    "cli:recorded",
    "cli:switched",
    "cli:swap-renamed",
    "cli:swapped",
    "cli:retire-requested",
    "cli:retired",
]
AGENT_POINTS = [
    "agent:enrolled",
    "agent:handover-published",
    "agent:switched",
    "agent:retire-before-finish",
    "agent:retired",
]


@dataclass
class Child:
    """A running sshtun process whose stderr lines are collected as they come."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    def saw(self, marker: str) -> bool:
        return any(marker in line for line in self.lines)

    async def wait_line(self, marker: str, timeout: float = 60) -> None:
        await wait_for(lambda: self.saw(marker) or self.proc.returncode is not None, timeout)
        assert self.saw(marker), f"exit {self.proc.returncode}: {''.join(self.lines)}"


@contextlib.asynccontextmanager
async def child(*argv: str, env: dict[str, str] | None = None) -> AsyncIterator[Child]:
    async with process(*argv, env=env) as proc:
        running = Child(proc)

        async def collect() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                running.lines.append(raw.decode(errors="replace"))

        reader = asyncio.create_task(collect())
        try:
            yield running
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                await proc.wait()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def crash_env(point: str | None) -> dict[str, str]:
    return {"SSHTUN_TEST_CRASH": point} if point else {}


@dataclass
class World:
    keys: Keys
    tmp: Path
    port: int
    access: Path
    bastion_toml: Path
    agent_toml: Path
    client_cfg: Path
    home: HomeSshd
    old_copy: Path

    @property
    def key(self) -> Path:
        return self.keys.agent.path

    def bastion(self) -> contextlib.AbstractAsyncContextManager[Child]:
        return child(*SSHTUN, "bastion", "--config", str(self.bastion_toml))

    def agent(self, point: str | None = None) -> contextlib.AbstractAsyncContextManager[Child]:
        return child(*SSHTUN, "up", "--config", str(self.agent_toml), env=crash_env(point))

    async def rotate(self, *args: str, point: str | None = None) -> Result:
        return await self.cli(
            "keys", "rotate", "--config", str(self.agent_toml), "--wait", *args, point=point
        )

    async def cli(self, *args: str, point: str | None = None) -> Result:
        proc = await asyncio.create_subprocess_exec(
            *SSHTUN,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **crash_env(point)},
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return Result(proc.returncode, out, err.decode())

    async def reach(self) -> Result:
        return await run_ssh(self.client_cfg, "homebox", "echo through", timeout=60)

    async def logs_in(self, key_path: Path) -> bool:
        try:
            conn = await asyncssh.connect(
                "127.0.0.1",
                self.port,
                username="agent",
                client_keys=[load_private_key(key_path)],
                known_hosts=([asyncssh.import_public_key(bastion_pub(self.keys))], [], []),
                config=None,
                agent_path=None,
            )
        except asyncssh.PermissionDenied:
            return False
        conn.close()
        return True

    async def works_from_disk(self) -> None:
        """Bastion and agent restarted from disk: the agent publishes, ssh -J gets in."""
        async with self.bastion() as bastion:
            await bastion.wait_line("listening on")
            async with self.agent() as agent:
                await agent.wait_line("name=homebox:22")
                assert agent.saw("published"), "".join(agent.lines)
                reached = await self.reach()
                assert reached.stdout == b"through\n", reached.stderr


@contextlib.asynccontextmanager
async def world(keys: Keys, tmp_path: Path) -> AsyncIterator[World]:
    old_copy = tmp_path / "old_agent_key"
    old_copy.write_bytes(keys.agent.path.read_bytes())
    old_copy.chmod(0o600)
    async with scene(keys, tmp_path, bastion=False) as s:
        s.access.chmod(0o600)
        yield World(
            keys,
            tmp_path,
            s.port,
            s.access,
            s.bastion_file(audit_log=tmp_path / "audit.jsonl"),
            s.agent_file(),
            s.client_cfg,
            s.home,
            old_copy,
        )


async def crash(w: World, point: str) -> None:
    """Run a rotation with the agent up and kill the CLI or the agent at ``point``; then
    everything is killed (the blocks end with SIGKILL)."""
    agent_point = point if point.startswith("agent:") else None
    cli_point = point if point.startswith("cli:") else None
    async with w.bastion() as bastion:
        await bastion.wait_line("listening on")
        async with w.agent(agent_point) as agent:
            await agent.wait_line("name=homebox:22")
            result = await w.rotate(point=cli_point)
            if cli_point:
                assert result.returncode == -signal.SIGKILL, result.stderr
            else:
                await wait_for(lambda: agent.proc.returncode is not None, 60)
                assert agent.proc.returncode == -signal.SIGKILL, "".join(agent.lines)
                assert result.returncode != 0


def assert_finished(w: World) -> None:
    new = facts_from_public(w.key)
    assert new.fingerprint != w.keys.agent.fingerprint
    agent_entries = [e for e in load_access(w.access).entries if e.permit_listen]
    assert [e.fingerprint for e in agent_entries] == [new.fingerprint]
    assert not Path(str(w.key) + ".next").exists()
    assert not Path(str(w.key) + ".rotation").exists()


@pytest.mark.parametrize("point", CLI_POINTS + AGENT_POINTS)
async def test_killed_at_any_step_a_restart_logs_in_and_a_rerun_completes(
    keys: Keys, tmp_path: Path, point: str
) -> None:
    async with world(keys, tmp_path) as w:
        await crash(w, point)
        await w.works_from_disk()
        async with w.bastion() as bastion:
            await bastion.wait_line("listening on")
            async with w.agent() as agent:
                await agent.wait_line("name=homebox:22")
                done = await w.rotate()
                assert done.returncode == 0, done.stderr
                assert "rotated:" in done.stdout.decode()
            assert_finished(w)
            assert not await w.logs_in(w.old_copy)
        await w.works_from_disk()


@pytest.mark.parametrize("point", ["cli:switched", "cli:swapped", "agent:handover-published"])
async def test_killed_then_the_rerun_finishes_with_the_agent_stopped(
    keys: Keys, tmp_path: Path, point: str
) -> None:
    async with world(keys, tmp_path) as w:
        await crash(w, point)
        async with w.bastion() as bastion:
            await bastion.wait_line("listening on")
            done = await w.rotate()
            assert done.returncode == 0, done.stderr
            assert "the agent is not running" in done.stdout.decode()
            assert_finished(w)
        await w.works_from_disk()


@pytest.mark.parametrize("point", ["cli:recorded", "agent:switched", "cli:switched"])
@pytest.mark.parametrize("agent_up", [True, False], ids=["agent-up", "agent-stopped"])
async def test_killed_before_the_swap_undo_restores_the_access_file(
    keys: Keys, tmp_path: Path, point: str, agent_up: bool
) -> None:
    async with world(keys, tmp_path) as w:
        original = w.access.read_text()
        await crash(w, point)
        async with w.bastion() as bastion:
            await bastion.wait_line("listening on")
            async with contextlib.AsyncExitStack() as stack:
                if agent_up:
                    agent = await stack.enter_async_context(w.agent())
                    await agent.wait_line("name=homebox:22")
                undone = await w.rotate("--undo")
                assert undone.returncode == 0, undone.stderr
        assert w.access.read_text() == original
        assert facts_from_public(w.key).fingerprint == w.keys.agent.fingerprint
        assert not Path(str(w.key) + ".rotation").exists()
        await w.works_from_disk()


async def test_an_encrypted_key_killed_mid_swap_loads_and_finishes(
    keys: Keys, tmp_path: Path
) -> None:
    generate_key(keys.agent.path, comment="agent@home", passphrase="old secret 123", overwrite=True)
    # The child processes have no keyring (a headless machine): the 0600 file, as
    # store_passphrase writes it there (whatever keyring this test process may have).
    write_atomic(Path(str(keys.agent.path) + ".passphrase"), b"old secret 123", 0o600)
    facts = facts_from_public(keys.agent.path)
    keys.agent = type(keys.agent)(
        keys.agent.path,
        keys.agent.path.with_name("agent_key.pub").read_text().strip(),
        facts.fingerprint,
        facts.algorithm,
    )
    async with world(keys, tmp_path) as w:
        await crash(w, "cli:swap-renamed")
        # KEY is the new key; its passphrase is still stored for KEY.next: it loads.
        assert facts_from_public(w.key).fingerprint == keys.agent.fingerprint  # stale .pub
        await w.works_from_disk()
        async with w.bastion() as bastion:
            await bastion.wait_line("listening on")
            done = await w.rotate()
            assert done.returncode == 0, done.stderr
        assert_finished(w)
        assert not Path(str(w.key) + ".next.passphrase").exists()
        await w.works_from_disk()


@pytest.mark.parametrize("point", ["cli:switched", "cli:swapped"])
async def test_status_and_doctor_show_a_half_finished_rotation_and_its_command(
    keys: Keys, tmp_path: Path, point: str
) -> None:
    async with world(keys, tmp_path) as w:
        await crash(w, point)
        finish = f"sshtun keys rotate --config {w.agent_toml}"
        undo = point == "cli:switched"  # before the swap it can still be undone
        stopped = await w.cli("status", "--config", str(w.agent_toml))
        assert stopped.returncode != 0  # the agent is down, and the record says more
        assert "key rotation not finished" in stopped.stderr and finish in stopped.stderr
        async with w.bastion() as bastion:
            await bastion.wait_line("listening on")
            async with w.agent() as agent:
                await agent.wait_line("name=homebox:22")
                status = await w.cli("status", "--config", str(w.agent_toml))
                assert status.returncode == 0, status.stderr
                out = status.stdout.decode()
                assert "key rotation not finished" in out and f"finish it: {finish}" in out
                assert ("--undo" in out) is undo
                assert ("holds the new key" in out) is not undo
        doctor = await w.cli("doctor", "--role", "agent", "--config", str(w.agent_toml))
        out = doctor.stdout.decode()
        assert "a key rotation is half-finished" in out, out + doctor.stderr
        assert finish in out


async def test_after_the_old_keys_grace_ran_out_the_rerun_finishes_with_the_new_key(
    keys: Keys, tmp_path: Path
) -> None:
    async with world(keys, tmp_path) as w:
        async with w.bastion() as bastion:
            await bastion.wait_line("listening on")
            async with w.agent() as agent:
                await agent.wait_line("name=homebox:22")
                stopped = await w.rotate("--stop-after", "enrol")
                assert stopped.returncode == 0, stopped.stderr
        # rotation_grace passes (time moved on in the file the bastion wrote): the old
        # key's expiry-time is in the past.
        text = w.access.read_text()
        assert text.count("expiry-time=") == 1
        w.access.write_text(re.sub(r'expiry-time="\d{14}Z"', 'expiry-time="20200101000000Z"', text))
        async with w.bastion() as bastion:
            await bastion.wait_line("listening on")
            async with w.agent() as agent:  # the old key file alone would lock the owner out
                await wait_for(lambda: agent.proc.returncode is not None, 60)
                assert agent.proc.returncode == EXIT_PERMISSION
            done = await w.rotate()
            assert done.returncode == 0, done.stderr
            assert "the old key is refused (expired?); the new one works" in done.stdout.decode()
        assert_finished(w)
        await w.works_from_disk()


@pytest.mark.parametrize(
    "point", ["cli:prepared", "cli:recorded", "cli:swap-renamed", "cli:swapped", "cli:retired"]
)
async def test_with_the_agent_stopped_killed_at_any_step_a_rerun_completes(
    keys: Keys, tmp_path: Path, point: str
) -> None:
    async with world(keys, tmp_path) as w:
        async with w.bastion() as bastion:
            await bastion.wait_line("listening on")
            killed = await w.rotate(point=point)
            assert killed.returncode == -signal.SIGKILL, killed.stderr
        await w.works_from_disk()
        async with w.bastion() as bastion:
            await bastion.wait_line("listening on")
            done = await w.rotate()
            assert done.returncode == 0, done.stderr
        assert_finished(w)
        await w.works_from_disk()
