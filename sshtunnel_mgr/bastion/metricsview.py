"""What a running bastion shows its metrics endpoint: one ``BastionMetrics`` taken from
its state at scrape time (``runtime/metrics.py`` turns it into samples)."""

from __future__ import annotations

from sshtunnel_mgr.bastion.listener import Listener
from sshtunnel_mgr.bastion.state import BastionState
from sshtunnel_mgr.runtime.metrics import BastionMetrics


def bastion_metrics(
    state: BastionState, listener: Listener | None, web_open: int | None = None
) -> BastionMetrics:
    """``listener`` is None until the bastion listens; ``web_open`` is None while the web
    front is off."""
    admission = None if listener is None else listener.admission
    live_to = live_from = 0
    for conn in state.connections.values():
        for stats in conn.route_stats.values():
            to_home, from_home = stats.totals()
            live_to += to_home - stats.bytes_to_home
            live_from += from_home - stats.bytes_from_home
    counters = state.counters
    return BastionMetrics(
        connections=len(state.connections),
        agent_connections=len({r.conn_id for r in state.routes}),
        published_names=len(state.routes),
        routed_channels=state.routed_channels(),
        counters=dict(counters),
        audit_records_dropped=state.audit.write_errors,
        startups_active=None if admission is None else admission.total_active,
        startups_waiting=None if admission is None else admission.total_waiting,
        bytes_to_home=counters["bytes_to_home"] + live_to,
        bytes_from_home=counters["bytes_from_home"] + live_from,
        web_open=web_open,
    )
