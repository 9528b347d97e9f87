"""The clients, the same for both sides: h2load (new-connection requests/s), curl (time to
first byte, bulk download); each run bounded by a timeout and checked."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench_tunnel import (
    Run,
)

from web_bench.scene import H2LOAD, MB, Home, Side, accepted, curl_base, run_tool, url


# Clients -------------------------------------------------------------------------------------
@dataclass
class WebRun(Run):
    value: float = 0.0  # req/s, or MB/s; for TTFB the per-round p50 (ms)
    samples: list[float] = field(default_factory=list)  # TTFB (ms) of each request
    bastion_cpu_s: float = 0.0
    agent_cpu_s: float = 0.0
    units: float = 0.0  # requests, or bytes
    detail: dict[str, Any] = field(default_factory=dict)


async def cpu_measured(side: Side, work: Callable[[], Awaitable[WebRun]]) -> WebRun:
    b0, a0 = side.bastion_cpu(), side.agent_cpu()
    run = await work()
    run.bastion_cpu_s, run.agent_cpu_s = side.bastion_cpu() - b0, side.agent_cpu() - a0
    return run


async def rps_run(side: Side, home: Home, requests: int, clients: int) -> WebRun:
    assert H2LOAD is not None
    before = await accepted(home)
    argv = [
        H2LOAD,
        "--h1",
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-m",
        "1",
        "-H",
        "Connection: close",
        f"--connect-to=127.0.0.1:{side.front}",
        url(side),
    ]
    t0 = time.perf_counter()
    out, err, code = await run_tool(argv, 60 + requests / 20)
    seconds = time.perf_counter() - t0
    new_conns = await accepted(home) - before
    done = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if code != 0 or not done or not rate or int(done.group(1)) != requests:
        raise RuntimeError(f"{side.kind}: h2load failed ({code}): {out[-1500:]} {err[-500:]}")
    if new_conns < requests:  # every request on a connection of its own
        raise RuntimeError(f"{side.kind}: {requests} requests but nginx accepted {new_conns}")
    return WebRun(
        seconds, value=float(rate.group(1)), units=requests, detail={"nginx_accepted": new_conns}
    )


async def rps_sources_run(
    side: Side, home: Home, requests: int, clients: int, sources: int
) -> WebRun:
    """New-connection requests/s from ``sources`` client addresses (127.0.0.2, .3, ...):
    one ``curl -Z`` per address, ``clients / sources`` transfers at a time, each on a new
    connection with a full handshake (``Connection: close``, ``--no-sessionid``; checked
    with ``num_connects`` and nginx's counter). A multi-process bastion spreads sources
    over its workers (h2load has no source address option, so its clients are all one)."""
    per = max(1, requests // sources)
    argvs = []
    for k in range(sources):
        argv = [*curl_base(side, home), "--interface", f"127.0.0.{k + 2}", "--http1.1"]
        argv += ["--no-sessionid", "-H", "Connection: close", "-Z"]
        argv += [
            "--parallel-max",
            str(max(1, clients // sources)),
            "-w",
            "%{num_connects} %{http_code}\n",
        ]
        for _ in range(per):
            argv += ["-o", "/dev/null", url(side)]
        argvs.append(argv)
    before = await accepted(home)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(run_tool(argv, 60 + per / 10) for argv in argvs))
    seconds = time.perf_counter() - t0
    new_conns = await accepted(home) - before
    ok = sum(line.split() == ["1", "200"] for out, _, _ in results for line in out.splitlines())
    if any(code != 0 for _, _, code in results) or ok != per * sources:
        errors = " | ".join(err[-300:] for _, err, _ in results)
        raise RuntimeError(f"{side.kind}: curl -Z: {ok} of {per * sources} ok: {errors}")
    if new_conns < per * sources:
        raise RuntimeError(f"{side.kind}: {per * sources} requests but nginx accepted {new_conns}")
    return WebRun(
        seconds,
        value=per * sources / seconds,
        units=per * sources,
        detail={"nginx_accepted": new_conns, "sources": sources},
    )


async def ttfb_run(side: Side, home: Home, count: int) -> WebRun:
    """``count`` requests, one at a time, each on a new connection with a full handshake;
    one warm-up request first (curl loads the CA then), not counted."""
    argv = [
        *curl_base(side, home),
        "--no-sessionid",
        "-H",
        "Connection: close",
        "-w",
        "%{num_connects} %{http_code} %{time_appconnect} %{time_starttransfer}\n",
    ]
    for _ in range(count + 1):
        argv += ["-o", "/dev/null", url(side)]
    t0 = time.perf_counter()
    out, err, code = await run_tool(argv, 60 + count)
    seconds = time.perf_counter() - t0
    lines = out.split("\n")[1 : count + 1]
    samples = []
    for line in lines:
        conns, status, _tls, start = line.split()
        if conns != "1" or status != "200":
            raise RuntimeError(f"{side.kind}: curl: {line!r} (num_connects, status)")
        samples.append(float(start) * 1000)
    if code != 0 or len(samples) != count:
        raise RuntimeError(f"{side.kind}: curl failed ({code}): {err[-800:]}")
    return WebRun(seconds, value=percentile(samples, 50), samples=samples, units=count)


async def bulk_run(side: Side, home: Home) -> WebRun:
    argv = [
        *curl_base(side, home),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_total}",
        url(side, "/big"),
    ]
    t0 = time.perf_counter()
    out, err, code = await run_tool(argv, 300)
    seconds = time.perf_counter() - t0
    size, total = [*out.split(), "0", "0"][:2]
    if code != 0 or int(size) != home.big_bytes:
        raise RuntimeError(f"{side.kind}: bulk got {size} of {home.big_bytes} bytes: {err}")
    return WebRun(seconds, value=int(size) / float(total) / MB, units=int(size))


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(len(s) * p / 100) - 1))] if s else float("nan")
