"""The supervisor's answers from its workers' answers: ``status``, ``reload``, metrics."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sshtunnel_mgr.runtime.metrics import BastionMetrics


def status(
    listening: list[str], workers: list[dict[str, Any]], answers: list[Any]
) -> dict[str, Any]:
    """``answers[i]``: worker i's status, or None when it did not answer."""
    got = [a for a in answers if isinstance(a, dict) and a.get("ok")]
    names = sorted(
        (n for a in got for n in a.get("names", [])),
        key=lambda n: (n["name"], n["port"], n["conn"]),
    )
    first = got[0] if got else {}
    return {
        "ok": True,
        "role": "bastion",
        "listening": listening,
        "host_keys": first.get("host_keys", []),
        "connections": sum(a.get("connections", 0) for a in got),
        "access_keys": first.get("access_keys", 0),
        "names": names,
        "web": web(got),
        "asyncssh": first.get("asyncssh"),
        "workers": workers,
    }


def web(answers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The workers' web front snapshots (front.py) merged: the listeners and rules are
    every worker's (one socket group), the counts add up; each worker's in ``workers``."""
    found = [(a.get("worker"), a["web"]) for a in answers if isinstance(a.get("web"), dict)]
    if not found:
        return None
    by_key: Counter[str] = Counter()
    for _, front in found:
        by_key.update(front.get("by_key", {}))
    total = {k: sum(int(f.get(k) or 0) for _, f in found) for k in WEB_COUNTS}
    rows = [{"worker": w, **{k: f.get(k, 0) for k in WEB_COUNTS}} for w, f in found]
    return {**found[0][1], **total, "by_key": dict(by_key), "workers": rows}


WEB_COUNTS = ("connections", "deciding", "routed_open")


def reload(answers: list[Any]) -> dict[str, Any]:
    """One answer for ``sshtun reload`` / ``keys revoke``: every worker's, merged."""
    bad = [a for a in answers if not (isinstance(a, dict) and a.get("ok"))]
    if bad:
        errors = {str(a.get("error")) if isinstance(a, dict) else str(a) for a in bad}
        return {"ok": False, "error": "; ".join(sorted(errors))}
    first = answers[0] if answers else {}
    notes: list[str] = []
    for a in answers:
        notes += [n for n in a.get("notes", []) if n not in notes]
    return {
        "ok": True,
        "host_keys": first.get("host_keys", []),
        "keys": first.get("keys", 0),
        "revoked": [fp for a in answers for fp in a.get("revoked", [])],
        "withdrawn": [n for a in answers for n in a.get("withdrawn", [])],
        "notes": notes,
        "workers": len(answers),
    }


def metrics(found: list[dict[str, Any]], agent_connections: int, names: int) -> BastionMetrics:
    """Every worker's numbers summed (routes: the supervisor's global table)."""
    counters: Counter[str] = Counter()
    for m in found:
        counters.update(m.get("counters", {}))

    def total(key: str) -> int:
        return sum(int(m.get(key) or 0) for m in found)

    webs = [int(m["web_open"]) for m in found if m.get("web_open") is not None]
    return BastionMetrics(
        connections=total("connections"),
        agent_connections=agent_connections,
        published_names=names,
        routed_channels=total("routed_channels"),
        counters=dict(counters),
        audit_records_dropped=total("audit_records_dropped"),
        startups_active=total("startups_active"),
        startups_waiting=total("startups_waiting"),
        bytes_to_home=total("bytes_to_home"),
        bytes_from_home=total("bytes_from_home"),
        web_open=sum(webs) if webs else None,
    )
