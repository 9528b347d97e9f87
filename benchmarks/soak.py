#!/usr/bin/env python3
"""A bounded soak of the sshtun bastion: does its memory and its file-descriptor count stay
flat while real clients come and go, agents are killed and restarted, the config is
reloaded and clients leave half-way through opening a channel?

For ``--minutes`` (default 10), on 127.0.0.0/8 (scene.py: the bastion with its default
limits, ``--agents`` sshtun agents, optionally a stock ``ssh -N -R`` agent, a home sshd and
a service that streams as fast as it can):
  - a real ``ssh -J … true`` every ``--client-every`` s, to each published name in turn;
  - every ``--restart-every`` s one agent is killed by its PID (SIGTERM and SIGKILL in
    turn) and started again;
  - every ``--reload-every`` s ``sshtun reload`` on the bastion;
  - every ``--abort-every`` s ``--abort-count`` clients ask for a channel to the streaming
    service and leave before/while it opens;
  - every ``--sample`` s: the bastion's RSS and open FDs (/proc/PID/fd) and the home-side
    connections still open.
Prints the time series and a summary: first-minute vs last-minute medians, the slope, and
whether each stays flat. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_tunnel import (
    LAUNCHED,
    Procs,
    become_subreaper,
    cancellable,
    check_bounds,
    environment,
    finish,
    kill_tree,
    log,
    reap_orphans,
)
from scene import (
    Side,
    aborted_opens,
    add_stock_agent,
    established,
    restart_agent,
    ssh_true,
    sshtun_reload,
    start_scene,
    start_sshtun,
    stop_side,
)

from tests.harness import SSH, SSHD, Keys, home_sshd

CLIENT_SOURCES = [f"127.0.0.{i}" for i in range(40, 45)]
ABORT_SOURCE = "127.0.0.80"
MAX_CLIENTS_IN_FLIGHT = 4


@dataclass
class Tally:
    ssh_ok: int = 0
    ssh_total: int = 0
    ssh_skipped: int = 0  # the previous ones were still running
    failures: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    reloads_ok: int = 0
    reloads: int = 0
    aborted: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)
    stopped_early: str = ""


async def every(seconds: float, end: float, action: Any, first: float | None = None) -> None:
    """Run ``action()`` every ``seconds`` until the monotonic time ``end``."""
    loop = asyncio.get_running_loop()
    at = loop.time() + (seconds if first is None else first)
    while at < end:
        await asyncio.sleep(max(0.0, at - loop.time()))
        await action()
        at += seconds
        while at < loop.time():  # an action that overran: skip the missed beats
            at += seconds


async def soak(side: Side, args: argparse.Namespace, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = t0 + args.minutes * 60
    stop = asyncio.Event()
    in_flight: set[asyncio.Task[None]] = set()
    names = [t for t in side.targets if t != "stream"]
    target_cycle = itertools.cycle(names)
    source_cycle = itertools.cycle(CLIENT_SOURCES)
    agent_cycle = itertools.cycle(range(len(side.agents)))
    signals = itertools.cycle([signal.SIGTERM, signal.SIGKILL])

    async def client() -> None:
        if len(in_flight) >= MAX_CLIENTS_IN_FLIGHT:
            tally.ssh_skipped += 1
            return

        async def one(target: str, source: str) -> None:
            login = await ssh_true(side, source, target, timeout=args.ssh_timeout)
            tally.ssh_total += 1
            tally.ssh_ok += login.ok
            if not login.ok:
                tally.failures[f"{target}: {login.error}"] += 1

        task = asyncio.create_task(one(next(target_cycle), next(source_cycle)))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    async def restart() -> None:
        i, sig = next(agent_cycle), next(signals)
        log(f"restart agent {i} (pid {side.agents[i].pid}, {signal.Signals(sig).name})")
        await restart_agent(side, i, sig)
        tally.restarts += 1

    async def reload() -> None:
        assert side.bastion_cfg is not None
        tally.reloads += 1
        tally.reloads_ok += await sshtun_reload(side.bastion_cfg)

    async def abort() -> None:
        tally.aborted += await aborted_opens(side, args.abort_count, ABORT_SOURCE)

    async def sample() -> None:
        mem = side.mem()
        row = {
            "t": round(loop.time() - t0, 1),
            "rss_mib": round(mem.rss_kib / 1024, 1),
            "fds": side.fds(),
            "home_open": established(side.scene.stream_port),
            "agents_up": sum(a.returncode is None for a in side.agents),
            "ssh_ok": tally.ssh_ok,
            "ssh_total": tally.ssh_total,
            "restarts": tally.restarts,
            "reloads": tally.reloads_ok,
            "aborted": tally.aborted,
        }
        tally.samples.append(row)
        log(" ".join(f"{k}={v}" for k, v in row.items()))
        if side.bastion.returncode is not None:
            tally.stopped_early = f"the bastion exited ({side.bastion.returncode})"
            stop.set()
        elif row["rss_mib"] > args.rss_cap_mib:
            tally.stopped_early = f"bastion RSS above {args.rss_cap_mib} MiB"
            stop.set()
        reap_orphans()

    loops = [
        every(args.sample, end, sample, first=0.0),
        every(args.client_every, end, client),
        every(args.restart_every, end, restart),
        every(args.reload_every, end, reload),
        every(args.abort_every, end, abort, first=args.abort_every / 2),
    ]
    tasks = [asyncio.create_task(x) for x in loops]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper], timeout=max(0.0, end - loop.time()))
    stop.set()
    await stopper
    for task in tasks:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            tally.stopped_early = tally.stopped_early or f"soak loop failed: {result!r}"
            log(f"soak loop failed: {result!r}")
    if in_flight:
        await asyncio.wait(in_flight, timeout=args.ssh_timeout + 5)
    await sample()


# The summary ----------------------------------------------------------------------------------
def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (per minute) of (t seconds, value) points."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] / 60 for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def summarize(tally: Tally, minutes: float) -> dict[str, Any]:
    rows = tally.samples
    last_t = rows[-1]["t"] if rows else 0.0
    first = [r for r in rows if r["t"] < 60]
    last = [r for r in rows if r["t"] >= max(last_t - 60, 60)] or rows[-1:]
    out: dict[str, Any] = {}
    for key, allowed in (("rss_mib", None), ("fds", 5.0), ("home_open", 0.0)):
        a = statistics.median(r[key] for r in first) if first else 0.0
        b = statistics.median(r[key] for r in last) if last else 0.0
        limit = max(5.0, 0.10 * a) if allowed is None else allowed
        out[key] = {
            "first_minute": a,
            "last_minute": b,
            "growth": round(b - a, 1),
            "slope_per_min": round(slope_per_min([(r["t"], r[key]) for r in rows]), 2),
            "allowed_growth": limit,
            # Home connections are not allowed to pile up at all: none may stay open.
            "flat": (b if key == "home_open" else b - a) <= limit,
        }
    return out


def agent_count(args: argparse.Namespace) -> int:
    return args.agents + (1 if args.stock_agent else 0)


def print_report(
    tally: Tally, summary: dict[str, Any], args: argparse.Namespace, env: dict[str, Any]
) -> None:
    print()
    print(
        f"sshtun bastion soak, {args.minutes:g} min on 127.0.0.0/8 ({env['nproc']} CPUs: "
        f"{env['cpu']}; asyncssh {env['asyncssh']}); code under test: {env['code_under_test']} "
        f"(HEAD {env['git_head']})"
    )
    print(
        f"{args.agents} sshtun agent(s)"
        + (" + a stock ssh -R agent" if args.stock_agent else "")
        + f"; ssh -J every {args.client_every:g} s, an agent restart every "
        f"{args.restart_every:g} s, sshtun reload every {args.reload_every:g} s, "
        f"{args.abort_count} aborted opens every {args.abort_every:g} s; sample every "
        f"{args.sample:g} s"
    )
    print()
    print(
        "| t (s) | RSS (MiB) | FDs | home conns open | agent processes up | ssh -J ok/total "
        "| restarts | reloads |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in tally.samples:
        print(
            f"| {r['t']:.0f} | {r['rss_mib']:.1f} | {r['fds']:.0f} | {r['home_open']:.0f} | "
            f"{r['agents_up']:.0f}/{agent_count(args)} | "
            f"{r['ssh_ok']:.0f}/{r['ssh_total']:.0f} | {r['restarts']:.0f} | {r['reloads']:.0f} |"
        )
    print()
    print("| series | first minute (median) | last minute (median) | growth | slope/min | flat? |")
    print("|---|---|---|---|---|---|")
    labels = {"rss_mib": "RSS (MiB)", "fds": "open FDs", "home_open": "home conns open"}
    for key, s in summary.items():
        print(
            f"| {labels[key]} | {s['first_minute']:.1f} | {s['last_minute']:.1f} | "
            f"{s['growth']:+.1f} (allowed {s['allowed_growth']:.1f}) | "
            f"{s['slope_per_min']:+.2f} | {'yes' if s['flat'] else 'NO'} |"
        )
    print()
    print(
        f"ssh -J: {tally.ssh_ok}/{tally.ssh_total} ok ({tally.ssh_skipped} skipped while "
        f"{MAX_CLIENTS_IN_FLIGHT} were running); agent restarts {tally.restarts}; reloads "
        f"{tally.reloads_ok}/{tally.reloads} ok; aborted opens sent {tally.aborted}"
    )
    for what, n in tally.failures.most_common(5):
        print(f"  failed {n}x: {what}")
    if tally.stopped_early:
        print(f"STOPPED EARLY: {tally.stopped_early}")
    verdict = all(s["flat"] for s in summary.values()) and not tally.stopped_early
    print(f"RSS and FDs flat: {'yes' if verdict else 'NO'}")


async def run_soak(args: argparse.Namespace) -> Tally:
    work = Path(tempfile.mkdtemp(prefix="sshtun-soak-"))
    procs = Procs(work)
    tally = Tally()
    try:
        keys = Keys.create(work / "keys")
        async with home_sshd(keys, work / "home") as home:
            LAUNCHED.add(home.proc.pid)
            scene = await start_scene(work, procs, keys, home.port)
            side = await start_sshtun(scene, agents=args.agents)
            try:
                if args.stock_agent:
                    await add_stock_agent(side)
                log(
                    f"bastion pid {side.bastion.pid} :{side.port}, agents "
                    f"{[a.pid for a in side.agents]}, names {sorted(side.targets)}; work {work}"
                )
                await soak(side, args, tally)
            finally:
                await stop_side(side)
            kill_tree(home.proc.pid)  # the home sshd's leftover sessions
    finally:
        await finish(procs, work, args.keep)
    return tally


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A bounded soak of the sshtun bastion.")
    p.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--agents", type=int, default=3, help="sshtun agents (default 3)")
    p.add_argument("--stock-agent", action="store_true", help="also a stock ssh -R agent")
    p.add_argument("--client-every", type=float, default=2.0, help="seconds between ssh -J")
    p.add_argument("--restart-every", type=float, default=60.0, help="agent restarts")
    p.add_argument("--reload-every", type=float, default=45.0, help="sshtun reload")
    p.add_argument("--abort-every", type=float, default=30.0, help="aborted-open waves")
    p.add_argument("--abort-count", type=int, default=5, help="aborted opens per wave")
    p.add_argument("--ssh-timeout", type=float, default=60.0, help="per ssh -J")
    p.add_argument("--rss-cap-mib", type=int, default=2048, help="stop early above this RSS")
    p.add_argument("--json", type=Path, help="also write the samples and summary here")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    p.add_argument("--ref", metavar="REV", help="soak sshtunnel_mgr as committed at REV")
    a = p.parse_args(argv)
    bounds = dict(
        minutes=(0.5, 240),
        sample=(0.5, 120),
        agents=(1, 20),
        client_every=(0.2, 600),
        restart_every=(5, 3600),
        reload_every=(5, 3600),
        abort_every=(1, 3600),
        abort_count=(0, 100),
    )
    check_bounds(p, a, bounds)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SSH or not SSHD:
        print("soak: needs OpenSSH ssh and sshd", file=sys.stderr)
        return 2
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    become_subreaper()
    env = environment()
    load_before = os.getloadavg()
    started = time.time()
    try:
        tally = asyncio.run(cancellable(run_soak(args)))
    except asyncio.CancelledError:
        print("soak: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    summary = summarize(tally, args.minutes)
    print_report(tally, summary, args, env)
    load_after = os.getloadavg()
    print(
        f"load average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{' '.join(f'{x:.2f}' for x in load_after)}; took {time.time() - started:.0f}s"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"environment": env, "samples": tally.samples, "summary": summary}, indent=1)
            + "\n"
        )
    flat = all(s["flat"] for s in summary.values()) and not tally.stopped_early
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
