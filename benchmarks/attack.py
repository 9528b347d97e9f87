#!/usr/bin/env python3
"""The bastion under attack: sshtun vs OpenSSH's sshd as the bastion, the same attack on both.

Each measure starts a fresh bastion and agent for each side (scene.py: stock limits on
both; everything on 127.0.0.0/8), in alternating order, ``--repeat`` times:

  a. memory under aborted opens: N clients (default 20) ask for a channel to a home service
     that streams as fast as it can, and leave before/while the open completes; the
     bastion's RSS (and PSS) every second for ~60 s: start, peak, end; and how many
     home-side connections are still open at the end;
  b. a key-exchange flood: 49 source addresses (127.0.0.2-127.0.0.50) x 10 half key
     exchanges (peers.py flood: the most expensive kex offered, a random value, never
     finished, re-opened when dropped) for 30 s; whether the established agent link stays
     up (sshtun: the same agent connection still holds the name; OpenSSH: the ssh -R
     process is alive and its forward works), and real ``ssh -J … true`` logins from
     another address once a second during the flood and right after it;
  c. bursts from one address: 50 (and 20) parallel ``ssh -J … true``, successes.

With ``--repeat K`` each line shows the median and the spread (min-max) over the K runs.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench_tunnel import (
    LAUNCHED,
    Procs,
    become_subreaper,
    cancellable,
    check_bounds,
    cpu_seconds,
    environment,
    finish,
    kill_tree,
    log,
    reap_orphans,
)
from scene import (
    KINDS,
    PEERS,
    Login,
    Scene,
    Side,
    aborted_opens,
    audit_refusals,
    established,
    route_ready,
    spawn_pipe,
    ssh_true,
    sshtun_status,
    start_openssh,
    start_scene,
    start_sshtun,
    stop_side,
)
from sidebyside import Row, const, key, table

from tests.harness import SSH, SSHD, Keys, home_sshd

MiB = 1024
MEM_TOLERANCE_MIB = 2.0  # RSS moves this much with no leak (allocator, one-off buffers)
FLOOD_PROBE_SOURCE = "127.0.0.60"
AFTER_PROBE_SOURCE = "127.0.0.61"
ABORT_SOURCE = "127.0.0.80"
BURST_SOURCES = {50: "127.0.0.90", 20: "127.0.0.91"}


# a. memory under aborted opens ------------------------------------------------------------
async def aborted_phase(side: Side, args: argparse.Namespace) -> dict[str, Any]:
    series: list[tuple[float, int, int]] = []  # (t, rss KiB, pss KiB)
    t0 = time.monotonic()

    def sample() -> None:
        m = side.mem()
        series.append((round(time.monotonic() - t0, 1), m.rss_kib, m.pss_kib))

    for _ in range(3):  # the baseline
        sample()
        await asyncio.sleep(1)
    start = series[-1]
    opens = asyncio.ensure_future(aborted_opens(side, args.clients, ABORT_SOURCE))
    capped = False
    end_at = time.monotonic() + args.mem_seconds
    while time.monotonic() < end_at:
        await asyncio.sleep(1)
        sample()
        if series[-1][1] > args.rss_cap_mib * MiB:
            capped = True  # a leak that big says enough; stop before the machine suffers
            break
    sent = await opens
    home_open = established(side.scene.stream_port)
    return {
        "rss_start": start[1] / MiB,
        "rss_peak": max(s[1] for s in series) / MiB,
        "rss_end": series[-1][1] / MiB,
        "rss_growth": (max(s[1] for s in series) - start[1]) / MiB,
        "pss_start": start[2] / MiB,
        "pss_end": series[-1][2] / MiB,
        "home_open": home_open,
        "opens_sent": sent,
        "capped": capped,
        "seconds": round(series[-1][0] - start[0], 1),
        "series": series,
    }


# b. the key-exchange flood ------------------------------------------------------------------
async def link_identity(side: Side) -> Any:
    """What must not change while the link survives: sshtun: the bastion's connection id for
    homebox and the agent's connect count; OpenSSH: the ssh -R process, alive."""
    if side.kind == "openssh":
        proc = side.agents[0]
        return proc.pid if proc.returncode is None else None
    assert side.bastion_cfg is not None
    bastion = await sshtun_status(side.bastion_cfg)
    agent = await sshtun_status(side.agent_cfgs[0])
    if bastion is None or agent is None:
        return None
    conns = sorted({n["conn"] for n in bastion.get("names", []) if n["name"] == "homebox"})
    links = agent.get("links", [])
    return (tuple(conns), tuple(link.get("connects") for link in links))


async def probes(
    side: Side, source: str, every: float, until: Callable[[], bool], timeout: float
) -> list[Login]:
    """A real ``ssh -J … true`` from ``source`` every ``every`` seconds until ``until()``."""
    tasks = []
    while not until():
        tasks.append(asyncio.ensure_future(ssh_true(side, source, timeout=timeout)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait_until(until), every)
    return list(await asyncio.gather(*tasks))


async def wait_until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.1)


def median_ok_seconds(logins: Sequence[Login]) -> float | None:
    times = [x.seconds for x in logins if x.ok]
    return round(statistics.median(times), 2) if times else None


async def flood_phase(side: Side, args: argparse.Namespace) -> dict[str, Any]:
    before = await link_identity(side)
    warm = await ssh_true(side, FLOOD_PROBE_SOURCE, timeout=60)
    quiet = [await ssh_true(side, FLOOD_PROBE_SOURCE, timeout=60) for _ in range(3)]
    if not warm.ok or not all(x.ok for x in quiet):
        log(f"{side.kind}: a login before the flood failed: {warm.error}")
    cpu0 = cpu_seconds(side.bastion.pid, side.kind == "openssh")
    argv = [
        *PEERS,
        "flood",
        "--port",
        str(side.port),
        "--sources",
        args.flood_sources,
        "--per-source",
        str(args.flood_per_source),
        "--seconds",
        str(args.flood_seconds),
    ]
    flood = await spawn_pipe(side.scene.procs, argv + (["--churn"] if args.flood_churn else []))
    during = await probes(
        side, FLOOD_PROBE_SOURCE, 1.0, lambda: flood.returncode is not None, args.probe_timeout
    )
    out, _ = await asyncio.wait_for(flood.communicate(), args.flood_seconds + 60)
    cpu = cpu_seconds(side.bastion.pid, side.kind == "openssh") - cpu0
    try:
        stats = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        stats = {"error": out.decode(errors="replace")[-500:]}
    done_at = time.monotonic() + args.after_seconds
    after = await probes(
        side, AFTER_PROBE_SOURCE, 1.0, lambda: time.monotonic() > done_at, args.probe_timeout
    )
    try:
        await route_ready(side, "home", timeout=30)
        route_ok = True
    except RuntimeError:
        route_ok = False
    now = await link_identity(side)
    return {
        "kept": before is not None and now == before and route_ok,
        "link_before": before,
        "link_after": now,
        "login_quiet_s": median_ok_seconds(quiet),
        "during_ok": sum(x.ok for x in during),
        "during_total": len(during),
        "during_login_s": median_ok_seconds(during),
        "after_ok": sum(x.ok for x in after),
        "after_total": len(after),
        "bastion_cpu": round(cpu, 1),
        "flood": stats,
        "failures": sorted({x.error for x in during + after if not x.ok})[:5],
    }


# c. bursts from one address -----------------------------------------------------------------
async def burst_phase(side: Side, args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for n in args.bursts:
        source = BURST_SOURCES.get(n, f"127.0.0.{100 + n % 100}")
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(ssh_true(side, source, timeout=args.burst_timeout) for _ in range(n))
        )
        res[f"burst{n}_ok"] = sum(x.ok for x in results)
        res[f"burst{n}_seconds"] = round(time.monotonic() - t0, 1)
        res[f"burst{n}_failures"] = sorted({x.error for x in results if not x.ok})[:5]
    return res


# The run ------------------------------------------------------------------------------------
PHASES: dict[str, Callable[[Side, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "aborted": aborted_phase,
    "flood": flood_phase,
    "burst": burst_phase,
}


async def fresh(scene: Scene, kind: str) -> Side:
    return await (start_sshtun(scene) if kind == "sshtun" else start_openssh(scene))


async def run_attack(args: argparse.Namespace) -> list[dict[str, dict[str, Any]]]:
    """``args.repeat`` runs; each phase on a fresh bastion per side, alternating the order."""
    work = Path(tempfile.mkdtemp(prefix="sshtun-attack-"))
    procs = Procs(work)
    runs: list[dict[str, dict[str, Any]]] = []
    try:
        keys = Keys.create(work / "keys")
        async with home_sshd(keys, work / "home") as home:
            LAUNCHED.add(home.proc.pid)
            scene = await start_scene(work, procs, keys, home.port)
            log(f"home sshd :{home.port}, streaming service :{scene.stream_port}; work dir {work}")
            for r in range(args.repeat):
                order = KINDS if r % 2 == 0 else tuple(reversed(KINDS))
                run: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
                for phase in args.phases:
                    for kind in order:
                        log(f"run {r + 1}/{args.repeat}: {phase} on {kind}")
                        side = await fresh(scene, kind)
                        try:
                            found = await PHASES[phase](side, args)
                        finally:
                            await stop_side(side)
                            reap_orphans()
                        if side.kind == "sshtun":
                            found["refusals"] = audit_refusals(side)
                        run[kind].update({f"{phase}.{k}": v for k, v in found.items()})
                        found.pop("series", None)
                        log(f"  {kind} {phase}: {json.dumps(found, default=str)}")
                runs.append(run)
            kill_tree(home.proc.pid)  # the home sshd's leftover sessions
    finally:
        await finish(procs, work, args.keep)
    return runs


# The report -----------------------------------------------------------------------------------
def rows(args: argparse.Namespace) -> list[Row]:
    n = args.clients
    out = []
    if "aborted" in args.phases:
        out += [
            Row(f"aborted opens x{n}: bastion RSS at start (MiB)", key("aborted.rss_start"), None),
            Row(f"aborted opens x{n}: bastion RSS peak (MiB)", key("aborted.rss_peak"), None),
            Row(f"aborted opens x{n}: bastion RSS at end (MiB)", key("aborted.rss_end"), None),
            Row(
                f"aborted opens x{n}: RSS growth, peak - start (MiB)",
                key("aborted.rss_growth"),
                "lower",
                tolerance=MEM_TOLERANCE_MIB,
            ),
            Row(f"aborted opens x{n}: PSS at end (MiB)", key("aborted.pss_end"), None),
            Row(
                f"aborted opens x{n}: home connections left open",
                key("aborted.home_open"),
                "lower",
                0,
            ),
        ]
    if "flood" in args.phases:
        out += [
            Row("kex flood: established agent link kept (1 = yes)", key("flood.kept"), "higher", 0),
            Row(
                "kex flood: ssh -J logins ok during the flood",
                key("flood.during_ok"),
                "higher",
                0,
                key("flood.during_total"),
            ),
            Row(
                "kex flood: ssh -J logins ok right after it",
                key("flood.after_ok"),
                "higher",
                0,
                key("flood.after_total"),
            ),
            Row(
                "kex flood: ssh -J login time, quiet (median s)",
                key("flood.login_quiet_s"),
                None,
                2,
            ),
            Row(
                "kex flood: ssh -J login time during the flood (median of ok, s)",
                key("flood.during_login_s"),
                "lower",
                2,
            ),
            Row("kex flood: bastion CPU during the flood (s)", key("flood.bastion_cpu"), None),
            Row(
                "kex flood: key exchanges the bastion answered",
                key("flood.flood/kex_replies"),
                None,
                0,
            ),
        ]
    for b in args.bursts if "burst" in args.phases else []:
        out.append(
            Row(
                f"burst: {b} parallel ssh -J from one address, ok",
                key(f"burst.burst{b}_ok"),
                "higher",
                0,
                const(float(b)),
            )
        )
        out.append(
            Row(
                f"burst: {b} parallel ssh -J, time until all ended (s)",
                key(f"burst.burst{b}_seconds"),
                None,
            )
        )
    return out


def details(runs: list[dict[str, dict[str, Any]]]) -> list[str]:
    """What explains the table: the flood's counters, the kex chosen, failure messages."""
    out = []
    for kind in KINDS:
        for i, run in enumerate(runs):
            r = run[kind]
            if "flood.flood" in r:
                f = r["flood.flood"]
                kex = ",".join(f.get("kex_chosen", {})) or "-"
                out.append(
                    f"{kind} run {i + 1}: flood chose {kex}; connects {f.get('connects', 0)}, "
                    f"banners {f.get('banners', 0)}, key exchanges answered "
                    f"{f.get('kex_replies', 0)}, most open at once {f.get('open_max', 0)}; "
                    f"link {r.get('flood.link_before')} -> {r.get('flood.link_after')}"
                )
            for k in ("flood.failures", *(x for x in r if x.endswith("_failures"))):
                if r.get(k):
                    out.append(f"{kind} run {i + 1}: {k} e.g. {r[k][:3]}")
            for phase in PHASES:
                if r.get(f"{phase}.refusals"):
                    out.append(
                        f"{kind} run {i + 1}: {phase}: the bastion refused (audit log) "
                        + "; ".join(
                            f"{n}x {why}" for why, n in list(r[f"{phase}.refusals"].items())[:5]
                        )
                    )
            if r.get("aborted.capped"):
                out.append(
                    f"{kind} run {i + 1}: RSS sampling stopped at the cap after "
                    f"{r.get('aborted.seconds')} s of aborted opens"
                )
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="The sshtun bastion and OpenSSH's sshd as the bastion under the same "
        "attack: memory under aborted opens, a key-exchange flood, bursts from one address."
    )
    p.add_argument("--quick", action="store_true", help="short durations, fewer clients")
    p.add_argument("--repeat", type=int, default=1, help="runs; lines show median (min-max)")
    p.add_argument("--phases", default="aborted,flood,burst", help="which measures, in order")
    p.add_argument("--clients", type=int, help="aborted opens (default 20; quick 8)")
    p.add_argument("--mem-seconds", type=float, help="RSS sampling time (default 60; quick 15)")
    p.add_argument("--rss-cap-mib", type=int, default=3072, help="stop sampling above this RSS")
    p.add_argument("--flood-seconds", type=float, help="flood time (default 30; quick 10)")
    p.add_argument("--flood-sources", help="default 127.0.0.2-127.0.0.50 (quick: .2-.21)")
    p.add_argument("--flood-per-source", type=int, help="half key exchanges per source (10; 5)")
    p.add_argument(
        "--flood-churn",
        action="store_true",
        help="close each half key exchange once the server answered and open another "
        "(DHEat-style; the default holds it until the server drops it)",
    )
    p.add_argument("--after-seconds", type=float, help="login probes after the flood (5; 3)")
    p.add_argument("--probe-timeout", type=float, default=30.0, help="per ssh -J login probe")
    p.add_argument("--bursts", help="parallel ssh -J from one address (default 50,20; quick 20)")
    p.add_argument("--burst-timeout", type=float, default=90.0, help="per ssh -J in a burst")
    p.add_argument("--json", type=Path, help="also write every run's raw results here")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    p.add_argument(
        "--ref", metavar="REV", help="attack sshtunnel_mgr as committed at REV (see bench_tunnel)"
    )
    a = p.parse_args(argv)
    q = a.quick
    defaults: dict[str, Any] = dict(
        clients=8 if q else 20,
        mem_seconds=15.0 if q else 60.0,
        flood_seconds=10.0 if q else 30.0,
        flood_sources="127.0.0.2-127.0.0.21" if q else "127.0.0.2-127.0.0.50",
        flood_per_source=5 if q else 10,
        after_seconds=3.0 if q else 5.0,
        bursts="20" if q else "50,20",
    )
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.phases = [x for x in a.phases.split(",") if x]
    a.bursts = [int(x) for x in a.bursts.split(",") if x]
    if any(x not in PHASES for x in a.phases):
        p.error(f"--phases: choose from {','.join(PHASES)}")
    bounds = dict(
        repeat=(1, 20),
        clients=(1, 200),
        mem_seconds=(1, 600),
        flood_seconds=(1, 300),
        flood_per_source=(1, 50),
        after_seconds=(0, 60),
    )
    check_bounds(p, a, bounds)
    if not all(1 <= b <= 200 for b in a.bursts):
        p.error("--bursts: each 1..200")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SSH or not SSHD:
        print(
            "attack: needs OpenSSH ssh and sshd (apt-get install openssh-client openssh-server)",
            file=sys.stderr,
        )
        return 2
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    become_subreaper()
    env = environment()
    load_before = os.getloadavg()
    started = time.time()
    try:
        runs = asyncio.run(cancellable(run_attack(args)))
    except asyncio.CancelledError:
        print("attack: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    load_after = os.getloadavg()
    print()
    print(
        f"sshtun bastion vs OpenSSH sshd as the bastion, under the same attack, on 127.0.0.0/8 "
        f"({env['nproc']} CPUs: {env['cpu']}; {env['openssh'].split(',')[0]}, asyncssh "
        f"{env['asyncssh']})"
    )
    print(f"code under test: {env['code_under_test']} (HEAD {env['git_head']})")
    print(
        f"load average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)}; {args.repeat} run(s)"
        + ("; median (min-max)" if args.repeat > 1 else "")
    )
    print(
        f"aborted opens: {args.clients} clients, RSS every 1 s for {args.mem_seconds:.0f} s; "
        f"flood: {args.flood_sources} x {args.flood_per_source} half key exchanges for "
        f"{args.flood_seconds:.0f} s, one ssh -J login a second from {FLOOD_PROBE_SOURCE} "
        f"(then {args.after_seconds:.0f} s from {AFTER_PROBE_SOURCE}); bursts {args.bursts}; "
        "both bastions with their default limits"
    )
    print()
    print(table(rows(args), runs))
    print()
    for line in details(runs):
        print(line)
    print(f"took {time.time() - started:.0f}s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"environment": env, "load": [load_before, load_after], "runs": runs},
                indent=1,
                default=str,
            )
            + "\n"
        )
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
