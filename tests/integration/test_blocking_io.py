"""The event loop never waits for a file: a key request waiting for the access file's lock
(held by another real process, as `sshtun keys` holds it) and a reload reading a config
file that is slow to arrive (a real FIFO fed by another process) run in worker threads,
while a real `ssh -J` through the bastion to a real sshd completes and the agent's link
stays up. Reloads run one at a time. Each waiting process is released by the test once the
routed session has completed (or, on a bastion that blocks, on its own after a bound)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.core.config import load_config
from sshtunnel_mgr.keys.store import load_private_key
from tests.harness import (
    Keys,
    bastion_config,
    run_ssh,
    write_ssh_config,
    write_toml,
)
from tests.integration.scene import scene
from tests.integration.test_abuse import connect

BOUND = "30"  # seconds a helper process waits at most for the test to release it

# Holds an exclusive flock on the file, says so, waits to be released.
HOLD_LOCK = """
import fcntl, os, select, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
"""

# Opens the FIFO for writing (returns once a reader opened it), says so, waits to be
# released, then writes the config text and closes.
FEED_FIFO = """
import select, sys
with open(sys.argv[1], "w") as fifo:
    print("reader", flush=True)
    select.select([sys.stdin], [], [], float(sys.argv[3]))
    fifo.write(open(sys.argv[2]).read())
"""


@contextlib.asynccontextmanager
async def helper(script: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A helper process, released by closing its stdin, always stopped by its PID."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def release(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.close()


async def said(proc: asyncio.subprocess.Process, word: bytes) -> None:
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 60) == word + b"\n"


@contextlib.asynccontextmanager
async def bastion_with(
    keys: Keys, tmp_path: Path, limits: dict[str, object] | None = None, **kw: object
) -> AsyncIterator[Bastion]:
    """A bastion, the home box's real sshd and an sshtun agent publishing homebox:22."""
    async with scene(keys, tmp_path, bastion=False) as s:
        bastion = Bastion(bastion_config(keys, s.access, limits=limits), **kw)  # type: ignore[arg-type]
        await bastion.start()
        try:
            async with s.agent(port=bastion.port):
                yield bastion
        finally:
            await bastion.stop()


def agent_links(bastion: Bastion) -> set[int]:
    return {c.conn_id for c in bastion.state.connections.values() if c.published}


async def test_a_key_request_waiting_for_the_lock_does_not_stall_routed_sessions(
    keys: Keys, tmp_path: Path
) -> None:
    async with bastion_with(keys, tmp_path) as bastion:
        access = bastion.config.access_file
        cfg = write_ssh_config(tmp_path / "client", keys, bastion.port)
        links = agent_links(bastion)
        successor = keys.extra("successor")
        async with (
            helper(HOLD_LOCK, str(access.with_name(f".{access.name}.lock")), BOUND) as holder,
            connect(keys, bastion.port, load_private_key(keys.agent.path)) as conn,
        ):
            await said(holder, b"locked")  # as `sshtun keys revoke` would hold it
            proc = await conn.create_process(f"sshtun-enrol {successor.public_line}")
            answer = asyncio.ensure_future(proc.stdout.readline())  # accepted; now waits
            try:
                got = await run_ssh(cfg, "homebox", "echo routed", timeout=90)
                assert (got.returncode, got.stdout) == (0, b"routed\n"), got.stderr
                assert not answer.done(), "the key request did not wait for the lock"
                assert successor.fingerprint not in access.read_text()
            finally:
                release(holder)
            done = json.loads(await asyncio.wait_for(answer, 60))
        assert done["ok"] and done["new_key"] == successor.fingerprint
        # Applied before the answer: the successor may log in at once.
        assert successor.fingerprint in {e.fingerprint for e in bastion.state.access.entries}
        assert agent_links(bastion) == links  # the agent's link never dropped


async def test_reloads_read_off_the_event_loop_and_run_one_at_a_time(
    keys: Keys, tmp_path: Path
) -> None:
    fifo = tmp_path / "bastion.toml"
    os.mkfifo(fifo)
    async with bastion_with(keys, tmp_path, load=lambda: load_config(fifo).require_bastion()) as (
        bastion
    ):
        text = write_toml(tmp_path / "bastion.toml.text", "bastion", bastion.config)
        cfg = write_ssh_config(tmp_path / "client", keys, bastion.port)
        links = agent_links(bastion)
        finished: list[str] = []
        async with helper(FEED_FIFO, str(fifo), str(text), BOUND) as feeder:
            # `sshtun reload` (the admin socket's handler): it now waits on the FIFO.
            first = asyncio.ensure_future(bastion.handle_admin({"cmd": "reload"}))
            first.add_done_callback(lambda _: finished.append("first"))
            await said(feeder, b"reader")
            assert not first.done(), "the reload read its file on the event loop"
            # A key request's reload (access file only) queues behind it.
            second = asyncio.ensure_future(bastion.state.access_changed())
            second.add_done_callback(lambda _: finished.append("second"))
            try:
                got = await run_ssh(cfg, "homebox", "echo routed", timeout=90)
                assert (got.returncode, got.stdout) == (0, b"routed\n"), got.stderr
                assert finished == [], "a reload did not wait (for its file, or its turn)"
            finally:
                release(feeder)
            answers = await asyncio.wait_for(asyncio.gather(first, second), 60)
        assert finished == ["first", "second"]
        assert all(a["ok"] for a in answers), answers  # type: ignore[index]
        assert agent_links(bastion) == links


async def test_a_key_request_gives_up_on_a_lock_that_stays_held_and_says_why(
    keys: Keys, tmp_path: Path
) -> None:
    async with bastion_with(keys, tmp_path, limits={"key_request_timeout": 3.0}) as bastion:
        access = bastion.config.access_file
        before = access.read_bytes()
        successor = keys.extra("successor")
        async with (
            helper(HOLD_LOCK, str(access.with_name(f".{access.name}.lock")), BOUND) as holder,
            connect(keys, bastion.port, load_private_key(keys.agent.path)) as conn,
        ):
            await said(holder, b"locked")
            try:
                done = await conn.run(f"sshtun-enrol {successor.public_line}", timeout=60)
            finally:
                release(holder)
        answer = json.loads(str(done.stdout))
        assert done.exit_status == 1 and not answer["ok"]
        assert "is being edited by another process" in answer["error"]
        assert answer["error"].endswith("try again")
        assert access.read_bytes() == before
