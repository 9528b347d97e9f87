"""Side-by-side tables for the attack benchmark: one line per measure, the sshtun and the
OpenSSH value (the median, and the min-max spread over the runs), and whether sshtun is
better. Pure formatting, no I/O."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Getter = Callable[[dict[str, Any]], float | None]


@dataclass
class Row:
    label: str
    get: Getter
    better: str | None  # "lower" | "higher" | None (for explanation only)
    digits: int = 1
    total: Getter | None = None  # shown as "ok/total"
    tolerance: float = 0.0  # closer than this counts as the same (noise, e.g. allocator)


def key(name: str) -> Getter:
    def get(run: dict[str, Any]) -> float | None:
        value = run
        for part in name.split("/"):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return float(value) if isinstance(value, int | float) else None

    return get


def const(value: float) -> Getter:
    return lambda _run: value


def spread(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    text = f"{med:.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    return text


def cell(row: Row, runs: list[dict[str, Any]]) -> tuple[str, float | None]:
    values = [v for v in (row.get(r) for r in runs) if v is not None]
    if not values:
        return "-", None
    text = spread(values, row.digits)
    if row.total is not None:
        totals = [t for t in (row.total(r) for r in runs) if t is not None]
        if totals:
            text = text.replace(" (", f"/{statistics.median(totals):.0f} (", 1)
            if "/" not in text:
                text += f"/{statistics.median(totals):.0f}"
            # Compare shares, not counts: the totals of the two sides may differ.
            shares = [v / t for v, t in zip(values, totals, strict=False) if t]
            return text, statistics.median(shares) if shares else None
    return text, statistics.median(values)


def verdict(row: Row, ours: float | None, theirs: float | None) -> str:
    if row.better is None or ours is None or theirs is None:
        return ""
    if abs(ours - theirs) <= row.tolerance + 1e-9:
        return "same" if row.tolerance == 0 else f"same (within {row.tolerance:g})"
    return "yes" if (ours < theirs) == (row.better == "lower") else "no"


def table(rows: Sequence[Row], runs: Sequence[dict[str, dict[str, Any]]]) -> str:
    """A markdown table; ``runs[i]["sshtun"]`` and ``runs[i]["openssh"]`` hold run i's values."""
    lines = [
        "| measure | sshtun | OpenSSH sshd | sshtun better? |",
        "|---|---|---|---|",
    ]
    for row in rows:
        ours, o_med = cell(row, [r["sshtun"] for r in runs])
        theirs, t_med = cell(row, [r["openssh"] for r in runs])
        lines.append(f"| {row.label} | {ours} | {theirs} | {verdict(row, o_med, t_med)} |")
    return "\n".join(lines)
