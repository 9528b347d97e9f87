"""The rounds (interleaved, each run guarded against other processes' CPU), the optional
cProfile of the sshtun side, and the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench_tunnel import (
    SRC_LABEL,
    Env,
    Procs,
    Run,
    become_subreaper,
    cancellable,
    environment,
    finish,
    guarded,
    log,
)

from tests.harness import (
    Keys,
)
from web_bench.clients import (
    WebRun,
    bulk_run,
    cpu_measured,
    rps_run,
    rps_sources_run,
    ttfb_run,
)
from web_bench.report import METRICS, ratios, summarize, table
from web_bench.scene import (
    CURL,
    H2LOAD,
    HAPROXY,
    NGINX,
    SIDES,
    TOOLS,
    Home,
    Side,
    loadavg,
    start_home,
    start_reference,
    start_sshtun,
    version,
)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sshtun-web-"))
    procs = Procs(work)
    keys = Keys.create(work / "keys")
    env = Env(work, keys, 0, procs, None, args.max_foreign, args.retries)
    runs: dict[str, dict[str, list[WebRun]]] = {m: {s: [] for s in SIDES} for m in METRICS}
    res: dict[str, Any] = {"rounds_done": 0}
    deadline = time.monotonic() + args.budget
    try:
        home = await start_home(work, procs, args.bulk_mib, args.nginx_workers)
        env.home_port = home.port
        sides = {
            "sshtun": await start_sshtun(env, home, workers=args.workers),
            "reference": await start_reference(env, home, args.cipher),
        }
        log(
            f"both sides up: sshtun https 127.0.0.1:{sides['sshtun'].front}, "
            f"haproxy 127.0.0.1:{sides['reference'].front}; home nginx :{home.port}"
        )
        for side in sides.values():  # warm-up: a few of each, not counted
            await rps_run(side, home, min(50, args.requests), min(4, args.clients))
        work_of: dict[str, Callable[[Side], Awaitable[WebRun]]] = {
            "rps": lambda s: (
                rps_run(s, home, args.requests, args.clients)
                if args.sources == 1
                else rps_sources_run(s, home, args.requests, args.clients, args.sources)
            ),
            "ttfb": lambda s: ttfb_run(s, home, args.ttfb),
            "bulk": lambda s: bulk_run(s, home),
        }
        for r in range(args.rounds):
            if r and time.monotonic() > deadline:
                log(f"budget of {args.budget:.0f}s spent: stopping after {r} rounds")
                break
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for metric in METRICS:
                for kind in order:
                    side = sides[kind]

                    async def one(side: Side = side, metric: str = metric) -> Run:
                        return await cpu_measured(side, lambda: work_of[metric](side))

                    run = await guarded(env, f"round {r + 1} {metric} {kind}", one)
                    assert isinstance(run, WebRun)
                    runs[metric][kind].append(run)
                    log(
                        f"round {r + 1} {metric:4} {kind:9} {run.value:9.1f} "
                        f"(other processes {run.foreign:.0%})"
                    )
            res["rounds_done"] = r + 1
        if args.profile:
            res["profile"] = await profile_sshtun(env, home, args)
    finally:
        await finish(procs, work, args.keep)
    res["runs"] = runs
    res["disturbed"] = {
        "runs": env.runs,
        "disturbed": env.disturbed,
        "kept_disturbed": env.kept_disturbed,
    }
    return res


async def profile_sshtun(env: Env, home: Home, args: argparse.Namespace) -> dict[str, str]:
    """A separate sshtun bastion and agent under cProfile (slower: not for the table), one
    request run and one bulk download; the top functions by own time, each process."""
    import pstats

    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    side = await start_sshtun(env, home, profile_dir=out, label="sshtun-profiled")
    await rps_run(side, home, args.requests, args.clients)
    await bulk_run(side, home)
    for proc in side.procs:  # SIGTERM: each returns from main and cProfile writes its file
        await env.procs.stop(proc, grace=30)
    found = {}
    for name in ("bastion", "agent"):
        text = []
        stats = pstats.Stats(str(out / f"{name}.prof"), stream=_Lines(text))
        stats.sort_stats("tottime").print_stats(args.profile_top)
        found[name] = "".join(text)
        log(f"cProfile of the sshtun {name}: {out / f'{name}.prof'}")
    return found


class _Lines:
    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> int:
        self.into.append(text)
        return len(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (1..30)")
    p.add_argument("--requests", type=int, default=2000, help="h2load requests per run")
    p.add_argument("--clients", type=int, default=8, help="h2load concurrent connections")
    p.add_argument("--ttfb", type=int, default=200, help="curl requests per TTFB run")
    p.add_argument("--bulk-mib", type=int, default=256, help="size of the big file (MiB)")
    p.add_argument("--nginx-workers", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="the sshtun bastion's workers (1..16)")
    p.add_argument(
        "--sources",
        type=int,
        default=1,
        help="client addresses for requests/s (1: h2load from 127.0.0.1; more: one curl -Z "
        "from each of 127.0.0.2, .3, ..., so a multi-process bastion spreads them)",
    )
    p.add_argument(
        "--cipher",
        default="aes128-gcm@openssh.com",
        help="the ssh -R agent's cipher ('default': OpenSSH's own choice); "
        "the sshtun agent negotiates aes128-gcm, its first",
    )
    p.add_argument("--max-foreign", type=float, default=0.10)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--budget", type=float, default=1200, help="no new round after (s)")
    p.add_argument("--profile", metavar="DIR", help="also cProfile a separate sshtun side")
    p.add_argument("--profile-top", type=int, default=30)
    p.add_argument("--ref", help="measure this git revision (see bench_tunnel)")
    p.add_argument("--json", type=Path, help="write every figure and run here")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = p.parse_args(argv)
    if not 1 <= args.rounds <= 30 or not 1 <= args.clients <= 1000:
        p.error("--rounds must be 1..30 and --clients 1..1000")
    if not 1 <= args.requests <= 1_000_000 or not 1 <= args.ttfb <= 10_000:
        p.error("--requests must be 1..1000000 and --ttfb 1..10000")
    if not 1 <= args.workers <= 16 or not 1 <= args.sources <= 50:
        p.error("--workers must be 1..16 and --sources 1..50")
    if not 1 <= args.bulk_mib <= 4096:
        p.error("--bulk-mib must be 1..4096")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [name for name, path in TOOLS.items() if path is None]
    if missing:
        print(
            f"web_bench: missing {', '.join(missing)} (apt-get install nginx "
            "nghttp2-client haproxy curl openssh-client openssh-server)",
            file=sys.stderr,
        )
        return 2
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    become_subreaper()
    env = environment()
    env["tools"] = {
        "nginx": version(str(NGINX), "-v"),
        "haproxy": version(str(HAPROXY), "-v"),
        "h2load": version(str(H2LOAD), "--version"),
        "curl": version(str(CURL), "--version"),
    }
    load_before, started = loadavg(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    res = asyncio.run(cancellable(measure(args)))
    res["load_before"], res["load_after"] = load_before, loadavg()
    res["started"], res["argv"] = started, sys.argv
    res["environment"] = env
    res["config"] = {k: v for k, v in vars(args).items() if k != "json"}
    res["summary"] = summarize(res["runs"])
    res["ratios"] = ratios(res["summary"])
    d = res["disturbed"]
    print(
        f"web path, {started}: code {SRC_LABEL} (git {env['git_head']}), "
        f"{env['cpu']} x{env['nproc']}"
    )
    print(
        f"{res['rounds_done']} rounds; h2load {args.requests} requests x {args.clients} "
        f"connections, {args.ttfb} TTFB requests, {args.bulk_mib} MiB bulk; ssh -R cipher "
        f"{args.cipher}; nginx workers {args.nginx_workers}; sshtun workers {args.workers}; "
        f"requests/s from {args.sources} source address(es)"
    )
    print(
        f"load average before {load_before}, after {res['load_after']}; "
        f"{d['disturbed']} of {d['runs']} runs disturbed, {d['kept_disturbed']} kept so"
    )
    print("medians (min-max of the rounds); TTFB: percentile of all requests pooled")
    print(table(res["summary"], res["ratios"]))
    for name, text in res.get("profile", {}).items():
        print(f"\ncProfile, sshtun {name} (top by own time):\n{text}")
    if args.json:
        res["runs"] = {
            m: {k: [vars(r) for r in rs] for k, rs in v.items()} for m, v in res["runs"].items()
        }
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
