"""The audit log on a disk that fills up: real logins (asyncssh clients) write real records
to a real 64 KiB tmpfs until it is full, then space is freed. Every line of the file must
parse as one JSON object (a record cut short by the full disk must not merge with the next
one), the records written after space returns are complete, and the bastion keeps serving
and says what it dropped."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Keys
from tests.integration.conftest import logged
from tests.integration.test_abuse import connect, echo_scene

PAGE = 4096


@contextlib.contextmanager
def small_tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A real, tiny filesystem (tmpfs of ``size`` bytes), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


async def test_a_full_disk_never_leaves_a_half_written_record(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_tmpfs(tmp_path / "logs", 16 * PAGE) as logs:
        audit = logs / "audit.jsonl"
        filler = logs / "filler"
        filler.write_bytes(b"\0" * (14 * PAGE + 100))  # 15 pages: one page left for the log
        async with echo_scene(keys, tmp_path, audit_log=audit) as s:

            async def login() -> str:
                async with connect(keys, s.bastion.port) as conn:
                    return f"127.0.0.1:{conn.get_extra_info('sockname')[1]}"

            for _ in range(200):  # bounded: one page holds about 20 login records
                await login()
                if s.bastion.state.audit.write_errors >= 5:
                    break
            assert s.bastion.state.audit.write_errors >= 5, "the disk never filled"
            filler.unlink()  # space again
            after = [await login() for _ in range(3)]

            lines = audit.read_bytes().split(b"\n")
        assert lines.pop() == b"", "the file ends with a whole line"
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all(r["event"] in ("login", "publish") for r in records)
        logins = {r["from"] for r in records if r["event"] == "login"}
        assert set(after) <= logins  # written whole once there was space again
        assert logged(caplog, "audit log write failed; record dropped")
        assert logged(caplog, "audit log writable again")
