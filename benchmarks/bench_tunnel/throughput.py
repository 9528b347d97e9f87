"""Measurement 1: bulk throughput of one stream each way through ``ssh -J``, per cipher."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable
from functools import partial
from pathlib import Path
from typing import Any

from bench_tunnel.common import DIRECTIONS, GiB, MiB, log, med, pow2_mib, short
from bench_tunnel.runs import guarded, launch, ssh_cmd
from bench_tunnel.sides import HOST_STAR, Env, Run, Side, algo_opts
from tests.harness import (
    USER,
    pub_of,
)


async def transfer(side: Side, direction: str, nbytes: int, timeout: float) -> Run:
    """One bulk stream through the tunnel; wall time of the whole ssh command."""
    cpu0 = (side.bastion_cpu(), side.agent_cpu())
    r, w = os.pipe()
    procs: list[asyncio.subprocess.Process] = []
    t0 = time.perf_counter()
    try:
        if direction == "upload":
            # head -c N /dev/zero | ssh HOST 'wc -c'   (wc -c: cat > /dev/null that counts)
            feeder = await launch(
                "head", "-c", str(nbytes), "/dev/zero", stdin=subprocess.DEVNULL, stdout=w
            )
            procs.append(feeder)
            ssh = await ssh_cmd(
                side, side.host, "wc -c", stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            procs.append(ssh)
            os.close(r)
            os.close(w)
            r = w = -1
            work: Awaitable[Any] = asyncio.gather(ssh.communicate(), feeder.wait())
        else:
            # ssh HOST 'head -c N /dev/zero' | wc -c
            ssh = await ssh_cmd(
                side,
                side.host,
                f"head -c {nbytes} /dev/zero",
                stdin=subprocess.DEVNULL,
                stdout=w,
                stderr=subprocess.PIPE,
            )
            procs.append(ssh)
            counter = await launch("wc", "-c", stdin=r, stdout=subprocess.PIPE)
            procs.append(counter)
            os.close(r)
            os.close(w)
            r = w = -1
            assert ssh.stderr is not None

            async def both() -> tuple[tuple[bytes, bytes], None]:
                assert ssh.stderr is not None
                (out, _), err, _ = await asyncio.gather(
                    counter.communicate(), ssh.stderr.read(), ssh.wait()
                )
                return (out, err), None

            work = both()
        try:
            (out, err), _ = await asyncio.wait_for(work, timeout)
        except TimeoutError:
            raise RuntimeError(f"{side.kind} {direction} took longer than {timeout}s") from None
        elapsed = time.perf_counter() - t0
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                await p.wait()
    words = out.split()
    got = int(words[0]) if words and words[0].isdigit() else -1
    if ssh.returncode != 0 or got != nbytes:
        raise RuntimeError(
            f"{side.kind} {direction}: ssh exit {ssh.returncode}, {got} of {nbytes} bytes: "
            f"{err.decode(errors='replace')[-2000:]}"
        )
    await asyncio.sleep(0.3)  # let the bastion's per-connection processes exit and be reaped
    return Run(elapsed, side.bastion_cpu() - cpu0[0], side.agent_cpu() - cpu0[1])


def write_direct_config(env: Env, cipher: str) -> Path:
    """The same client config, straight to the home sshd: the part of ``ssh -J`` that does
    not depend on the bastion."""
    d = env.work / "direct"
    d.mkdir(parents=True, exist_ok=True)
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{env.home_port} {pub_of(env.keys.home_host)}\n")
    cfg = d / "ssh_config"
    cfg.write_text(
        f"Host directhome\n  HostName 127.0.0.1\n  Port {env.home_port}\n  User {USER}\n\n"
        + HOST_STAR.format(
            known=known, identity=env.keys.client.path, extra=algo_opts(cipher, env.kex)
        )
    )
    return cfg


async def negotiated_ciphers(side: Side) -> list[str]:
    """Ciphers the client's two hops negotiated (from ``ssh -v``; -J passes -v on)."""
    proc = await ssh_cmd(
        side,
        "-v",
        side.host,
        "true",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    found = []
    for line in err.decode(errors="replace").splitlines():
        if "kex: server->client cipher:" in line or "kex: client->server cipher:" in line:
            found.append(line.split("cipher:")[1].split()[0])
    return found


def agent_hop_cipher(side: Side) -> str:
    """The cipher of the agent's own connection to the bastion, where it can be seen."""
    if side.kind == "openssh" and side.agent is not None:
        logfile = side.dir(short(side.cipher)) / "agent.log"
        for line in logfile.read_text(errors="replace").splitlines():
            if "kex: server->client cipher:" in line:
                return line.split("cipher:")[1].split()[0]
        return "?"
    return f"{side.cipher} (policy narrowed for the agent process)"


async def throughput_phase(
    sides: dict[str, Side], cipher: str, args: argparse.Namespace
) -> dict[str, Any]:
    c = short(cipher)
    # Calibrate: one probe each way per side (also a warm-up), then pick N so that the faster
    # setup takes about --target seconds; the same N for both setups and both directions.
    probe = args.probe_mib * MiB
    rates = []
    for name, side in sides.items():
        for direction in DIRECTIONS:
            run = await transfer(side, direction, probe, timeout=120)
            rates.append(args.probe_mib / run.seconds)
            log(f"{c} probe {name} {direction}: {args.probe_mib / run.seconds:.0f} MiB/s")
    n_mib = args.size_mib or pow2_mib(args.target * max(rates), args.min_mib, args.max_mib)
    nbytes = n_mib * MiB
    log(f"{c}: {args.rounds} rounds x {len(DIRECTIONS)} directions x {n_mib} MiB, interleaved")
    runs: dict[str, dict[str, list[Run]]] = {k: {d: [] for d in DIRECTIONS} for k in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        directions = DIRECTIONS if r % 2 == 0 else tuple(reversed(DIRECTIONS))
        for direction in directions:
            for name in order:
                side = sides[name]
                run = await guarded(
                    side.env,
                    f"{c} {name} {direction}",
                    partial(transfer, side, direction, nbytes, args.timeout),
                )
                runs[name][direction].append(run)
                log(
                    f"{c} round {r + 1} {name:7s} {direction:8s} {n_mib / run.seconds:7.1f} MiB/s "
                    f"(bastion cpu {run.bastion_cpu:.2f}s, agent cpu {run.agent_cpu:.2f}s, "
                    f"other processes {run.foreign:.0%}, steal {run.steal:.0%})"
                )
    out: dict[str, Any] = {"bytes": nbytes, "mib": n_mib}
    for name in sides:
        out[name] = {}
        for direction in DIRECTIONS:
            rs = runs[name][direction]
            mbps = [n_mib / x.seconds for x in rs]
            out[name][direction] = {
                "median_mib_s": med(mbps),
                "min_mib_s": min(mbps),
                "max_mib_s": max(mbps),
                "runs_mib_s": mbps,
                "bastion_cpu_s_per_gib": med([x.bastion_cpu / (nbytes / GiB) for x in rs]),
                "agent_cpu_s_per_gib": med([x.agent_cpu / (nbytes / GiB) for x in rs]),
                "foreign_cpu_share": [round(x.foreign, 3) for x in rs],
                "steal_share": [round(x.steal, 3) for x in rs],
                "irq_share": [round(x.irq, 3) for x in rs],
                "attempts": [x.attempts for x in rs],
            }
    return out
