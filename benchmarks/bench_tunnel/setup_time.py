"""Measurement 2: set-up time of ``ssh -J ... homebox true``."""

from __future__ import annotations

import argparse
import asyncio
from functools import partial
from pathlib import Path
from typing import Any

from bench_tunnel.common import log, med
from bench_tunnel.runs import guarded, run_client
from bench_tunnel.sides import Env, Run, Side
from bench_tunnel.throughput import write_direct_config
from tests.harness import (
    SSH,
)


async def setup_run(side: Side | None, direct_cfg: Path) -> Run:
    """One timed ``ssh HOST true`` (side None: straight to the home sshd, no bastion), and
    the CPU the bastion spent on it."""
    if side is None:
        return Run(await ssh_true(direct_cfg, "directhome", "direct"))
    cpu0 = side.bastion_cpu()
    elapsed = await setup_once(side)
    await asyncio.sleep(0.2)  # let the bastion's per-connection processes exit and be reaped
    return Run(elapsed, bastion_cpu=side.bastion_cpu() - cpu0)


async def setup_once(side: Side, timeout: float = 30) -> float:
    assert side.client_cfg is not None
    return await ssh_true(side.client_cfg, side.host, side.kind, timeout)


async def ssh_true(cfg: Path, host: str, label: str, timeout: float = 30) -> float:
    assert SSH is not None
    run = await run_client(SSH, "-F", str(cfg), host, "true", timeout=timeout)
    if run.returncode is None:
        raise RuntimeError(f"{label}: ssh true did not exit within {timeout}s: {run.stderr}")
    if run.returncode != 0:
        raise RuntimeError(f"{label}: ssh true failed: {run.stderr}")
    return run.seconds


async def setup_phase(env: Env, sides: dict[str, Side], args: argparse.Namespace) -> dict[str, Any]:
    log(f"set-up time: {args.setup_runs} runs each, interleaved (+2 warm-up), and direct")
    direct_cfg = write_direct_config(env, args.ciphers[0])
    targets: dict[str, Side | None] = {**sides, "direct": None}
    runs: dict[str, list[Run]] = {k: [] for k in targets}
    for i in range(args.setup_runs + 2):
        order = list(targets) if i % 2 == 0 else list(reversed(targets))
        for name in order:
            measure = partial(setup_run, targets[name], direct_cfg)
            if i < 2:
                await measure()
                continue
            runs[name].append(await guarded(env, f"set-up {name}", measure))
    return {
        k: {
            "median_ms": 1000 * med([r.seconds for r in v]),
            "runs_ms": [1000 * r.seconds for r in v],
            "bastion_cpu_ms": 1000 * med([r.bastion_cpu for r in v]),
            "foreign_cpu_share": [round(r.foreign, 3) for r in v],
        }
        for k, v in runs.items()
    }
