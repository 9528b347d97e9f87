"""The results as a table against the aims, and the environment they were measured in."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import asyncssh

import sshtunnel_mgr
from bench_tunnel.common import AIM_IDLE_KIB, AIM_SETUP_RATIO, AIM_THROUGHPUT_RATIO, DIRECTIONS
from bench_tunnel.source import ROOT, SRC, SRC_LABEL
from tests.harness import (
    SSH,
)


# Report ---------------------------------------------------------------------------------------
def fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "FAIL")


def report(res: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    rows: list[tuple[str, str, str, str, str, str]] = []
    aims: dict[str, Any] = {}

    def row(
        metric: str,
        a: float,
        b: float,
        aim: str = "",
        ok: bool | None = None,
        digits: int = 1,
        ratio: bool = True,
    ) -> None:
        r = a / b if ratio and b else float("nan")
        rows.append(
            (metric, fmt(a, digits), fmt(b, digits), fmt(r, 2) if ratio else "", aim, verdict(ok))
        )

    for c, t in res["throughput"].items():
        for d in DIRECTIONS:
            a, b = t["sshtun"][d], t["openssh"][d]
            ratio = a["median_mib_s"] / b["median_mib_s"]
            is_aim = c == "aes128-gcm"
            ok = ratio >= AIM_THROUGHPUT_RATIO if is_aim else None
            if is_aim:
                aims[f"throughput_{d}_aes128-gcm"] = {
                    "ratio": ratio,
                    "aim": f">= {AIM_THROUGHPUT_RATIO}",
                    "pass": ok,
                }
            row(
                f"{d} {c}, {t['mib']} MiB (MiB/s)",
                a["median_mib_s"],
                b["median_mib_s"],
                f">= {AIM_THROUGHPUT_RATIO}x" if is_aim else "",
                ok,
            )
            rows.append(
                (
                    "  min-max of runs (MiB/s)",
                    f"{a['min_mib_s']:.0f}-{a['max_mib_s']:.0f}",
                    f"{b['min_mib_s']:.0f}-{b['max_mib_s']:.0f}",
                    "",
                    "",
                    "",
                )
            )
    if res["setup"]:
        a, b = res["setup"]["sshtun"]["median_ms"], res["setup"]["openssh"]["median_ms"]
        ok = a / b <= AIM_SETUP_RATIO
        aims["setup_time"] = {"ratio": a / b, "aim": f"<= {AIM_SETUP_RATIO}", "pass": ok}
        row("set-up ssh -J homebox true (ms)", a, b, f"<= {AIM_SETUP_RATIO}x", ok, digits=0)
        direct = res["setup"]["direct"]["median_ms"]
        rows.append(
            ("  same ssh straight to home sshd (ms)", f"{direct:.0f}", f"{direct:.0f}", "", "", "")
        )
        row("  the jump's share: -J minus straight (ms)", a - direct, b - direct, digits=0)
        row(
            "  bastion CPU per set-up (ms)",
            res["setup"]["sshtun"]["bastion_cpu_ms"],
            res["setup"]["openssh"]["bastion_cpu_ms"],
            digits=0,
        )
    if res["memory"]:
        m = res["memory"]
        a, b = m["sshtun"], m["openssh"]
        n = m["count"]
        row("bastion RSS, idle (MiB)", a["idle_rss_kib"] / 1024, b["idle_rss_kib"] / 1024)
        row(
            f"bastion RSS, {n} idle agents (MiB)",
            a["loaded_rss_kib"] / 1024,
            b["loaded_rss_kib"] / 1024,
        )
        ok = a["per_conn_rss_kib"] <= AIM_IDLE_KIB
        aims["idle_memory_per_connection"] = {
            "kib": a["per_conn_rss_kib"],
            "aim": f"<= {AIM_IDLE_KIB} KiB",
            "pass": ok,
        }
        row(
            "per idle agent conn, RSS (KiB)",
            a["per_conn_rss_kib"],
            b["per_conn_rss_kib"],
            f"<= {AIM_IDLE_KIB:.0f} KiB",
            ok,
        )
        row("per idle agent conn, PSS (KiB)", a["per_conn_pss_kib"], b["per_conn_pss_kib"])
    for c, t in res["throughput"].items():
        for d in DIRECTIONS:
            a, b = t["sshtun"][d], t["openssh"][d]
            row(
                f"bastion CPU/GiB, {d} {c} (s)",
                a["bastion_cpu_s_per_gib"],
                b["bastion_cpu_s_per_gib"],
                digits=2,
            )
            row(
                f"agent CPU/GiB, {d} {c} (s)",
                a["agent_cpu_s_per_gib"],
                b["agent_cpu_s_per_gib"],
                digits=2,
            )

    head = ("metric", "sshtun", "OpenSSH", "ratio", "aim", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [head, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines), aims


def environment() -> dict[str, Any]:
    def cmd(*argv: str) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10)
            return (p.stdout + p.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import cryptography

    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssh": cmd(SSH or "ssh", "-V"),
        "asyncssh": asyncssh.__version__,
        "cryptography": cryptography.__version__,
        "sshtunnel_mgr": sshtunnel_mgr.__version__,
        "code_under_test": SRC_LABEL,
        "sshtunnel_mgr_imported_from": str(Path(sshtunnel_mgr.__file__).parent),
        "git_head": cmd("git", "rev-parse", "--short", "HEAD"),
        "uncommitted_in_package": (
            cmd("git", "status", "--porcelain", "--", "sshtunnel_mgr").splitlines()
            if SRC == ROOT
            else []
        ),
    }
