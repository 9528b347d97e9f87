"""The command line and the run: set up both sides, the three measurements, the report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_tunnel.common import CIPHERS, MiB, cancellable, check_bounds, log, short
from bench_tunnel.memory import memory_phase
from bench_tunnel.procs import LAUNCHED, Procs, become_subreaper, finish, kill_tree
from bench_tunnel.profiling import profile, profile_report
from bench_tunnel.report import environment, report
from bench_tunnel.setup_time import setup_phase
from bench_tunnel.sides import Env, start_agent, start_ref_bastion, start_sshtun_bastion, stop_agent
from bench_tunnel.throughput import agent_hop_cipher, negotiated_ciphers, throughput_phase
from tests.harness import (
    SSH,
    SSHD,
    Keys,
    home_sshd,
)


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sshtun-bench-"))
    procs = Procs(work)
    keys = Keys.create(work / "keys")
    res: dict[str, Any] = {"config": {}, "throughput": {}, "setup": {}, "memory": {}}
    try:
        async with home_sshd(keys, work / "home") as home:
            LAUNCHED.add(home.proc.pid)
            env = Env(work, keys, home.port, procs, args.kex, args.max_foreign, args.retries)
            sides = {
                "sshtun": await start_sshtun_bastion(env),
                "openssh": await start_ref_bastion(env),
            }
            log(
                f"home sshd :{home.port}, sshtun bastion :{sides['sshtun'].port} "
                f"(pid {sides['sshtun'].bastion.pid}), OpenSSH bastion :{sides['openssh'].port} "
                f"(pid {sides['openssh'].bastion.pid}); work dir {work}"
            )
            for ci, cipher in enumerate(args.ciphers):
                for side in sides.values():
                    await start_agent(side, cipher)
                check = {}
                for name, side in sides.items():
                    client_hops = await negotiated_ciphers(side)
                    check[name] = {"client_hops": client_hops, "agent_hop": agent_hop_cipher(side)}
                    if not client_hops or any(c != cipher for c in client_hops):
                        raise RuntimeError(f"{name}: negotiated {client_hops}, wanted {cipher}")
                res["config"].setdefault("negotiated", {})[short(cipher)] = check
                log(f"{short(cipher)}: negotiated {check}")

                if ci == 0 and args.setup_runs:
                    res["setup"] = await setup_phase(env, sides, args)
                if ci == 0 and args.idle and args.mem_rounds:
                    res["memory"] = await memory_phase(env, args)

                res["throughput"][short(cipher)] = await throughput_phase(sides, cipher, args)

                if ci == 0 and args.profile:
                    n = res["throughput"][short(cipher)]["bytes"]
                    log(f"py-spy on the sshtun bastion and agent ({n // MiB} MiB each way)")
                    res["profile"] = await profile(sides["sshtun"], n, work, args.native)
                for side in sides.values():
                    await stop_agent(side)
            for side in sides.values():
                await procs.stop(side.bastion)
            res["config"]["disturbance"] = {
                "max_foreign": env.max_foreign,
                "measurements": env.runs,
                "disturbed": env.disturbed,
                "kept_disturbed": env.kept_disturbed,
            }
            kill_tree(home.proc.pid)  # the home sshd's leftover sessions
    finally:
        await finish(procs, work, args.keep)
    return res


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the sshtun bastion against OpenSSH's sshd as the bastion "
        "(ssh -J path, loopback only)."
    )
    p.add_argument("--quick", action="store_true", help="fewer rounds, smaller transfers")
    p.add_argument("--json", type=Path, help="write all results (and raw runs) to this file")
    p.add_argument("--rounds", type=int, help="throughput rounds per cipher (default 5, quick 2)")
    p.add_argument("--setup-runs", type=int, help="ssh -J true runs per setup (10, quick 4)")
    p.add_argument("--idle", type=int, help="idle agent connections (default 200)")
    p.add_argument("--mem-rounds", type=int, help="memory rounds, fresh bastions (3, quick 1)")
    p.add_argument("--concurrency", type=int, default=16, help="parallel connects (idle phase)")
    p.add_argument("--size-mib", type=int, help="fixed transfer size (default: calibrated)")
    p.add_argument(
        "--target",
        type=float,
        help="seconds per transfer for the faster setup when calibrating (default 2, quick 0.6)",
    )
    p.add_argument("--min-mib", type=int, help="smallest calibrated size (64, quick 16)")
    p.add_argument("--max-mib", type=int, help="largest calibrated size (512, quick 128)")
    p.add_argument("--probe-mib", type=int, help="calibration probe size (64, quick 16)")
    p.add_argument("--timeout", type=float, default=180, help="per transfer, seconds")
    p.add_argument(
        "--cipher",
        dest="ciphers",
        action="append",
        choices=CIPHERS,
        help="cipher(s) to measure (default: both)",
    )
    p.add_argument(
        "--kex",
        default="curve25519-sha256",
        help="KexAlgorithms for every OpenSSH hop (same for both setups); "
        "'default' leaves OpenSSH's default list",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the sshtun bastion and agent during one extra transfer",
    )
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.05,
        help="re-measure a run if processes not started by the benchmark used more than this "
        "share of all CPUs meanwhile (default 0.05)",
    )
    p.add_argument("--retries", type=int, default=3, help="re-measurements per disturbed run")
    p.add_argument(
        "--ref",
        metavar="REV",
        help="benchmark sshtunnel_mgr as committed at this git revision (exported to a temp "
        "dir) instead of the working tree",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    a = p.parse_args(argv)
    q = a.quick
    defaults = dict(
        rounds=2 if q else 5,
        setup_runs=4 if q else 10,
        idle=200,
        mem_rounds=1 if q else 3,
        target=0.6 if q else 2.0,
        min_mib=16 if q else 64,
        max_mib=128 if q else 512,
        probe_mib=16 if q else 64,
    )
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.ciphers = a.ciphers or list(CIPHERS)
    if a.ciphers[0] != CIPHERS[0] and CIPHERS[0] in a.ciphers:
        a.ciphers.remove(CIPHERS[0])
        a.ciphers.insert(0, CIPHERS[0])
    if a.kex == "default":
        a.kex = None
    bounds = dict(
        rounds=(1, 50),
        setup_runs=(0, 200),
        idle=(0, 2000),
        mem_rounds=(0, 10),
        size_mib=(1, 4096),
        max_mib=(1, 4096),
        concurrency=(1, 64),
    )
    check_bounds(p, a, bounds)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SSH or not SSHD:
        print(
            "bench_tunnel: needs OpenSSH ssh and sshd (apt-get install openssh-client "
            "openssh-server)",
            file=sys.stderr,
        )
        return 2
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    if not become_subreaper():
        print("bench_tunnel: cannot become a subreaper; CPU of other processes is overstated")
    env = environment()
    started = time.time()
    try:
        res = asyncio.run(cancellable(run_bench(args)))
    except asyncio.CancelledError:
        print(
            "bench_tunnel: interrupted; every process it started has been stopped", file=sys.stderr
        )
        return 130
    res["environment"] = env
    res["config"].update(
        quick=args.quick,
        rounds=args.rounds,
        setup_runs=args.setup_runs,
        idle=args.idle,
        mem_rounds=args.mem_rounds,
        ciphers=args.ciphers,
        kex=args.kex or "OpenSSH default",
        seconds=round(time.time() - started, 1),
    )
    table, aims = report(res)
    res["aims"] = aims
    print()
    print(
        f"sshtun bastion vs OpenSSH sshd as bastion, ssh -J path, 127.0.0.1 "
        f"({env['nproc']} CPUs: {env['cpu']}; {env['openssh'].split(',')[0]}, "
        f"asyncssh {env['asyncssh']}; kex {res['config']['kex']})"
    )
    print(f"code under test: {env['code_under_test']} (HEAD {env['git_head']})")
    print(
        f"medians of interleaved runs: {args.rounds} transfer rounds, {args.setup_runs} set-ups, "
        f"{args.mem_rounds} memory round(s) of {args.idle} idle agent connections"
    )
    dist = res["config"].get("disturbance", {})
    if dist:
        print(
            f"{dist['disturbed']} of {dist['measurements']} timed runs were disturbed by other "
            f"processes (> {dist['max_foreign']:.0%} of the CPUs) and measured again; "
            f"{dist['kept_disturbed']} kept disturbed after retries"
        )
    print()
    print(table)
    if "profile" in res:
        print()
        print(profile_report(res["profile"]))
    print()
    print(f"took {res['config']['seconds']:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0
