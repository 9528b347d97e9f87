#!/usr/bin/env python3
"""CPU seconds per GiB of the bastion and of the agent, one stream, sshtun vs OpenSSH.

Two setups, the same home sshd, keys, client and cipher on every hop:

  sshtun   client ``ssh -J`` -> ``sshtun bastion`` <- ``sshtun up`` (cipher narrowed to the
           one measured, as in bench_tunnel.py)
  openssh  client ``ssh -J`` -> OpenSSH ``sshd`` <- ``ssh -N -R`` (routes by 127.0.0.1:P)

One bulk stream at a time, up (``head -c N /dev/zero | ssh homebox 'wc -c'``) and down
(``ssh homebox 'head -c N /dev/zero' | wc -c``), for aes128-gcm and chacha20-poly1305.
Per run: the bastion's CPU (utime+stime from /proc/PID/stat: sshtun's one process; for
sshd the listener and every per-connection child, reaped ones through cutime) and the
agent's, divided by the bytes moved (the kernel counts in 10 ms ticks: 128 MiB gives a
resolution of 0.08 s/GiB). Rounds are interleaved (the setups rotate and the two
directions alternate their order every round); the report gives the median, the min-max
of the runs and the ratio sshtun / OpenSSH of the medians, with the load average before
and after. A run during which other processes used more than ``--max-foreign`` of the
CPUs is measured again up to ``--retries`` times (bench_tunnel.py's ``guarded``); the
count is printed.

``--tree NAME=DIR`` adds another sshtun setup whose bastion and agent import
``sshtunnel_mgr`` from DIR (a source tree, e.g. a ``git archive`` with a change applied),
measured in the same rounds: a change is compared with the code before it under the same
load, not in a later run. The configs are written by this checkout's tests/harness.py, so
DIR must accept them: make it from the revision given to ``--ref`` plus the change.

    python benchmarks/cpu_per_byte.py                      # 5 rounds, 128 MiB, both ciphers
    python benchmarks/cpu_per_byte.py --rounds 3 --size-mib 64 --json out.json
    python benchmarks/cpu_per_byte.py --ref HEAD --tree new=/tmp/tree   # before / after
    python benchmarks/cpu_per_byte.py --profile DIR --native  # + py-spy of the sshtun side

Bounded: ``--rounds`` (1..30), ``--budget`` seconds (no new round starts after it), a
timeout per transfer. Everything on 127.0.0.1; every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench_tunnel import (
    CIPHERS,
    DIRECTIONS,
    LAUNCHED,
    SRC_LABEL,
    Env,
    GiB,
    MiB,
    Procs,
    Run,
    become_subreaper,
    cancellable,
    descendants,
    environment,
    guarded,
    log,
    negotiated_ciphers,
    profile,
    profile_report,
    short,
    start_agent,
    start_ref_bastion,
    start_sshtun_bastion,
    stop_agent,
    transfer,
)

from tests.harness import SSH, SSHD, Keys, home_sshd

AIM_BASTION = 1.3  # sshtun bastion CPU/GiB <= 1.3 x sshd's
AIM_AGENT = 1.5  # sshtun agent CPU/GiB <= 1.5 x ssh -R's


@contextlib.contextmanager
def imports_from(tree: Path | None) -> Iterator[None]:
    """sshtun processes started inside import sshtunnel_mgr from ``tree`` (None: as set)."""
    if tree is None:
        yield
        return
    saved = os.environ["PYTHONPATH"]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(tree), saved])
    try:
        yield
    finally:
        os.environ["PYTHONPATH"] = saved


def loadavg() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def spread(xs: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sshtun-cpb-"))
    procs = Procs(work)
    keys = Keys.create(work / "keys")
    nbytes = args.size_mib * MiB
    deadline = time.monotonic() + args.budget
    res: dict[str, Any] = {"bytes": nbytes, "runs": {}, "negotiated": {}}
    try:
        async with home_sshd(keys, work / "home") as home:
            LAUNCHED.add(home.proc.pid)
            env = Env(work, keys, home.port, procs, args.kex, args.max_foreign, args.retries)
            trees: dict[str, Path | None] = {"sshtun": None}
            trees.update({f"sshtun:{name}": Path(path).resolve() for name, path in args.trees})
            sides = {}
            for kind, tree in trees.items():
                with imports_from(tree):
                    sides[kind] = await start_sshtun_bastion(env)
            sides["openssh"] = await start_ref_bastion(env)
            kinds = list(sides)
            res["kinds"] = kinds
            res["trees"] = {k: str(v) if v else SRC_LABEL for k, v in trees.items()}
            for cipher in args.ciphers:
                c = short(cipher)
                for kind, side in sides.items():
                    with imports_from(trees.get(kind)):
                        await start_agent(side, cipher)
                for name, side in sides.items():
                    hops = await negotiated_ciphers(side)
                    if not hops or any(h != cipher for h in hops):
                        raise RuntimeError(f"{name}: negotiated {hops}, wanted {cipher}")
                    res["negotiated"][f"{c} {name}"] = hops
                for side in sides.values():  # warm-up, not counted
                    for direction in DIRECTIONS:
                        await transfer(side, direction, min(nbytes, 16 * MiB), args.timeout)
                runs: dict[str, dict[str, list[Run]]] = {
                    k: {d: [] for d in DIRECTIONS} for k in sides
                }
                for r in range(args.rounds):
                    if r and time.monotonic() > deadline:
                        log(f"{c}: budget of {args.budget:.0f}s spent after {r} rounds")
                        break
                    order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
                    order = order if r % 2 == 0 else order[::-1]
                    directions = DIRECTIONS if r % 2 == 0 else DIRECTIONS[::-1]
                    for direction in directions:
                        for name in order:
                            run = await guarded(
                                env,
                                f"{c} {name} {direction}",
                                partial(transfer, sides[name], direction, nbytes, args.timeout),
                            )
                            runs[name][direction].append(run)
                            gib = nbytes / GiB
                            log(
                                f"{c} round {r + 1} {name:7s} {direction:8s} "
                                f"bastion {run.bastion_cpu / gib:5.2f} s/GiB, agent "
                                f"{run.agent_cpu / gib:5.2f} s/GiB, "
                                f"{args.size_mib / run.seconds:5.1f} MiB/s "
                                f"(other processes {run.foreign:.0%}, load {loadavg()})"
                            )
                res["runs"][c] = {
                    name: {
                        d: [
                            {
                                "seconds": x.seconds,
                                "bastion_cpu": x.bastion_cpu,
                                "agent_cpu": x.agent_cpu,
                                "foreign": round(x.foreign, 3),
                                "attempts": x.attempts,
                            }
                            for x in rs
                        ]
                        for d, rs in by_dir.items()
                    }
                    for name, by_dir in runs.items()
                }
                if args.profile is not None and cipher == args.ciphers[0]:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    log(f"py-spy on the sshtun bastion and agent ({args.size_mib} MiB each way)")
                    res["profile"] = await profile(
                        sides[args.profile_kind], nbytes, args.profile, args.native
                    )
                for side in sides.values():
                    await stop_agent(side)
            for side in sides.values():
                await procs.stop(side.bastion)
            res["disturbance"] = {
                "measurements": env.runs,
                "disturbed": env.disturbed,
                "kept_disturbed": env.kept_disturbed,
            }
            for pid in descendants(home.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    finally:
        await procs.stop_all()
        if args.keep:
            log(f"kept work dir {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return res


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """Per cipher and direction: each setup's medians and spread, and each sshtun
    setup's ratios to OpenSSH (of the medians)."""
    gib = res["bytes"] / GiB
    mib = res["bytes"] / MiB
    out: dict[str, Any] = {}
    for c, by_kind in res["runs"].items():
        for d in DIRECTIONS:
            row: dict[str, Any] = {}
            for kind in res["kinds"]:
                rs = by_kind[kind][d]
                if rs:
                    row[kind] = {
                        "bastion_s_per_gib": spread([x["bastion_cpu"] / gib for x in rs]),
                        "agent_s_per_gib": spread([x["agent_cpu"] / gib for x in rs]),
                        "mib_s": spread([mib / x["seconds"] for x in rs]),
                    }
            ref = row.get("openssh")
            for kind, cells in row.items():
                if kind != "openssh" and ref is not None:
                    cells["ratio"] = {
                        what: cells[what]["median"] / ref[what]["median"]
                        for what in ("bastion_s_per_gib", "agent_s_per_gib", "mib_s")
                    }
            out[f"{c} {d}"] = row
    return out


def table(summary: dict[str, Any]) -> str:
    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"

    lines = [
        "| stream | setup | bastion s/GiB | ratio (aim <= 1.3) | agent s/GiB "
        "| ratio (aim <= 1.5) | MiB/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in summary.items():
        for kind, cells in row.items():
            ratio = cells.get("ratio")
            b = a = ""
            if ratio is not None:
                rb, ra = ratio["bastion_s_per_gib"], ratio["agent_s_per_gib"]
                b = f"{rb:.2f} {'PASS' if rb <= AIM_BASTION else 'FAIL'}"
                a = f"{ra:.2f} {'PASS' if ra <= AIM_AGENT else 'FAIL'}"
            lines.append(
                f"| {key} | {kind} | {cell(cells['bastion_s_per_gib'])} | {b} "
                f"| {cell(cells['agent_s_per_gib'])} | {a} | {cells['mib_s']['median']:.0f} |"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (1..30)")
    p.add_argument("--size-mib", type=int, default=128, help="bytes per stream (16..1024 MiB)")
    p.add_argument("--budget", type=float, default=900, help="seconds; no new round after it")
    p.add_argument("--timeout", type=float, default=180, help="per transfer, seconds")
    p.add_argument("--cipher", dest="ciphers", action="append", choices=CIPHERS)
    p.add_argument("--kex", default="curve25519-sha256", help="KexAlgorithms on every hop")
    p.add_argument("--max-foreign", type=float, default=0.05)
    p.add_argument("--retries", type=int, default=2)
    p.add_argument(
        "--tree",
        dest="trees",
        action="append",
        default=[],
        type=lambda s: tuple(s.split("=", 1)),
        metavar="NAME=DIR",
        help="also measure the sshtun code in DIR (a source tree), interleaved, as sshtun:NAME",
    )
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy output directory")
    p.add_argument("--profile-kind", default="sshtun", help="which sshtun setup to profile")
    p.add_argument("--native", action="store_true", help="py-spy --native")
    p.add_argument("--json", type=Path)
    p.add_argument("--ref", metavar="REV", help="measure this git revision (see bench_tunnel)")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args(argv)
    if not 1 <= a.rounds <= 30 or not 16 <= a.size_mib <= 1024:
        p.error("--rounds must be 1..30 and --size-mib 16..1024")
    a.ciphers = a.ciphers or list(CIPHERS)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SSH or not SSHD:
        print("cpu_per_byte: needs OpenSSH ssh and sshd", file=sys.stderr)
        return 2
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    become_subreaper()
    env = environment()
    load_before = loadavg()
    started = time.time()
    try:
        res = asyncio.run(cancellable(measure(args)))
    except asyncio.CancelledError:
        print("cpu_per_byte: interrupted; its processes are stopped", file=sys.stderr)
        return 130
    res["load_before"], res["load_after"] = load_before, loadavg()
    res["environment"] = env
    res["summary"] = summarize(res)
    dist = res["disturbance"]
    print()
    print(
        f"CPU per GiB, one stream, ssh -J path on 127.0.0.1; code {SRC_LABEL} "
        f"(HEAD {env['git_head']}); {env['nproc']} CPUs; asyncssh {env['asyncssh']}"
    )
    print(
        f"{args.size_mib} MiB per stream, medians (min-max) of up to {args.rounds} interleaved "
        f"rounds; load average {res['load_before']} before, {res['load_after']} after; "
        f"other processes used more than {args.max_foreign:.0%} of the CPUs during "
        f"{dist['disturbed']} of {dist['measurements']} runs ({args.retries} retries each): "
        f"{dist['kept_disturbed']} kept disturbed; took {time.time() - started:.0f}s"
    )
    print()
    print(table(res["summary"]))
    if "profile" in res:
        print()
        print(profile_report(res["profile"]))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
