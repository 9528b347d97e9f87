"""Smoke test of benchmarks/web_bench (issue 11, "Speed"): it runs for real with tiny counts
against a real sshtun bastion and ``sshtun up`` agent, haproxy + OpenSSH's sshd + ``ssh
-R`` as the reference, nginx at home, h2load and curl as the clients; it must produce
figures for both sides and the ratio fields. Nothing here asserts a time or a rate."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.harness import REQUIRE_OPENSSH, require_openssh

pytestmark = pytest.mark.openssh

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "web_bench"
TOOLS = {"nginx": "nginx", "h2load": "nghttp2-client", "haproxy": "haproxy", "curl": "curl"}


def require_tools() -> None:
    """Skip without the web peers, except in CI (.ci/run installs them): then fail."""
    missing = [
        pkg
        for tool, pkg in TOOLS.items()
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}"))
    ]
    if missing:
        message = f"not installed: {' '.join(missing)} (apt-get install them; .ci/run does)"
        if REQUIRE_OPENSSH:
            pytest.fail(message + " but SSHTUN_REQUIRE_OPENSSH=1")
        pytest.skip(message)


async def test_web_bench_gives_figures_for_both_sides_and_the_ratios(tmp_path: Path) -> None:
    require_openssh(server=True)
    require_tools()
    out_json = tmp_path / "web.json"
    args = ["--rounds", "1", "--requests", "20", "--clients", "4", "--ttfb", "3"]
    args += ["--bulk-mib", "2", "--retries", "0", "--json", str(out_json)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 300)
    except TimeoutError:
        proc.kill()  # by its PID; its own clean-up stops its children
        await proc.wait()
        raise
    assert proc.returncode == 0, out.decode() + err.decode()[-3000:]
    assert "sshtun/ref" in out.decode()
    res = json.loads(out_json.read_text())
    assert res["rounds_done"] == 1
    for side in ("sshtun", "reference"):
        s = res["summary"][side]
        assert s["rps"]["n"] == 1 and s["rps"]["median"] > 0
        assert s["ttfb_samples"] == 3 and s["ttfb_p50_ms"]["pooled"] > 0
        assert s["ttfb_p99_ms"]["pooled"] >= s["ttfb_p50_ms"]["pooled"]
        assert s["bulk_mb_s"]["n"] == 1 and s["bulk_mb_s"]["median"] > 0
        (rps_run,) = res["runs"]["rps"][side]
        assert rps_run["detail"]["nginx_accepted"] >= 20  # a connection per request
    assert set(res["ratios"]) == {"rps", "ttfb_p50_ms", "ttfb_p99_ms", "bulk_mb_s"}
    for ratio in res["ratios"].values():
        assert ratio["ratio"] > 0 and isinstance(ratio["pass"], bool)
