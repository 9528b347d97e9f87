#!/usr/bin/env python3
"""K parallel ``ssh -J`` streams through one bastion: the aggregate MiB/s and the cores the
bastion uses, sshtun (``workers`` 1 and 2 when the code has the key) against OpenSSH's sshd
as the bastion, in interleaved rounds.

Setups, on 127.0.0.1, all running for the whole benchmark and measured one at a time:
  sshtun-wN  ``sshtun bastion`` with ``workers = N`` (limits as shipped except
             ``max_startups``, lifted to sshd's 1000:30:2000) <- ``--agents`` real
             ``sshtun up``, agent a publishing ``stream-a:22`` (the home sshd)
  openssh    OpenSSH ``sshd`` (bench_tunnel's reference config, MaxStartups 1000:30:2000)
             <- ``--agents`` stock ``ssh -N -R 127.0.0.1:P_a:home``; routes by 127.0.0.1:P_a

One run: K real ``ssh -J stream-<j % agents> 'head -c B /dev/zero'`` started at once, each
from its own source address (127.0.2.j, ``BindAddress`` on the jump hop: K users),
aes128-gcm on every hop, B = ``--total-mib`` / K; this process reads and counts every
stream. Aggregate = all bytes / (last stream's end - start), set-ups included. Meanwhile
the bastion's process tree (sshtun's supervisor and workers; sshd's listener and every
per-connection child, reaped ones through cutime) is sampled every 0.1 s from
/proc/PID/stat utime+stime: its peak cores over 0.1 s and over 1 s, and its mean; the
agents' mean cores too. Every round runs each K on each setup, the setups' order rotating.

    python benchmarks/parallel_streams.py                     # K = 16, 64; 3 rounds; ~5 min
    python benchmarks/parallel_streams.py --streams 4 --total-mib 32 --rounds 1   # quick
    python benchmarks/parallel_streams.py --workers 1,2 --ref HEAD --json out.json

Bounded: a timeout per stream (killed by its PID), K <= 128, rounds <= 10. Everything on
127.0.0.0/8; every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_tunnel import (
    HOST_STAR,
    LAUNCHED,
    SRC_LABEL,
    Env,
    MiB,
    Procs,
    check_bounds,
    finish,
    kill_tree,
    launch,
    log,
    reap_orphans,
    ref_sshd_config,
)
from scaling import (
    CoreSampler,
    client_config,
    measured,
    med,
    spread,
    start_agent,
    start_bastion,
    workers_supported,
)
from scene import wait_banner

from tests.harness import SSH, SSHD, USER, Keys, bastion_pub, free_port, home_sshd, pub_of

CIPHER = "aes128-gcm@openssh.com"


@dataclass
class Setup:
    name: str  # "sshtun-w1", "sshtun-w2", "openssh"
    bastion: asyncio.subprocess.Process
    agents: list[asyncio.subprocess.Process]
    configs: list[Path]  # one ssh config per stream source
    hosts: list[str]  # the alias stream j dials: hosts[j % agents]
    rounds: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def source(j: int) -> str:
    return f"127.0.2.{j + 1}"


async def first_stream(cfg: Path, host: str, timeout: float = 120) -> None:
    """Wait until ``ssh -J host true`` works (the agent has published)."""
    assert SSH is not None
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        proc = await launch(
            SSH,
            "-F",
            str(cfg),
            host,
            "true",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            continue
        if proc.returncode == 0:
            return
        last = err.decode(errors="replace").strip()[-200:]
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{host} not reachable: {last}")


async def start_sshtun(
    procs: Procs, keys: Keys, work: Path, home_port: int, workers: int, args: Any
) -> Setup:
    port = free_port()
    d = work / f"sshtun-w{workers}"
    access = (
        f'permitlisten="stream-*:22" {keys.agent.public_line}\n'
        f'permitopen="stream-*:22" {keys.client.public_line}\n'
    )
    bastion = await start_bastion(
        procs, keys, d, port, access, workers, {"max_startups": "1000:30:2000"}
    )
    agents = [
        await start_agent(procs, keys, d, port, [(f"stream-{a}", 22, f"127.0.0.1:{home_port}")], a)
        for a in range(args.agents)
    ]
    configs = [
        client_config(
            d,
            keys,
            pub_of(keys.home_host),
            bastion_pub(keys),
            port,
            source(j),
            {"stream-*": ("stream-*", 22)},
            cipher=CIPHER,
        )
        for j in range(max(args.streams))
    ]
    hosts = [f"stream-{a}" for a in range(args.agents)]
    for a, host in enumerate(hosts):
        await first_stream(configs[a], host)
    return Setup(f"sshtun-w{workers}", bastion.proc, agents, configs, hosts)


async def start_openssh(procs: Procs, keys: Keys, work: Path, home_port: int, args: Any) -> Setup:
    assert SSH is not None and SSHD is not None
    port = free_port()
    d = work / "openssh"
    d.mkdir(parents=True)
    cfg = ref_sshd_config(Env(work, keys, home_port, procs, kex=None), port, d)
    bastion = await procs.spawn([SSHD, "-D", "-e", "-f", str(cfg)], d / "sshd.log")
    await wait_banner(port, proc=bastion)
    fwd = [free_port() for _ in range(args.agents)]
    known = d / "agent_known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {bastion_pub(keys)}\n")
    agent_cfg = d / "agent_ssh_config"
    agent_cfg.write_text(
        f"Host refbastion\n  HostName 127.0.0.1\n  Port {port}\n  User {USER}\n\n"
        + HOST_STAR.format(
            known=known,
            identity=keys.agent.path,
            extra=f"  Ciphers {CIPHER}\n  ExitOnForwardFailure yes\n",
        ).replace("ServerAliveInterval 5", "ServerAliveInterval 15")
    )
    agents = []
    for a, p in enumerate(fwd):
        argv = [SSH, "-F", str(agent_cfg), "-N", "-R", f"127.0.0.1:{p}:127.0.0.1:{home_port}"]
        agents.append(await procs.spawn([*argv, "refbastion"], d / f"agent{a}.log"))
    routes = {f"stream-{a}": ("127.0.0.1", p) for a, p in enumerate(fwd)}
    configs = [
        client_config(
            d,
            keys,
            pub_of(keys.home_host),
            bastion_pub(keys),
            port,
            source(j),
            routes,
            jump_user=USER,
            cipher=CIPHER,
        )
        for j in range(max(args.streams))
    ]
    hosts = list(routes)
    for a, host in enumerate(hosts):
        await first_stream(configs[a], host)
    return Setup("openssh", bastion, agents, configs, hosts)


async def stream(cfg: Path, host: str, size: int, t0: float, timeout: float) -> dict[str, Any]:
    """One ``ssh -J host 'head -c size /dev/zero'``, counted here; killed after ``timeout``."""
    assert SSH is not None
    with tempfile.TemporaryFile() as err:
        proc = await launch(
            SSH,
            "-F",
            str(cfg),
            host,
            f"head -c {size} /dev/zero",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            limit=4 * MiB,
        )
        assert proc.stdout is not None
        got = 0
        first = None

        async def drain() -> None:
            nonlocal got, first
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(1 * MiB):
                if first is None:
                    first = time.perf_counter() - t0
                got += len(chunk)
            await proc.wait()

        try:
            await asyncio.wait_for(drain(), timeout)
        except TimeoutError:
            pass
        finally:  # timed out, or the run was interrupted: this ssh is stopped by its PID
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await asyncio.shield(proc.wait())
        end = time.perf_counter() - t0
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    ok = proc.returncode == 0 and got == size
    return {
        "ok": ok,
        "bytes": got,
        "first_byte": first,
        "end": end,
        "error": "" if ok else (lines[-1] if lines else f"exit {proc.returncode}, {got} bytes"),
    }


async def measure(setup: Setup, k: int, args: argparse.Namespace) -> dict[str, Any]:
    size = max(1, args.total_mib * MiB // k)
    load = os.getloadavg()[0]
    async with (
        CoreSampler([setup.bastion.pid]) as bastion_cores,
        CoreSampler([a.pid for a in setup.agents]) as agent_cores,
    ):
        t0 = time.perf_counter()
        runs = await asyncio.gather(
            *(
                stream(setup.configs[j], setup.hosts[j % len(setup.hosts)], size, t0, args.timeout)
                for j in range(k)
            )
        )
        wall = max(r["end"] for r in runs)
    reap_orphans()
    total = sum(r["bytes"] for r in runs)
    b = bastion_cores.summary()
    return {
        "streams": k,
        "bytes_each": size,
        "ok": sum(r["ok"] for r in runs),
        "mib_s": total / MiB / wall,
        "wall": wall,
        "first_byte_median": med([r["first_byte"] for r in runs if r["first_byte"] is not None]),
        "bastion_peak_cores": b["peak"],
        "bastion_peak_1s_cores": b["peak_1s"],
        "bastion_mean_cores": b["mean"],
        "agents_mean_cores": agent_cores.summary()["mean"],
        "load_1min": load,
        "errors": sorted({r["error"] for r in runs if not r["ok"]})[:5],
    }


async def run(args: argparse.Namespace) -> list[Setup]:
    work = Path(tempfile.mkdtemp(prefix="sshtun-streams-"))
    procs = Procs(work)
    setups: list[Setup] = []
    try:
        keys = Keys.create(work / "keys")
        async with home_sshd(keys, work / "home") as home:
            LAUNCHED.add(home.proc.pid)
            for w in args.workers:
                setups.append(await start_sshtun(procs, keys, work, home.port, w, args))
            setups.append(await start_openssh(procs, keys, work, home.port, args))
            log(f"setups up: {', '.join(s.name for s in setups)}; work {work}")
            for r in range(args.rounds):
                for k in args.streams:
                    shift = (r + k) % len(setups)
                    for setup in setups[shift:] + setups[:shift]:
                        for a in setup.agents:
                            if a.returncode is not None:
                                raise RuntimeError(f"{setup.name}: an agent exited")
                        result = await measure(setup, k, args)
                        setup.rounds.setdefault(k, []).append(result)
                        log(
                            f"round {r + 1} K={k} {setup.name}: {result['mib_s']:.1f} MiB/s, "
                            f"{result['ok']}/{k} ok, bastion peak "
                            f"{result['bastion_peak_cores']:.2f} cores "
                            f"(1 s: {result['bastion_peak_1s_cores']:.2f}), load "
                            f"{result['load_1min']:.1f}"
                        )
                        kill_tree(home.proc.pid)  # sessions left by killed streams, if any
                        await asyncio.sleep(args.pause)
            kill_tree(home.proc.pid)
    finally:
        await finish(procs, work, args.keep)
    return setups


def report(setups: list[Setup], args: argparse.Namespace, env: dict[str, Any]) -> None:
    print(
        f"\nparallel ssh -J streams: {env['cpu']} x{env['nproc']}, {env['openssh']}, asyncssh "
        f"{env['asyncssh']}; code: {SRC_LABEL}; {CIPHER} on every hop; {args.agents} agents per "
        f"bastion; {args.total_mib} MiB per run split over the streams; {args.rounds} rounds"
    )
    print(
        "\n| streams | bastion | aggregate MiB/s | ratio to sshd | bastion peak cores, 0.1 s "
        "| peak, 1 s | mean | agents' mean cores | streams ok | load (1 min) |"
    )
    print("|" + "---|" * 10)
    ref = next(s for s in setups if s.name == "openssh")
    for k in args.streams:
        ref_mib = med([x["mib_s"] for x in ref.rounds.get(k, [])])
        for s in setups:
            xs = s.rounds.get(k, [])

            def col(key: str, xs: list[dict[str, Any]] = xs) -> list[float]:
                return [float(x[key]) for x in xs]

            ratio = med(col("mib_s")) / ref_mib if ref_mib == ref_mib and ref_mib else float("nan")
            oks = f"{int(sum(col('ok')))}/{k * len(xs)}"
            print(
                f"| {k} | {s.name} | {spread(col('mib_s'))} | {ratio:.2f} "
                f"| {spread(col('bastion_peak_cores'), 2)} "
                f"| {spread(col('bastion_peak_1s_cores'), 2)} "
                f"| {spread(col('bastion_mean_cores'), 2)} | {spread(col('agents_mean_cores'), 2)} "
                f"| {oks} | {spread(col('load_1min'))} |"
            )
    print("\nmedian (min-max) over the rounds.")
    for s in setups:
        for k, xs in s.rounds.items():
            errs = sorted({e for x in xs for e in x["errors"]})
            if errs:
                print(f"  {s.name} K={k}: " + "; ".join(errs[:5]))


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Parallel ssh -J streams: sshtun vs sshd.")
    p.add_argument("--streams", type=int_list, default=[16, 64], help="K, comma list")
    p.add_argument("--workers", type=int_list, help="sshtun setups (default 1,2; 1 without)")
    p.add_argument("--agents", type=int, default=4, help="agents per bastion (default 4)")
    p.add_argument("--total-mib", type=int, default=512, help="MiB per run, split over K")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--timeout", type=float, default=300.0, help="per stream (s)")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    p.add_argument("--json", type=Path, help="also write every run here")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    p.add_argument("--ref", metavar="REV", help="measure sshtunnel_mgr as committed at REV")
    a = p.parse_args(argv)
    if a.workers is None:
        a.workers = [1, 2] if workers_supported() else [1]
    if not a.streams or any(not 1 <= k <= 128 for k in a.streams):
        p.error("--streams: each 1..128")
    if (
        not a.workers
        or any(not 1 <= w <= 8 for w in a.workers)
        or len(set(a.workers)) < len(a.workers)
    ):
        p.error("--workers: distinct values 1..8")
    bounds = dict(agents=(1, 16), total_mib=(1, 8192), rounds=(1, 10), timeout=(5, 3600))
    check_bounds(p, a, bounds)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SSH or not SSHD:
        print("parallel_streams: needs OpenSSH ssh and sshd", file=sys.stderr)
        return 2
    status, setups = measured("parallel_streams", args, run, report, lambda s: (s.name, s.rounds))
    if status:
        return status
    ok = all(x["ok"] == x["streams"] for s in setups for xs in s.rounds.values() for x in xs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
