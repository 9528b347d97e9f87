"""Workers forked from the supervisor (bastion/workers/forked.py), with real processes.

The supervisor imports the workers' modules once and forks each worker from itself: the
workers are its children, named ``sshtun-wN``, and share its imported modules' pages
copy-on-write (``Shared_Dirty`` in their smaps: an ``exec``'d worker shares none of its
heap). Each child closes every descriptor it was not given, so no worker holds the
supervisor's end of another worker's control line: when the supervisor is killed -9, every
worker sees its own line close and stops by itself, and the private directory of their
sockets goes with them (nobody else would remove it).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.harness import Keys
from tests.integration.scene import scene
from tests.integration.test_workers import FAR, NEAR, _bastion, _from, _status, _until

SHARED_AT_LEAST_KIB = 8 * 1024  # asyncssh, cryptography and pydantic's heap: ~25 MiB here


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) "


def _rollup_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in smaps_rollup of {pid}")


def _socket_dir(pid: int) -> Path:
    """The workers' private directory: where worker ``pid``'s relay socket is bound."""
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        path = line.split()[-1] if len(line.split()) > 7 else ""
        if "/sshtun-workers-" in path and Path(path).name.startswith("relay-"):
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            if f"socket:[{line.split()[6]}]" in inodes:
                return Path(path).parent
    raise AssertionError(f"worker {pid} has no relay socket")


def _gone(pid: int) -> bool:
    try:
        return _stat(pid)[0] == "Z"  # ended, not reaped yet (by whoever adopted it)
    except FileNotFoundError:
        return True


async def test_workers_are_forked_children_that_share_the_supervisors_modules(
    keys: Keys, tmp_path: Path
) -> None:
    async with (
        scene(keys, tmp_path, bastion=False) as s,
        _bastion(s, workers=2) as bastion,
        s.agent_process(),
    ):
        pids = [w["pid"] for w in (await _status(s))["workers"]]
        directory = _socket_dir(pids[0])
        for index, pid in enumerate(pids):
            assert int(_stat(pid)[1]) == bastion.pid  # its parent: the supervisor
            assert Path(f"/proc/{pid}/comm").read_text().strip() == f"sshtun-w{index}"
            shared = _rollup_kib(pid, "Shared_Dirty")
            assert shared >= SHARED_AT_LEAST_KIB, f"worker {index} shares {shared} KiB"
        for source in (FAR, NEAR):  # a relayed client and a direct one still get through
            result = await s.reach(cfg=_from(s, source))
            assert result.returncode == 0, result.stderr
        # The supervisor dies without a word: each worker's control line closes (no
        # other process holds its far end), the worker stops by itself, and the last one
        # out removes the sockets' directory.
        bastion.signalled = True
        os.kill(bastion.pid, signal.SIGKILL)

        async def all_gone() -> bool:
            return all(_gone(pid) for pid in pids)

        await _until(all_gone)
        assert not directory.exists()
