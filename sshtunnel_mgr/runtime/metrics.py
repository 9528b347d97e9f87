"""Optional Prometheus metrics (``pip install 'sshtunnel_mgr[metrics]'``).

Values are read from the running service when scraped (a custom collector), so the data
path pays nothing but a few integer increments. The endpoint is a tiny asyncio HTTP
server on loopback by default; it answers ``GET /metrics`` and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.runtime.metrics")

Sample = tuple[str, str, str, dict[str, str], float]  # name, type, help, labels, value


def _require() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "metrics_listen is set but prometheus-client is not installed",
            hint="pip install 'sshtunnel_mgr[metrics]'",
        ) from None
    return prometheus_client


class _Collector:
    def __init__(self, samples: Callable[[], Iterable[Sample]]) -> None:
        self._samples = samples

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, Any] = {}
        for name, kind, doc, labels, value in self._samples():
            family = families.get(name)
            if family is None:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                family = families[name] = cls(name, doc, labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


class MetricsServer:
    def __init__(self, host: str, port: int, samples: Callable[[], Iterable[Sample]]) -> None:
        prometheus_client = _require()
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(_Collector(samples))
        self._generate = prometheus_client.generate_latest
        self.host, self.port = host, port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {self.host}:{self.port}: {exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        event(log, logging.INFO, "metrics on", url=f"http://{self.host}:{self.port}/metrics")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            first = request.split(b"\r\n", 1)[0].split()
            if len(first) >= 2 and first[0] == b"GET" and first[1].split(b"?")[0] == b"/metrics":
                body: bytes = self._generate(self.registry)
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body, head = (
                    b"not found\n",
                    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n",
                )
            writer.write(
                head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                await self._server.wait_closed()


def bastion_samples(bastion: Any) -> Iterator[Sample]:
    """sshtun_bastion_* from a running ``Bastion`` (read at scrape time)."""
    state = bastion.state
    counters = state.counters
    agents = {r.conn_id for r in state.routes}
    yield (
        "sshtun_bastion_connections",
        "gauge",
        "Open SSH connections",
        {},
        len(state.connections),
    )
    yield (
        "sshtun_bastion_agent_connections",
        "gauge",
        "Connections serving names",
        {},
        len(agents),
    )
    yield (
        "sshtun_bastion_published_names",
        "gauge",
        "Published name:port routes",
        {},
        len(state.routes),
    )
    yield (
        "sshtun_bastion_routed_channels",
        "gauge",
        "Client channels open now",
        {},
        state.routed_channels(),
    )
    for outcome in ("ok", "refused", "target_failed", "abandoned"):
        yield (
            "sshtun_bastion_routed_connections",
            "counter",
            "Routed channel requests",
            {"outcome": outcome},
            counters[f"routed_{outcome}"],
        )
    yield (
        "sshtun_bastion_auth_failures",
        "counter",
        "Refused authentications",
        {},
        counters["auth_failures"],
    )
    yield (
        "sshtun_bastion_publish_refused",
        "counter",
        "Refused tcpip-forward requests",
        {},
        counters["publish_refused"],
    )
    yield (
        "sshtun_bastion_sessions_refused",
        "counter",
        "Session channels refused (max_sessions_per_connection)",
        {},
        counters["sessions_refused"],
    )
    yield (
        "sshtun_bastion_audit_records_dropped",
        "counter",
        "Audit log records not written (the disk was full or the file unwritable)",
        {},
        state.audit.write_errors,
    )
    yield (
        "sshtun_bastion_penalties",
        "counter",
        "Source cool-downs started after failed authentications",
        {},
        counters["penalties"],
    )
    for reason, key in (("penalty", "penalty_refused"), ("key_limit", "key_limit_refused")):
        yield (
            "sshtun_bastion_refused_connections",
            "counter",
            "Connections refused by a source cool-down or a per-key limit",
            {"reason": reason},
            counters[key],
        )
    listener = getattr(bastion, "listener", None)
    if listener is not None:
        for kind, value in (
            ("started", listener.admission.total_active),
            ("waiting", listener.admission.total_waiting),
        ):
            yield (
                "sshtun_bastion_startups",
                "gauge",
                "Connections not logged in yet: in their key exchange, or waiting for a slot",
                {"state": kind},
                value,
            )
    for outcome in ("queued", "refused", "evicted", "wait_expired"):
        yield (
            "sshtun_bastion_startup_events",
            "counter",
            "Connections that waited for a slot, were dropped before their key exchange, "
            "were evicted at max_startups, or waited too long",
            {"outcome": outcome},
            counters[f"startup_{outcome}"],
        )
    live_to = live_from = 0
    for conn in state.connections.values():
        for stats in conn.route_stats.values():
            to_home, from_home = stats.totals()
            live_to += to_home - stats.bytes_to_home
            live_from += from_home - stats.bytes_from_home
    yield (
        "sshtun_bastion_bytes",
        "counter",
        "Bytes routed",
        {"direction": "to_home"},
        counters["bytes_to_home"] + live_to,
    )
    yield (
        "sshtun_bastion_bytes",
        "counter",
        "Bytes routed",
        {"direction": "from_home"},
        counters["bytes_from_home"] + live_from,
    )


def agent_samples(agent: Any) -> Iterator[Sample]:
    """sshtun_agent_* from a running ``Agent``."""
    now = time.time()
    yield (
        "sshtun_agent_healthy",
        "gauge",
        "1 if every up link passed its probe",
        {},
        1.0 if agent.healthy else 0.0,
    )
    for link in agent.links:
        st = link.status
        labels = {"bastion": st.bastion}
        yield (
            "sshtun_agent_up",
            "gauge",
            "1 while the link is up",
            labels,
            1.0 if st.state == "up" else 0.0,
        )
        yield (
            "sshtun_agent_published_names",
            "gauge",
            "Names published on the link",
            labels,
            len(st.published),
        )
        yield (
            "sshtun_agent_reconnects",
            "counter",
            "Connections after the first",
            labels,
            max(0, st.connects - 1),
        )
        since = now - st.last_connected_at if st.last_connected_at else float("nan")
        yield (
            "sshtun_agent_seconds_since_last_connect",
            "gauge",
            "Seconds since the last successful connection",
            labels,
            since,
        )
