"""The supervisor's ``status`` of the web front from its workers' snapshots (merge.py),
and the per-key web counts on the control line (wire.py), as plain data."""

from __future__ import annotations

from sshtunnel_mgr.bastion.workers import merge, wire


def _front(connections: int, routed: int, by_key: dict[str, int]) -> dict[str, object]:
    return {
        "https": ["127.0.0.1:8443"],
        "http": ["127.0.0.1:8080"],
        "public": ["*.test"],
        "connections": connections,
        "deciding": 0,
        "routed_open": routed,
        "idle_timeout": 300.0,
        "by_key": by_key,
    }


def test_web_fronts_summed_and_shown_per_worker() -> None:
    answers = [
        {"ok": True, "worker": 0, "web": _front(2, 1, {"SHA256:a": 1})},
        {"ok": True, "worker": 1, "web": _front(3, 2, {"SHA256:a": 1, "SHA256:b": 1})},
    ]
    front = merge.status(["127.0.0.1:22"], [], answers)["web"]
    assert front["https"] == ["127.0.0.1:8443"] and front["public"] == ["*.test"]
    assert (front["connections"], front["routed_open"]) == (5, 3)
    assert front["by_key"] == {"SHA256:a": 2, "SHA256:b": 1}
    assert [(w["worker"], w["routed_open"]) for w in front["workers"]] == [(0, 1), (1, 2)]


def test_no_web_front_no_web_status() -> None:
    assert merge.status([], [], [{"ok": True, "worker": 0, "web": None}])["web"] is None


def test_usage_message_carries_web_connections() -> None:
    message = wire.decode(wire.encode(wire.usage_message(1, "SHA256:a", [1, 2, 3])))
    assert message == {
        "op": "usage", "worker": 1, "key": "SHA256:a", "conns": 1, "chans": 2, "web": 3
    }  # fmt: skip
