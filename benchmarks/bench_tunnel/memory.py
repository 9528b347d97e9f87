"""Measurement 3: the bastion's memory per idle agent connection."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

import asyncssh

from bench_tunnel.common import CIPHERS, SETUPS, log, med
from bench_tunnel.procs import Mem
from bench_tunnel.setup_time import setup_once
from bench_tunnel.sides import (
    LOGIN_OPTIONS,
    Env,
    Side,
    start_agent,
    start_ref_bastion,
    start_sshtun_bastion,
    stop_agent,
)
from tests.harness import (
    USER,
    bastion_pub,
    free_port,
)


# Idle agent connections (memory) ------------------------------------------------------------
async def open_idle(
    side: Side, count: int, concurrency: int, timeout: float
) -> tuple[list[asyncssh.SSHClientConnection], float]:
    """``count`` agent connections, each publishing one forward, held open and idle."""
    keys = side.env.keys
    client_key = asyncssh.read_private_key(str(keys.agent.path))
    host_key = asyncssh.import_public_key(bastion_pub(keys))
    user = "sshtun" if side.kind == "sshtun" else USER
    sem = asyncio.Semaphore(concurrency)
    conns: list[asyncssh.SSHClientConnection] = []

    async def one(i: int) -> None:
        async with sem:
            conn = await asyncssh.connect(
                "127.0.0.1",
                side.port,
                username=user,
                client_keys=[client_key],
                known_hosts=([host_key], [], []),
                **LOGIN_OPTIONS,
                encryption_algs=["aes128-gcm@openssh.com"],
                kex_algs=["curve25519-sha256"],
            )
            conns.append(conn)
            if side.kind == "sshtun":
                await conn.forward_remote_port(f"idle-{i}", 22, "127.0.0.1", 9)
                return
            for _attempt in range(5):  # a port taken meanwhile: pick another
                try:
                    await conn.forward_remote_port("127.0.0.1", free_port(), "127.0.0.1", 9)
                    return
                except asyncssh.ChannelListenError:
                    continue
            raise RuntimeError("could not find a free port for an idle forward")

    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), timeout)
    except BaseException:
        await close_idle(conns)
        raise
    return conns, time.perf_counter() - t0


async def close_idle(conns: list[asyncssh.SSHClientConnection]) -> None:
    for conn in conns:
        conn.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True), 20
        )


async def sample_mem(side: Side, n: int = 3, gap: float = 0.3) -> Mem:
    samples = []
    for _ in range(n):
        samples.append(side.bastion_mem())
        await asyncio.sleep(gap)
    samples.sort(key=lambda m: m.rss_kib)
    return samples[len(samples) // 2]


async def memory_round(env: Env, kind: str, count: int, concurrency: int) -> dict[str, Any]:
    side = await (start_sshtun_bastion(env) if kind == "sshtun" else start_ref_bastion(env))
    try:
        await start_agent(side, CIPHERS[0])  # the homebox agent: part of the idle baseline
        await setup_once(side)  # warm the routing path once
        await asyncio.sleep(1.0)
        base = await sample_mem(side)
        conns, took = await open_idle(side, count, concurrency, timeout=180)
        try:
            await asyncio.sleep(2.0)
            loaded = await sample_mem(side)
            await setup_once(side)  # the bastion still routes with all of them connected
        finally:
            await close_idle(conns)
        return {
            "idle_rss_kib": base.rss_kib,
            "loaded_rss_kib": loaded.rss_kib,
            "idle_pss_kib": base.pss_kib,
            "loaded_pss_kib": loaded.pss_kib,
            "idle_processes": base.processes,
            "loaded_processes": loaded.processes,
            "per_conn_rss_kib": (loaded.rss_kib - base.rss_kib) / count,
            "per_conn_pss_kib": (loaded.pss_kib - base.pss_kib) / count,
            "connect_seconds": took,
        }
    finally:
        await stop_agent(side)
        await env.procs.stop(side.bastion)


async def memory_phase(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"count": args.idle, "rounds": {k: [] for k in SETUPS}}
    for r in range(args.mem_rounds):
        order = SETUPS if r % 2 == 0 else tuple(reversed(SETUPS))
        for kind in order:
            log(f"memory round {r + 1}/{args.mem_rounds}: {kind}, {args.idle} idle agents")
            rr = await memory_round(env, kind, args.idle, args.concurrency)
            log(
                f"  {kind}: idle {rr['idle_rss_kib']} KiB -> {rr['loaded_rss_kib']} KiB RSS; "
                f"{rr['per_conn_rss_kib']:.1f} KiB/conn (PSS {rr['per_conn_pss_kib']:.1f}); "
                f"connected in {rr['connect_seconds']:.1f}s"
            )
            out["rounds"][kind].append(rr)
    for kind in SETUPS:
        rounds = out["rounds"][kind]
        out[kind] = {
            key: med([x[key] for x in rounds])
            for key in (
                "idle_rss_kib",
                "loaded_rss_kib",
                "per_conn_rss_kib",
                "per_conn_pss_kib",
                "idle_pss_kib",
                "loaded_pss_kib",
                "connect_seconds",
            )
        }
    return out
