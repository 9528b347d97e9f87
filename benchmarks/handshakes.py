#!/usr/bin/env python3
"""Key exchanges a bastion answers per second, and the cores it uses doing them: sshtun
with ``workers`` 1 and 2 against OpenSSH's sshd, in interleaved rounds (issue 12: "workers
= 2 uses more than one core").

Why this load: an ``ssh -J`` stream costs the client, the agent and the home sshd together
about twice what it costs the bastion, so on a 2-core machine no bastion (sshd included)
holds more than about 0.65 of a core under streams (parallel_streams.py). A handshake is
the bastion's own work: the load generator (tests/kexflood.py, one process: a version line,
a KEXINIT and a random curve25519 value, no crypto on its side; it reads the server's
reply and hangs up) costs a fraction of what the server spends on it (accept, admission,
the key exchange, the host key's signature). Every setup does ``curve25519-sha256`` (sshd's
``KexAlgorithms`` is set to it; sshtun's policy offers it, and the flood picks it).

Setups, on 127.0.0.1, all running for the whole benchmark and measured one at a time:
  sshtun-wN  ``sshtun bastion`` with ``workers = N``: limits as shipped except
             ``max_startups`` (sshd's 1000:30:2000) and ``penalty_exempt`` 127.0.0.0/8
             (this measures capacity: the cool-down a real flood meets is attack.py's part)
  openssh    OpenSSH ``sshd`` (bench_tunnel's reference config, MaxStartups 1000:30:2000,
             KexAlgorithms curve25519-sha256)

One run: the flood from ``--sources`` addresses x ``--per-source`` workers, no pause, for
``--seconds``; handshakes/s = the server replies it read / the run's length. Meanwhile
the bastion's process tree (sshtun's supervisor and workers; sshd's listener and every
per-connection child) is sampled every 0.1 s (CoreSampler): its mean cores and its peak
over 1 s (sshd's per-connection children live a few ms: the peak misses them, the mean
does not); the flood's own cores come from its rusage once it has been reaped.

    python benchmarks/handshakes.py                 # 3 rounds of 10 s each setup; ~2 min
    python benchmarks/handshakes.py --workers 1,2 --ref HEAD --json out.json

Bounded: runs of at most 60 s, at most 400 flood workers, 10 rounds; everything on
127.0.0.0/8; every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_tunnel import (
    SRC_LABEL,
    Env,
    Procs,
    check_bounds,
    finish,
    log,
    reap_orphans,
    ref_sshd_config,
)
from scaling import (
    CoreSampler,
    measured,
    med,
    spread,
    start_bastion,
    workers_supported,
)
from scene import wait_banner

from tests.harness import SSHD, Keys, free_port

KEX = "curve25519-sha256"
FLOOD = Path(__file__).resolve().parents[1] / "tests" / "kexflood.py"


@dataclass
class Setup:
    name: str  # "sshtun-w1", "sshtun-w2", "openssh"
    port: int
    bastion: asyncio.subprocess.Process
    runs: list[dict[str, Any]] = field(default_factory=list)


async def start_sshtun(procs: Procs, keys: Keys, work: Path, workers: int) -> Setup:
    port = free_port()
    limits = {"max_startups": "1000:30:2000", "penalty_exempt": ["127.0.0.0/8"]}
    access = f"{keys.client.public_line}\n"
    bastion = await start_bastion(
        procs, keys, work / f"sshtun-w{workers}", port, access, workers, limits
    )
    return Setup(f"sshtun-w{workers}", port, bastion.proc)


async def start_openssh(procs: Procs, keys: Keys, work: Path) -> Setup:
    assert SSHD is not None
    port = free_port()
    d = work / "openssh"
    d.mkdir(parents=True)
    cfg = ref_sshd_config(Env(work, keys, 0, procs, kex=None), port, d)
    with cfg.open("a") as f:
        f.write(f"KexAlgorithms {KEX}\n")
    bastion = await procs.spawn([SSHD, "-D", "-e", "-f", str(cfg)], d / "sshd.log")
    await wait_banner(port, proc=bastion)
    return Setup("openssh", port, bastion)


def sources(n: int) -> str:
    return f"127.0.4.1-127.0.4.{n}"


async def measure(
    setup: Setup, procs: Procs, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    load = os.getloadavg()[0]
    argv = [
        sys.executable,
        str(FLOOD),
        "--port", str(setup.port),
        "--sources", sources(args.sources),
        "--per-source", str(args.per_source),
        "--max-seconds", str(args.seconds),
        "--max-connections", str(args.max_connections),
        "--interval", "0",
    ]  # fmt: skip
    out = work / f"flood-{setup.name}-{len(setup.runs)}.log"
    flood = await procs.spawn(argv, out)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the flood: reaped by us
    async with CoreSampler([setup.bastion.pid]) as bastion_cores:
        t0 = time.monotonic()
        await asyncio.wait_for(flood.wait(), args.seconds + 60)
        wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    flood_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    reap_orphans()
    counts = json.loads(out.read_text().strip().splitlines()[-1])
    b = bastion_cores.summary()
    return {
        "handshakes_s": counts.get("replies", 0) / wall,
        "counts": counts,
        "wall": wall,
        "bastion_mean_cores": b["mean"],
        "bastion_peak_1s_cores": b["peak_1s"],
        "bastion_cpu_ms_per_handshake": 1000
        * b.get("cpu_seconds", float("nan"))
        / max(1, counts.get("replies", 0)),
        "flood_mean_cores": flood_cpu / wall,
        "load_1min": load,
    }


async def run(args: argparse.Namespace) -> list[Setup]:
    work = Path(tempfile.mkdtemp(prefix="sshtun-handshakes-"))
    procs = Procs(work)
    setups: list[Setup] = []
    try:
        keys = Keys.create(work / "keys")
        for w in args.workers:
            setups.append(await start_sshtun(procs, keys, work, w))
        setups.append(await start_openssh(procs, keys, work))
        log(f"setups up: {', '.join(s.name for s in setups)}; work {work}")
        for r in range(args.rounds):
            shift = r % len(setups)
            for setup in setups[shift:] + setups[:shift]:
                if setup.bastion.returncode is not None:
                    raise RuntimeError(f"{setup.name}: the bastion exited")
                result = await measure(setup, procs, work, args)
                setup.runs.append(result)
                log(
                    f"round {r + 1} {setup.name}: {result['handshakes_s']:.0f}/s, bastion "
                    f"{result['bastion_mean_cores']:.2f} cores (1 s peak "
                    f"{result['bastion_peak_1s_cores']:.2f}), flood "
                    f"{result['flood_mean_cores']:.2f}, {result['counts']}, load "
                    f"{result['load_1min']:.1f}"
                )
                await asyncio.sleep(args.pause)
    finally:
        await finish(procs, work, args.keep)
    return setups


def report(setups: list[Setup], args: argparse.Namespace, env: dict[str, Any]) -> None:
    print(
        f"\nhandshakes per second: {env['cpu']} x{env['nproc']}, {env['openssh']}, asyncssh "
        f"{env['asyncssh']}; code: {SRC_LABEL}; {KEX}; flood {args.sources} sources x "
        f"{args.per_source} workers, {args.seconds:g} s runs; {args.rounds} rounds"
    )
    print(
        "\n| bastion | handshakes/s | ratio to sshd | bastion mean cores | peak, 1 s "
        "| bastion CPU per handshake (ms) | flood's cores | load (1 min) |"
    )
    print("|" + "---|" * 8)
    ref = next(s for s in setups if s.name == "openssh")
    ref_rate = med([x["handshakes_s"] for x in ref.runs])
    for s in setups:

        def col(key: str, xs: list[dict[str, Any]] = s.runs) -> list[float]:
            return [float(x[key]) for x in xs]

        ratio = med(col("handshakes_s")) / ref_rate if ref_rate else float("nan")
        print(
            f"| {s.name} | {spread(col('handshakes_s'), 0)} | {ratio:.2f} "
            f"| {spread(col('bastion_mean_cores'), 2)} "
            f"| {spread(col('bastion_peak_1s_cores'), 2)} "
            f"| {spread(col('bastion_cpu_ms_per_handshake'), 2)} "
            f"| {spread(col('flood_mean_cores'), 2)} | {spread(col('load_1min'))} |"
        )
    print("\nmedian (min-max) over the rounds.")


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Handshakes per second: sshtun vs sshd.")
    p.add_argument("--workers", type=int_list, help="sshtun setups (default 1,2; 1 without)")
    p.add_argument("--sources", type=int, default=40, help="flood source addresses (40)")
    p.add_argument("--per-source", type=int, default=2, help="flood workers per source (2)")
    p.add_argument("--seconds", type=float, default=10.0, help="per run (10)")
    p.add_argument("--max-connections", type=int, default=100_000, help="per run, a bound")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    p.add_argument("--json", type=Path, help="also write every run here")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    p.add_argument("--ref", metavar="REV", help="measure sshtunnel_mgr as committed at REV")
    a = p.parse_args(argv)
    if a.workers is None:
        a.workers = [1, 2] if workers_supported() else [1]
    if not a.workers or any(not 1 <= w <= 8 for w in a.workers):
        p.error("--workers: values 1..8")
    bounds = dict(
        sources=(1, 200),
        per_source=(1, 10),
        seconds=(1, 60),
        max_connections=(1, 1_000_000),
        rounds=(1, 10),
    )
    check_bounds(p, a, bounds)
    if a.sources * a.per_source > 400:
        p.error("at most 400 flood workers")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SSHD:
        print("handshakes: needs OpenSSH sshd", file=sys.stderr)
        return 2
    status, _ = measured("handshakes", args, run, report, lambda s: (s.name, s.runs))
    return status


if __name__ == "__main__":
    sys.exit(main())
