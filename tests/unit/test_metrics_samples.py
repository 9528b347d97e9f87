"""Metrics from plain typed values (runtime/metrics.py): a ``BastionMetrics`` snapshot and
the agent's link statuses in, Prometheus samples and text out; no running role needed."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

import pytest

from sshtunnel_mgr.agent.status import LinkStatus
from sshtunnel_mgr.runtime.metrics import BastionMetrics, Sample, agent_samples, bastion_samples

pytest.importorskip("prometheus_client")


BASE = BastionMetrics(
    connections=3,
    agent_connections=1,
    published_names=2,
    routed_channels=1,
    counters=Counter({"routed_ok": 5, "auth_failures": 2, "bytes_to_home": 10}),
    audit_records_dropped=0,
    startups_active=1,
    startups_waiting=0,
    bytes_to_home=15,
    bytes_from_home=7,
)


def _table(samples: Iterable[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(n, tuple(sorted(labels.items()))): v for n, _, _, labels, v in samples}


def test_bastion_samples_from_a_snapshot() -> None:
    table = _table(bastion_samples(BASE))
    assert table[("sshtun_bastion_connections", ())] == 3
    assert table[("sshtun_bastion_routed_connections", (("outcome", "ok"),))] == 5
    assert table[("sshtun_bastion_routed_connections", (("outcome", "refused"),))] == 0
    assert table[("sshtun_bastion_auth_failures", ())] == 2
    assert table[("sshtun_bastion_bytes", (("direction", "to_home"),))] == 15
    assert table[("sshtun_bastion_startups", (("state", "started"),))] == 1
    assert not any(name.startswith("sshtun_bastion_web") for name, _ in table)


def test_no_startup_gauges_before_the_listener_and_web_ones_only_when_on() -> None:
    table = _table(bastion_samples(replace(BASE, startups_active=None, startups_waiting=None)))
    assert not any(name == "sshtun_bastion_startups" for name, _ in table)
    counters = Counter({"web_routed_ok": 4, "web_refused_unknown_name": 1, "other": 9})
    table = _table(bastion_samples(replace(BASE, web_open=2, counters=counters)))
    assert table[("sshtun_bastion_web_open", ())] == 2
    assert table[("sshtun_bastion_web_connections", (("outcome", "routed"),))] == 4
    key = ("sshtun_bastion_web_connections", (("outcome", "refused"), ("reason", "unknown_name")))
    assert table[key] == 1


def test_agent_samples_from_link_statuses() -> None:
    up = LinkStatus("b1:2222", state="up", published=["homebox:22"], connects=3)
    down = LinkStatus("b2:2222", state="backoff")
    table = _table(agent_samples(True, [up, down]))
    assert table[("sshtun_agent_healthy", ())] == 1.0
    assert table[("sshtun_agent_up", (("bastion", "b1:2222"),))] == 1.0
    assert table[("sshtun_agent_up", (("bastion", "b2:2222"),))] == 0.0
    assert table[("sshtun_agent_reconnects", (("bastion", "b1:2222"),))] == 2
    assert table[("sshtun_agent_published_names", (("bastion", "b1:2222"),))] == 1
    assert math.isnan(table[("sshtun_agent_seconds_since_last_connect", (("bastion", "b2:2222"),))])


def test_the_endpoint_text_is_rendered_from_the_samples() -> None:
    from prometheus_client import generate_latest

    from sshtunnel_mgr.runtime.metrics import MetricsServer

    server = MetricsServer("127.0.0.1", 0, lambda: bastion_samples(BASE))
    text = generate_latest(server.registry).decode()
    assert "sshtun_bastion_connections 3.0" in text
    assert 'sshtun_bastion_routed_connections_total{outcome="ok"} 5.0' in text
