"""Teardown of ``ssh -J`` through sshtun: every hop ends by itself, nothing stays routed.

The jump hop of ``ssh -J`` is a second ``ssh -W`` that OpenSSH starts as a ProxyCommand.
When the session ends, the main ``ssh`` sends it SIGHUP and exits without waiting for it.
Here it runs with SIGHUP ignored (``nohup``), so it can only end the way a peer that
never got the signal would: by the bastion closing the jump channel once the home sshd
has closed its side (home sshd -> agent -> bastion -> client, EOF and close). Its stderr
is a pipe shared with the main ``ssh``: the pipe reaches EOF only when *both* processes
have gone, so a close or EOF that is lost anywhere on the route shows up as a client that
never finishes, and as a routed channel the bastion keeps. No timing is asserted: the
bound is only there so that a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from sshtunnel_mgr.bastion.serve import Bastion
from tests.harness import SSH, Keys, access_text, require_openssh, wait_for
from tests.integration.scene import scene, tcp_service

HANG = 60  # far beyond any run on a loaded machine; only a lost close reaches it


async def ssh_until_every_hop_is_gone(
    cfg: Path, command: str, stdin: bytes = b""
) -> tuple[int, bytes, str]:
    """Run ``ssh -F cfg homebox command`` with SIGHUP ignored; return once the main ssh
    *and* its ProxyJump child have exited (stderr EOF), or fail after ``HANG`` s."""
    require_openssh(server=True)
    assert SSH is not None
    nohup = shutil.which("nohup")
    if nohup is None:
        pytest.skip("nohup not installed")
    proc = await asyncio.create_subprocess_exec(
        nohup,
        SSH,
        "-F",
        str(cfg),
        "homebox",
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), HANG)
    except TimeoutError:
        pytest.fail(f"ssh -J {command!r}: a hop was still running after {HANG} s")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode(errors="replace")


async def assert_all_torn_down(bastion: Bastion) -> None:
    await wait_for(lambda: bastion.state.routed_channels() == 0, timeout=HANG)


@pytest.mark.openssh
async def test_ssh_jump_true_ends_every_hop_sequential_and_parallel(
    keys: Keys, tmp_path: Path
) -> None:
    async with scene(keys, tmp_path) as s, s.agent():
        bastion, cfg = s.bastion, s.client_cfg
        for _ in range(3):
            rc, _, err = await ssh_until_every_hop_is_gone(cfg, "true")
            assert rc == 0, err
        await assert_all_torn_down(bastion)
        results = await asyncio.gather(
            *(ssh_until_every_hop_is_gone(cfg, "true") for _ in range(8))
        )
        assert [rc for rc, _, _ in results] == [0] * 8, [err for _, _, err in results]
        await assert_all_torn_down(bastion)


@pytest.mark.openssh
async def test_half_closes_pass_both_ways_and_end_the_route(keys: Keys, tmp_path: Path) -> None:
    """The client's EOF reaches the home command (``wc -c`` ends only on it), the home
    side's output and EOF come back, and the jump channel closes after both."""
    async with scene(keys, tmp_path) as s, s.agent():
        bastion, cfg = s.bastion, s.client_cfg
        payload = os.urandom(300_000)
        rc, out, err = await ssh_until_every_hop_is_gone(cfg, "wc -c", stdin=payload)
        assert rc == 0, err
        assert out.split() == [str(len(payload)).encode()]
        # More output than the windows hold, then the home side's EOF and close.
        rc, out, err = await ssh_until_every_hop_is_gone(cfg, "head -c 200000 /dev/zero")
        assert rc == 0, err
        assert len(out) == 200_000
        await assert_all_torn_down(bastion)


async def test_the_home_side_ending_first_still_closes_the_route(
    keys: Keys, tmp_path: Path
) -> None:
    """The home service writes and closes before the client's EOF reaches the agent: the
    agent's forwarder (asyncssh's) sends EOF up and then, given the client's EOF, never
    closes its channel. The bastion closes both ends once both EOFs have passed, so the
    client's channel closes, the route ends and the agent's TCP socket goes."""
    access = access_text(keys, listen="svc:7000", open_="svc:7000")

    async def say_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        writer.close()
        await writer.wait_closed()

    async with (
        tcp_service(say_and_close) as home_port,
        scene(keys, tmp_path, access=access, home=False) as s,
        s.agent([("svc", 7000, f"127.0.0.1:{home_port}")]),
        await s.connect(keys.client.path, username="client") as client,
    ):
        for _ in range(3):
            reader, writer = await client.open_connection("svc", 7000)
            assert await asyncio.wait_for(reader.read(), HANG) == b"hello\n"  # and EOF
            writer.write_eof()  # only now: the home side has long gone
            await asyncio.wait_for(writer.channel.wait_closed(), HANG)
        await assert_all_torn_down(s.bastion)
