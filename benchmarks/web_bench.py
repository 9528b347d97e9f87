#!/usr/bin/env python3
"""The web path (issue 11, "Speed"): HTTPS by SNI through the sshtun bastion vs what a user
would build instead, in one run with interleaved rounds.

  sshtun     client -> ``sshtun bastion`` ([bastion.web] https_listen, routes by SNI) ->
             ``forwarded-tcpip`` -> ``sshtun up`` (``tls = "passthrough"``) -> home nginx
  reference  client -> haproxy (``mode tcp``, ``req.ssl_sni``) -> 127.0.0.1:P of OpenSSH's
             ``sshd`` (throwaway, loopback) <- ``ssh -N -R 127.0.0.1:P:127.0.0.1:HOME``
             -> home nginx

Both end at the same home TLS server: nginx from Debian (a config in the work dir, ``daemon
off``, one worker by default, TLS 1.3 with a P-256 certificate from a throwaway CA, session
tickets and the session cache off so that every new connection is a full handshake), with
a small page and a ``--bulk-mib`` file. The same clients for both, all with SNI
``cloud.test`` and no DNS (``--connect-to`` / ``--resolve``):

  1. new-connection HTTPS requests/s: ``h2load --h1 -m 1 -H 'Connection: close'``, so every
     request is on a fresh TLS connection (checked: nginx's accepted-connection counter
     grows by at least the request count);
  2. time to first byte on fresh connections: one ``curl`` with ``--ttfb`` URLs, each with
     ``Connection: close`` and ``--no-sessionid`` (a new TCP connection and a full handshake
     each, checked with ``num_connects``), one at a time; TTFB is curl's
     ``time_starttransfer`` (TCP connect + TLS handshake + request + first byte);
  3. bulk download: ``curl -o /dev/null`` of the big file; MB/s = bytes / curl's
     ``time_total`` (10^6 bytes; handshake included, nothing subtracted).

Each round measures every metric on both sides back to back, the order of the sides
alternating between rounds. A run during which other processes used more than
``--max-foreign`` of the CPUs is measured again (bench_tunnel's ``guarded``). The report has
medians with the min-max of the rounds, the ratio sshtun / reference, the load average
before and after, and, for explanation, the CPU time of each side's bastion (sshtun: its
process; reference: haproxy + the sshd tree) and agent per request and per GiB.

    python benchmarks/web_bench.py                       # 5 rounds, about 3 minutes
    python benchmarks/web_bench.py --ref HEAD --json out.json
    python benchmarks/web_bench.py --profile DIR         # + cProfile of the sshtun bastion

Needs nginx, nghttp2-client (h2load), haproxy, curl, openssh-client and openssh-server
(Debian). Bounded: ``--rounds`` (1..30), ``--budget`` seconds, a timeout on every client.
Everything on 127.0.0.1; every process is stopped by its PID; the work dir is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_tunnel import (
    HOST_STAR,
    SRC_LABEL,
    Env,
    Procs,
    Run,
    become_subreaper,
    cancellable,
    cpu_seconds,
    environment,
    finish,
    guarded,
    launch,
    log,
    start_ref_bastion,
)
from bench_tunnel.sides import wait_log

from sshtunnel_mgr.core.config import TunnelConfig
from sshtunnel_mgr.core.webconfig import WebConfig
from tests.harness import (
    SSH,
    SSHD,
    SSHTUN,
    USER,
    Keys,
    agent_config,
    bastion_config,
    bastion_pub,
    free_port,
    write_toml,
)
from tests.integration.web_peers import Pki, make_pki

NAME = "cloud.test"
SIDES = ("sshtun", "reference")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
)
H2LOAD = shutil.which("h2load")
CURL = shutil.which("curl")
TOOLS = {"nginx": NGINX, "h2load": H2LOAD, "haproxy": HAPROXY, "curl": CURL, "ssh": SSH}
TOOLS["sshd"] = SSHD
MB = 1_000_000
AIM = 1.0  # sshtun at least as good as the reference on every metric


def loadavg() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def version(*argv: str) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr) else "?"


# The home TLS server ---------------------------------------------------------------------
@dataclass
class Home:
    port: int
    status_port: int
    pki: Pki
    big_bytes: int


async def start_home(work: Path, procs: Procs, bulk_mib: int, workers: int) -> Home:
    assert NGINX is not None
    d = work / "nginx"
    (d / "www").mkdir(parents=True)
    (d / "tmp").mkdir()
    pki = make_pki(work / "pki", [NAME])
    (d / "www" / "index.html").write_text("hello from the home box\n")
    big = d / "www" / "big"
    with open(big, "wb") as out:  # sparse: read from no disk, the same bytes for both sides
        out.truncate(bulk_mib * 1024 * 1024)
    port, status_port = free_port(), free_port()
    temp = "".join(f"  {k}_temp_path {d / 'tmp'};\n" for k in ("client_body", "proxy"))
    temp += "".join(f"  {k}_temp_path {d / 'tmp'};\n" for k in ("fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(
        "daemon off;\nmaster_process on;\n"
        + ("user root;\n" if os.geteuid() == 0 else "")  # its files are in a 0700 work dir
        + f"worker_processes {workers};\npid {d / 'nginx.pid'};\n"
        f"error_log {d / 'error.log'} warn;\nevents {{ worker_connections 8192; }}\n"
        "http {\n  access_log off;\n" + temp + f"  server {{\n    listen 127.0.0.1:{status_port};\n"
        "    location = /status { stub_status; }\n  }\n"
        f"  server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name {NAME};\n"
        f"    ssl_certificate {pki.cert};\n    ssl_certificate_key {pki.key};\n"
        "    ssl_protocols TLSv1.3;\n    ssl_session_tickets off;\n    ssl_session_cache off;\n"
        f"    keepalive_requests 100000;\n    root {d / 'www'};\n  }}\n}}\n"
    )
    argv = [NGINX, "-e", str(d / "error.log"), "-p", str(d), "-c", str(d / "nginx.conf")]
    proc = await procs.spawn(argv, d / "nginx.out")
    home = Home(port, status_port, pki, bulk_mib * 1024 * 1024)
    deadline = time.monotonic() + 30
    while await accepted(home) < 0:
        if proc.returncode is not None or time.monotonic() > deadline:
            log_text = (d / "error.log").read_text() if (d / "error.log").exists() else ""
            raise RuntimeError(f"nginx did not start: {log_text[-2000:]}")
        await asyncio.sleep(0.1)
    return home


async def accepted(home: Home) -> int:
    """nginx's count of accepted connections (stub_status), -1 if it does not answer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", home.status_port)
    except OSError:
        return -1
    try:
        writer.write(b"GET /status HTTP/1.0\r\nHost: status\r\n\r\n")
        body = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    found = re.search(rb"handled requests\s*\n\s*(\d+)", body)
    return int(found.group(1)) if found else -1


# The two sides -----------------------------------------------------------------------------
@dataclass
class Side:
    kind: str
    front: int  # the port clients connect to (name cloud.test)
    bastion_pids: list[Callable[[], float]]  # CPU seconds of the bastion side's processes
    agent_cpu: Callable[[], float]
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    def bastion_cpu(self) -> float:
        return sum(f() for f in self.bastion_pids)


def proc_cpu(proc: asyncio.subprocess.Process, tree: bool = False) -> Callable[[], float]:
    return lambda: cpu_seconds(proc.pid, tree)


async def start_sshtun(
    env: Env, home: Home, profile_dir: Path | None = None, label: str = "sshtun"
) -> Side:
    """The sshtun bastion with [bastion.web] and the agent publishing cloud.test:443 with
    tls = "passthrough" to the home nginx; both as shipped, audit log on. The one change
    from the defaults: no cap on new connections per source (max_new_per_source = 0, 120 a
    minute by default), since every client here comes from 127.0.0.1 (haproxy has no cap
    either); max_pending_per_source is raised to 1000 for the same reason."""
    d = env.work / label
    d.mkdir(mode=0o700)
    access = d / "access"
    access.write_text(f'permitlisten="{NAME}:443" {env.keys.agent.public_line}\n')
    access.chmod(0o600)
    port, https = free_port(), free_port()
    web = WebConfig(
        https_listen=f"127.0.0.1:{https}",
        public=[NAME],
        max_new_per_source=0,
        max_pending_per_source=1000,
    )
    cfg = write_toml(
        d / "bastion.toml",
        "bastion",
        bastion_config(
            env.keys,
            access,
            port,
            web=web,
            audit_log=d / "audit.jsonl",
            admin_socket=d / "bastion.sock",
        ),
    )
    prof = (
        [] if profile_dir is None else ["-m", "cProfile", "-o", str(profile_dir / "bastion.prof")]
    )
    argv = [sys.executable, *prof, "-m", "sshtunnel_mgr", "bastion", "--config", str(cfg)]
    bastion = await env.procs.spawn(
        argv if prof else [*SSHTUN, "bastion", "--config", str(cfg)], d / "bastion.log"
    )
    await wait_log(bastion, d / "bastion.log", "web listening")
    tunnel = TunnelConfig(name=NAME, port=443, target=f"127.0.0.1:{home.port}", tls="passthrough")
    acfg = agent_config(env.keys, port, [(NAME, 443, tunnel.target)], admin_socket=d / "agent.sock")
    acfg = acfg.model_copy(update={"tunnels": [tunnel]})
    agent_file = write_toml(d / "agent.toml", "agent", acfg)
    prof = [] if profile_dir is None else ["-m", "cProfile", "-o", str(profile_dir / "agent.prof")]
    agent = await env.procs.spawn(
        [sys.executable, *prof, "-m", "sshtunnel_mgr", "up", "--config", str(agent_file)],
        d / "agent.log",
    )
    await wait_log(agent, d / "agent.log", "published bastion=", fail=("publish refused",))
    side = Side("sshtun", https, [proc_cpu(bastion)], proc_cpu(agent), [agent, bastion])
    await ready(side, home)
    return side


async def start_reference(env: Env, home: Home, cipher: str) -> Side:
    """OpenSSH's sshd as the bastion, ``ssh -N -R 127.0.0.1:P:127.0.0.1:HOME`` as the
    agent (no -v: nothing logged per connection), haproxy routing by SNI to P."""
    assert SSH is not None and HAPROXY is not None
    sshd = await start_ref_bastion(env)
    d = env.work / "reference"
    d.mkdir()
    fwd = free_port()
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {bastion_pub(env.keys)}\n")
    ciphers = "" if cipher == "default" else f"  Ciphers {cipher}\n"
    agent_cfg = d / "agent_ssh_config"
    agent_cfg.write_text(
        f"Host refbastion\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {USER}\n\n"
        + HOST_STAR.format(
            known=known,
            identity=env.keys.agent.path,
            extra=ciphers + "  ExitOnForwardFailure yes\n",
        ).replace("ServerAliveInterval 5", "ServerAliveInterval 15")
    )
    argv = [SSH, "-F", str(agent_cfg), "-N", "-R", f"127.0.0.1:{fwd}:127.0.0.1:{home.port}"]
    agent = await env.procs.spawn([*argv, "refbastion"], d / "agent.log")
    front = free_port()
    (d / "haproxy.cfg").write_text(
        "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 10s\n"
        "  timeout client 120s\n  timeout server 120s\n\n"
        f"frontend web\n  bind 127.0.0.1:{front}\n  tcp-request inspect-delay 10s\n"
        "  tcp-request content accept if { req.ssl_hello_type 1 }\n"
        f"  use_backend home if {{ req.ssl_sni -i {NAME} }}\n\n"
        f"backend home\n  server tunnel 127.0.0.1:{fwd}\n"
    )
    haproxy = await env.procs.spawn(
        [HAPROXY, "-db", "-f", str(d / "haproxy.cfg")], d / "haproxy.log"
    )
    side = Side(
        "reference",
        front,
        [proc_cpu(haproxy), proc_cpu(sshd.bastion, tree=True)],
        proc_cpu(agent),
        [haproxy, agent, sshd.bastion],
    )
    await ready(side, home)
    return side


async def ready(side: Side, home: Home, timeout: float = 60) -> None:
    """Wait until a GET through the side's front returns the home page."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for proc in side.procs:
            if proc.returncode is not None:
                raise RuntimeError(f"{side.kind}: process {proc.pid} exited {proc.returncode}")
        out, err, code = await run_tool(
            [*curl_base(side, home), "-o", "/dev/null", "-w", "%{http_code}", url(side)], 15
        )
        if code == 0 and out.strip() == "200":
            return
        last = err.strip() or out.strip()
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{side.kind}: no page through 127.0.0.1:{side.front} in {timeout}s: {last}")


# Clients -------------------------------------------------------------------------------------
def url(side: Side, path: str = "/") -> str:
    return f"https://{NAME}:{side.front}{path}"


def curl_base(side: Side, home: Home) -> list[str]:
    assert CURL is not None
    return [
        CURL,
        "-sS",
        "--resolve",
        f"{NAME}:{side.front}:127.0.0.1",
        "--cacert",
        str(home.pki.ca),
        "--max-time",
        "120",
    ]


async def run_tool(argv: Sequence[str], timeout: float) -> tuple[str, str, int | None]:
    """Run a client to its end (killed by its PID after ``timeout``): stdout, stderr, code."""
    proc = await launch(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        return "", f"killed after {timeout:.0f}s", None
    return out.decode(errors="replace"), err.decode(errors="replace"), proc.returncode


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


# The run ---------------------------------------------------------------------------------------
METRICS = ("rps", "ttfb", "bulk")


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
            "sshtun": await start_sshtun(env, home),
            "reference": await start_reference(env, home, args.cipher),
        }
        log(
            f"both sides up: sshtun https 127.0.0.1:{sides['sshtun'].front}, "
            f"haproxy 127.0.0.1:{sides['reference'].front}; home nginx :{home.port}"
        )
        for side in sides.values():  # warm-up: a few of each, not counted
            await rps_run(side, home, min(50, args.requests), min(4, args.clients))
        work_of: dict[str, Callable[[Side], Awaitable[WebRun]]] = {
            "rps": lambda s: rps_run(s, home, args.requests, args.clients),
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


# The report ------------------------------------------------------------------------------------
def spread(xs: Sequence[float]) -> dict[str, float]:
    if not xs:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def summarize(runs: dict[str, dict[str, list[WebRun]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in SIDES:
        rps, ttfb, bulk = (runs[m][kind] for m in METRICS)
        pooled = [x for run in ttfb for x in run.samples]
        requests = sum(r.units for r in rps) or float("nan")
        gib = sum(r.units for r in bulk) / 2**30 or float("nan")
        out[kind] = {
            "rps": spread([r.value for r in rps]),
            "ttfb_p50_ms": {
                **spread([percentile(r.samples, 50) for r in ttfb]),
                "pooled": percentile(pooled, 50),
            },
            "ttfb_p99_ms": {
                **spread([percentile(r.samples, 99) for r in ttfb]),
                "pooled": percentile(pooled, 99),
            },
            "bulk_mb_s": spread([r.value for r in bulk]),
            "bastion_cpu_ms_per_request": sum(r.bastion_cpu_s for r in rps) * 1000 / requests,
            "agent_cpu_ms_per_request": sum(r.agent_cpu_s for r in rps) * 1000 / requests,
            "bastion_cpu_s_per_gib": sum(r.bastion_cpu_s for r in bulk) / gib,
            "agent_cpu_s_per_gib": sum(r.agent_cpu_s for r in bulk) / gib,
            "ttfb_samples": len(pooled),
        }
    return out


# (metric key, label, higher is better, pooled value?)
ROWS = (
    ("rps", "new-connection HTTPS requests/s", True),
    ("ttfb_p50_ms", "time to first byte, p50 (ms)", False),
    ("ttfb_p99_ms", "time to first byte, p99 (ms)", False),
    ("bulk_mb_s", "bulk download (MB/s)", True),
)


def headline(entry: dict[str, float]) -> float:
    """The figure compared: the pooled percentile for TTFB, else the median of the rounds."""
    return entry.get("pooled", entry["median"])


def ratios(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, _label, higher in ROWS:
        a, b = headline(summary["sshtun"][key]), headline(summary["reference"][key])
        r = a / b if b else float("nan")
        out[key] = {
            "ratio": r,
            "aim": f"{'>=' if higher else '<='} {AIM}",
            "pass": r >= AIM if higher else r <= AIM,
        }
    return out


def table(summary: dict[str, Any], rat: dict[str, dict[str, Any]]) -> str:
    def fig(x: float) -> str:
        return "-" if math.isnan(x) else (f"{x:.0f}" if x >= 100 else f"{x:.1f}")

    rows = [("metric", "sshtun", "reference", "sshtun/ref", "aim", "")]
    for key, label, _higher in ROWS:
        cells = []
        for kind in SIDES:
            e = summary[kind][key]
            cells.append(f"{fig(headline(e))} ({fig(e['min'])}-{fig(e['max'])})")
        r = rat[key]
        rows.append((label, *cells, f"{r['ratio']:.2f}", r["aim"], "PASS" if r["pass"] else "FAIL"))
    for key, label in (
        ("bastion_cpu_ms_per_request", "bastion CPU per request (ms)"),
        ("agent_cpu_ms_per_request", "agent CPU per request (ms)"),
        ("bastion_cpu_s_per_gib", "bastion CPU per GiB, bulk (s)"),
        ("agent_cpu_s_per_gib", "agent CPU per GiB, bulk (s)"),
    ):
        a, b = summary["sshtun"][key], summary["reference"][key]
        rows.append((label, f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}" if b else "-", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (1..30)")
    p.add_argument("--requests", type=int, default=2000, help="h2load requests per run")
    p.add_argument("--clients", type=int, default=8, help="h2load concurrent connections")
    p.add_argument("--ttfb", type=int, default=200, help="curl requests per TTFB run")
    p.add_argument("--bulk-mib", type=int, default=256, help="size of the big file (MiB)")
    p.add_argument("--nginx-workers", type=int, default=1)
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
        f"{args.cipher}; nginx workers {args.nginx_workers}"
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
