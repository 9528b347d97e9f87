#!/usr/bin/env python3
"""N idle agents on one sshtun bastion: its memory (every worker and the supervisor), the
time to accept and publish all N, and the ``ssh -J`` set-up to one of them, against N=0.

For each ``--workers`` value and each N of ``--counts`` (default 1000, 3000, 10000), on a
fresh ``sshtun bastion`` process (127.0.0.1, default limits except ``max_connections``,
raised to N + 100 where N passes its default; with ``--one-key`` also the per-key caps):
  1. its access file lists N agent keys, one a line (``permitlisten="idle-<i>:22"``; with
     ``--one-key`` one key for all, ``permitlisten="idle-*:22"``), the real agent's and the
     client's; a real ``sshtun up`` publishes ``homebox:22`` (the home sshd);
  2. N=0: the bastion's RSS and PSS (summed over its processes), then ``--setups`` real
     ``ssh -J homebox true`` (OpenSSH, from 127.0.0.60), timed until that ssh exits;
  3. ``--holders`` client processes (idle_holder.py) connect the N agents, at most
     ``--concurrency`` logins in flight each: agent i logs in with its own ed25519 key from
     its own source address (127.1.x.y: one address per agent, ephemeral ports spread) and
     publishes ``idle-<i>:22`` with a remote forward, as an agent does; the time from "go"
     until every holder has all its agents published is the accept time; the bastion's CPU
     meanwhile / N is its CPU per agent;
  4. after ``--settle`` s, its RSS and PSS again, then ``--setups`` ``ssh -J homebox true``
     and as many ``ssh -J idle-<random> true`` (the home sshd through a holder's forward);
     before them, the bastion's CPU over ``--idle-window`` s of rest (keepalives) in cores.
Per agent = (PSS with N - PSS at N=0) / N. ``--rounds`` repeats every point (medians,
min-max); the points are interleaved (workers alternate inside each N).

    python benchmarks/idle_agents.py                        # 1000, 3000, 10000; ~10 min
    python benchmarks/idle_agents.py --counts 100 --setups 3  # a quick look
    python benchmarks/idle_agents.py --workers 1,2 --json out.json --ref HEAD

Bounded: counts 0..20000, a fill timeout, ``--rss-cap-mib`` (the point stops above it),
every process stopped by its PID. Everything on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_tunnel import (
    LAUNCHED,
    SRC_LABEL,
    Procs,
    become_subreaper,
    cancellable,
    check_bounds,
    environment,
    finish,
    kill_tree,
    log,
    reap_orphans,
    run_client,
)
from idle_holder import agent_key
from scaling import (
    Bastion,
    check_workers,
    client_config,
    loadavg,
    raise_nofile,
    spread,
    start_agent,
    start_bastion,
)

from tests.harness import SSH, SSHD, Keys, bastion_pub, free_port, home_sshd, pub_of

HERE = Path(__file__).resolve().parent
HOLDER = [sys.executable, str(HERE / "idle_holder.py")]
CLIENT_SOURCE = "127.0.0.60"


def access_text(keys: Keys, seed: bytes, n: int, one_key: bool) -> str:
    lines = [
        f'permitlisten="homebox:22" {keys.agent.public_line}',
        f'permitopen="homebox:22,idle-*:22" {keys.client.public_line}',
    ]
    if one_key and n:
        pub = agent_key(seed, -1).export_public_key().decode().strip()
        lines.append(f'permitlisten="idle-*:22" {pub}')
    elif n:
        for i in range(n):
            pub = agent_key(seed, i).export_public_key().decode().strip()
            lines.append(f'permitlisten="idle-{i}:22" {pub} idle-{i}')
    return "\n".join(lines) + "\n"


async def setups(cfg: Path, hosts: Sequence[str], timeout: float) -> dict[str, Any]:
    """One real ``ssh -J HOST true`` per entry of ``hosts``: seconds of the successful ones,
    failures with ssh's last line."""
    assert SSH is not None
    ok: list[float] = []
    errors: list[str] = []
    for host in hosts:
        run = await run_client(SSH, "-F", str(cfg), host, "true", timeout=timeout)
        reap_orphans()
        if run.returncode == 0:
            ok.append(run.seconds)
        else:
            lines = run.stderr.strip().splitlines()
            errors.append(f"{host}: {lines[-1] if lines else f'exit {run.returncode}'}")
    return {"seconds": ok, "errors": errors, "tried": len(hosts)}


async def wait_route(cfg: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = await setups(cfg, ["homebox"], 60)
        if last["seconds"]:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"homebox not reachable through the bastion: {last.get('errors')}")


async def sample_mem(bastion: Bastion, n: int = 3) -> dict[str, int]:
    mems = []
    for _ in range(n):
        mems.append(bastion.mem())
        await asyncio.sleep(0.3)
    mems.sort(key=lambda m: m.pss_kib)
    m = mems[len(mems) // 2]
    return {"rss_kib": m.rss_kib, "pss_kib": m.pss_kib, "processes": m.processes}


async def read_json_line(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError(f"idle holder {proc.pid} exited ({await proc.wait()})")
    obj = json.loads(line)
    assert isinstance(obj, dict)
    return obj


async def fill(
    procs: Procs,
    bastion: Bastion,
    keys: Keys,
    home_port: int,
    seed: bytes,
    n: int,
    args: argparse.Namespace,
) -> tuple[list[asyncio.subprocess.Process], dict[str, Any]]:
    """Start the holders, let them connect and publish N agents; the accept time, the
    bastion's CPU meanwhile, its peak memory while filling."""
    holders: list[asyncio.subprocess.Process] = []
    h = max(1, min(args.holders, n))
    share = [n // h + (1 if k < n % h else 0) for k in range(h)]
    first = 0
    for count in share:
        argv = [
            *HOLDER,
            *("--port", str(bastion.port), "--host-key", bastion_pub(keys)),
            *("--home-port", str(home_port), "--seed", seed.hex()),
            *("--first", str(first), "--count", str(count)),
            *("--concurrency", str(args.concurrency)),
            *(["--one-key"] if args.one_key else []),
        ]
        first += count
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=procs.cwd
        )
        procs.live.append(proc)
        LAUNCHED.add(proc.pid)
        holders.append(proc)
    for proc in holders:
        await read_json_line(proc, 120)  # {"ready": count}: keys derived
    cpu0 = bastion.cpu()
    t0 = time.perf_counter()
    for proc in holders:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    deadline = time.monotonic() + args.fill_timeout
    done: dict[int, dict[str, Any]] = {}
    progress: dict[int, int] = {}
    peak_pss = 0
    stopped = ""
    next_log = time.monotonic() + 10
    while len(done) < len(holders):
        for k, proc in enumerate(holders):
            if k in done:
                continue
            try:
                msg = await read_json_line(proc, 0.5)
            except TimeoutError:
                continue
            if "done" in msg:
                done[k] = msg
                done[k]["at"] = time.perf_counter() - t0
            else:
                progress[k] = int(msg.get("progress", 0))
        peak_pss = max(peak_pss, bastion.mem().pss_kib)
        if peak_pss > args.rss_cap_mib * 1024:
            stopped = f"bastion PSS above {args.rss_cap_mib} MiB"
        elif time.monotonic() > deadline:
            stopped = f"not all published in {args.fill_timeout:.0f}s"
        elif bastion.proc.returncode is not None:
            stopped = f"bastion exited {bastion.proc.returncode}"
        if stopped:
            break
        if progress and time.monotonic() > next_log:
            next_log = time.monotonic() + 10
            log(f"  {sum(progress.values())}/{n} published")
    took = max((d["at"] for d in done.values()), default=time.perf_counter() - t0)
    cpu = bastion.cpu() - cpu0
    published = sum(int(d["done"]) for d in done.values())
    errors: dict[str, int] = {}
    for d in done.values():
        for e, c in d.get("errors", {}).items():
            errors[e] = errors.get(e, 0) + c
    return holders, {
        "published": published,
        "failed": sum(int(d["failed"]) for d in done.values()),
        "retries": sum(int(d["retries"]) for d in done.values()),
        "errors": errors,
        "accept_seconds": took,
        "bastion_cpu_seconds": cpu,
        "peak_pss_kib": peak_pss,
        "stopped": stopped,
    }


async def stop_holders(procs: Procs, holders: Sequence[asyncio.subprocess.Process]) -> None:
    for proc in holders:
        if proc.stdin is not None and proc.returncode is None:
            with contextlib.suppress(ConnectionError):
                proc.stdin.close()
    for proc in holders:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 30)
        await procs.stop(proc)


async def point(
    procs: Procs, keys: Keys, home_port: int, work: Path, w: int, n: int, r: int, args: Any
) -> dict[str, Any]:
    """One fresh bastion with N idle agents and ``w`` workers."""
    seed = secrets.token_bytes(16)
    d = work / f"w{w}-n{n}-r{r}"
    limits: dict[str, Any] = {"max_connections": max(10000, n + 100)}
    if args.one_key:
        limits["max_connections_per_key"] = max(128, n + 10)
    port = free_port()
    out: dict[str, Any] = {"workers": w, "n": n, "round": r, "load_before": os.getloadavg()}
    bastion = await start_bastion(
        procs, keys, d, port, access_text(keys, seed, n, args.one_key), w, limits
    )
    agent = await start_agent(procs, keys, d, port, [("homebox", 22, f"127.0.0.1:{home_port}")], 0)
    holders: list[asyncio.subprocess.Process] = []
    try:
        cfg = client_config(
            d,
            keys,
            pub_of(keys.home_host),
            bastion_pub(keys),
            port,
            CLIENT_SOURCE,
            {"homebox": ("homebox", 22), "idle-*": ("idle-*", 22)},
        )
        await wait_route(cfg)
        await asyncio.sleep(1.0)
        out["start"] = await sample_mem(bastion)
        out["setup_n0"] = await setups(cfg, ["homebox"] * args.setups, args.ssh_timeout)
        if n:
            holders, out["fill"] = await fill(procs, bastion, keys, home_port, seed, n, args)
            f = out["fill"]
            log(
                f"  w={w} n={n}: {f['published']}/{n} published in "
                f"{f['accept_seconds']:.1f}s ({f['failed']} failed, {f['retries']} retries)"
                + (f"; STOPPED: {f['stopped']}" if f["stopped"] else "")
            )
            await asyncio.sleep(args.settle)
        out["loaded"] = await sample_mem(bastion)
        cpu0, t0 = bastion.cpu(), time.monotonic()
        await asyncio.sleep(args.idle_window)  # keepalives only: what N idle agents cost
        out["idle_cores"] = (bastion.cpu() - cpu0) / (time.monotonic() - t0)
        out["setup_n"] = await setups(cfg, ["homebox"] * args.setups, args.ssh_timeout)
        idle = [f"idle-{random.randrange(n)}" for _ in range(args.setups)] if n else []
        out["setup_idle"] = await setups(cfg, idle, args.ssh_timeout)
        out["bastion_alive"] = bastion.proc.returncode is None
    finally:
        await stop_holders(procs, holders)
        await procs.stop(agent)
        await procs.stop(bastion.proc)
    out["load_after"] = os.getloadavg()
    return out


def per_agent(p: dict[str, Any], key: str) -> float:
    n = p["n"]
    return (p["loaded"][key] - p["start"][key]) / n if n else float("nan")


def report(points: list[dict[str, Any]], args: argparse.Namespace, env: dict[str, Any]) -> None:
    print(
        f"\nidle agents on one sshtun bastion: {env['cpu']} x{env['nproc']}, {env['openssh']}, "
        f"asyncssh {env['asyncssh']}; code: {SRC_LABEL}; keys: "
        + ("one shared key" if args.one_key else "one key per agent")
        + f"; {args.holders} holder processes, {args.concurrency} logins in flight each"
    )
    print(
        "\n| workers | N idle agents | bastion processes | RSS / PSS at N=0 (MiB) "
        "| RSS / PSS with N (MiB) | per agent, PSS (KiB) | accept + publish all N (s) "
        "| bastion CPU per agent (ms) | bastion cores, idle with N | `ssh -J` set-up at N=0 (ms) "
        "| with N (ms) | to an idle agent (ms) | failed |"
    )
    print("|" + "---|" * 13)
    keys = sorted({(p["workers"], p["n"]) for p in points})
    for w, n in keys:
        ps = [p for p in points if (p["workers"], p["n"]) == (w, n)]

        def col(sec: str, k: str, ps: list[dict[str, Any]] = ps) -> list[float]:
            return [p[sec][k] / 1024 for p in ps]

        def secs(sec: str, ps: list[dict[str, Any]] = ps) -> list[float]:
            return [x for p in ps for x in p[sec]["seconds"]]

        fills = [p["fill"] for p in ps if "fill" in p]
        failed = sum(f["failed"] for f in fills) + sum(
            len(p[s]["errors"]) for p in ps for s in ("setup_n0", "setup_n", "setup_idle")
        )
        print(
            f"| {w} | {n} | {ps[0]['loaded']['processes']} "
            f"| {spread(col('start', 'rss_kib'))} / {spread(col('start', 'pss_kib'))} "
            f"| {spread(col('loaded', 'rss_kib'))} / {spread(col('loaded', 'pss_kib'))} "
            f"| {spread([per_agent(p, 'pss_kib') for p in ps])} "
            f"| {spread([f['accept_seconds'] for f in fills])} "
            f"| {spread([f['bastion_cpu_seconds'] / n for f in fills if n], 2, 1000)} "
            f"| {spread([p['idle_cores'] for p in ps], 2)} "
            f"| {spread(secs('setup_n0'), 0, 1000)} | {spread(secs('setup_n'), 0, 1000)} "
            f"| {spread(secs('setup_idle'), 0, 1000)} | {failed} |"
        )
    print(
        "\nmedian (min-max) over rounds; set-ups: every run of the point(s). RSS/PSS summed "
        "over the bastion's processes (/proc/PID/status VmRSS, /proc/PID/smaps_rollup Pss)."
    )
    for p in points:
        f = p.get("fill", {})
        notes = [f"STOPPED: {f['stopped']}"] if f.get("stopped") else []
        notes += [f"{c}x {e}" for e, c in f.get("errors", {}).items()]
        notes += [e for s in ("setup_n0", "setup_n", "setup_idle") for e in p[s]["errors"]]
        if notes:
            print(f"  w={p['workers']} n={p['n']} round {p['round']}: " + "; ".join(notes[:8]))


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="sshtun-idle-"))
    procs = Procs(work)
    points: list[dict[str, Any]] = []
    try:
        keys = Keys.create(work / "keys")
        async with home_sshd(keys, work / "home") as home:
            LAUNCHED.add(home.proc.pid)
            for r in range(args.rounds):
                for i, n in enumerate(args.counts):
                    order = args.workers if (r + i) % 2 == 0 else list(reversed(args.workers))
                    for w in order:
                        log(f"round {r + 1}/{args.rounds}: workers={w}, N={n}; load {loadavg()}")
                        points.append(await point(procs, keys, home.port, work, w, n, r, args))
            kill_tree(home.proc.pid)
    finally:
        await finish(procs, work, args.keep)
    return points


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="N idle agents on one sshtun bastion.")
    p.add_argument("--counts", type=int_list, default=[1000, 3000, 10000], help="N, comma list")
    p.add_argument("--workers", type=int_list, default=[1], help="e.g. 1,2 (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="repeat every point (default 1)")
    p.add_argument("--holders", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--concurrency", type=int, default=16, help="logins in flight per holder")
    p.add_argument("--one-key", action="store_true", help="one agent key for all N")
    p.add_argument("--setups", type=int, default=7, help="ssh -J set-ups per point (7)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--idle-window", type=float, default=5.0, help="idle CPU window (s)")
    p.add_argument("--ssh-timeout", type=float, default=90.0, help="per ssh -J")
    p.add_argument("--fill-timeout", type=float, default=900.0, help="per point (900 s)")
    p.add_argument("--rss-cap-mib", type=int, default=3072, help="stop a point above this PSS")
    p.add_argument("--json", type=Path, help="also write every point here")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    p.add_argument("--ref", metavar="REV", help="measure sshtunnel_mgr as committed at REV")
    a = p.parse_args(argv)
    if not a.counts or any(not 0 <= n <= 20000 for n in a.counts):
        p.error("--counts: each 0..20000")
    if not a.workers or any(not 1 <= w <= 8 for w in a.workers):
        p.error("--workers: each 1..8")
    bounds = dict(
        rounds=(1, 10),
        holders=(1, 8),
        concurrency=(1, 64),
        setups=(1, 50),
        settle=(0, 60),
        idle_window=(0.5, 120),
        fill_timeout=(10, 3600),
    )
    check_bounds(p, a, bounds)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SSH or not SSHD:
        print("idle_agents: needs OpenSSH ssh and sshd", file=sys.stderr)
        return 2
    why = check_workers(args.workers)
    if why:
        print(f"idle_agents: {why}", file=sys.stderr)
        return 2
    limits = raise_nofile(max(args.counts) + 1024)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    become_subreaper()
    env = environment()
    load_before = loadavg()
    started = time.time()
    try:
        points = asyncio.run(cancellable(run(args)))
    except asyncio.CancelledError:
        print("idle_agents: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    report(points, args, env)
    print(
        f"load average (1/5/15 min) before {load_before}, after {loadavg()}; "
        f"RLIMIT_NOFILE {limits[0]}; took {time.time() - started:.0f}s"
    )
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "points": points}, indent=1) + "\n")
    ok = all(
        p["bastion_alive"] and not p.get("fill", {}).get("stopped") and not p["setup_n"]["errors"]
        for p in points
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
