"""The home TLS server (nginx) and the two sides: the sshtun bastion and agent, or haproxy +
OpenSSH's sshd + ``ssh -R``; their start and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench_tunnel import (
    HOST_STAR,
    Env,
    Procs,
    cpu_seconds,
    launch,
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
    env: Env, home: Home, profile_dir: Path | None = None, label: str = "sshtun", workers: int = 1
) -> Side:
    """The sshtun bastion with [bastion.web] and the agent publishing cloud.test:443 with
    tls = "passthrough" to the home nginx; both as shipped, audit log on. The one change
    from the defaults: no cap on new connections per source (max_new_per_source = 0, 120 a
    minute by default), since every client here comes from 127.0.0.1 (haproxy has no cap
    either); max_pending_per_source is raised to 1000 for the same reason. ``workers``: the
    bastion's (over 1, its CPU is the supervisor's process tree)."""
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
            workers=workers,
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
    cpu = proc_cpu(bastion, tree=workers > 1)
    side = Side("sshtun", https, [cpu], proc_cpu(agent), [agent, bastion])
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


# Client helpers (readiness here; the measured runs in clients.py) ---------------------
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
