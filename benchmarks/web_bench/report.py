"""Medians with the min-max of the rounds, pooled TTFB percentiles, ratios against the aims,
the table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from web_bench.clients import WebRun, percentile
from web_bench.scene import AIM, SIDES

METRICS = ("rps", "ttfb", "bulk")


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


# (metric key, label, higher is better)
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
