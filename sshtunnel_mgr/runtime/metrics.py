"""Optional Prometheus metrics (``pip install 'sshtunnel_mgr[metrics]'``).

Values are read from the running service when scraped (a custom collector), so the data
path pays nothing but a few integer increments. The roles hand in plain typed values (a
``BastionMetrics`` snapshot; the agent's health and its ``LinkMetrics``), never themselves:
this module reads no role's internals. The endpoint is a tiny asyncio HTTP
server on loopback by default; it answers ``GET /metrics`` and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.hostport import join_host_port
from sshtunnel_mgr.runtime.logsetup import event

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

log = logging.getLogger("sshtunnel_mgr.runtime.metrics")

Sample = tuple[str, str, str, dict[str, str], float]  # name, type, help, labels, value


def _collector(samples: Callable[[], Iterable[Sample]]) -> Collector:
    """A collector that reads ``samples()`` at each scrape (prometheus_client is optional,
    so it is imported here, not at the top)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector as Base

    class SampleCollector(Base):
        def collect(self) -> Iterator[Metric]:
            families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
            for name, kind, doc, labels, value in samples():
                family = families.get(name)
                if family is None:
                    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    family = families[name] = cls(name, doc, labels=sorted(labels))
                family.add_metric([labels[k] for k in sorted(labels)], value)
            yield from families.values()

    return SampleCollector()


class MetricsServer:
    def __init__(self, host: str, port: int, samples: Callable[[], Iterable[Sample]]) -> None:
        try:
            from prometheus_client import CollectorRegistry, generate_latest
        except ImportError:
            raise ConfigError(
                "metrics_listen is set but prometheus-client is not installed",
                hint="pip install 'sshtunnel_mgr[metrics]'",
            ) from None
        self.registry = CollectorRegistry()
        self.registry.register(_collector(samples))
        self._generate = generate_latest
        self.host, self.port = host, port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            where = join_host_port(self.host, self.port)
            raise ConfigError(f"cannot serve metrics on {where}: {exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        url = f"http://{join_host_port(self.host, self.port)}/metrics"
        event(log, logging.INFO, "metrics on", url=url)

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


@dataclass(frozen=True)
class BastionMetrics:
    """What a running bastion shows its metrics endpoint, read at scrape time
    (``bastion/metricsview.py`` takes it from the bastion's state)."""

    connections: int
    agent_connections: int
    published_names: int
    routed_channels: int
    counters: Mapping[str, int]  # the bastion's event counters; a missing one is 0
    audit_records_dropped: int
    startups_active: int | None  # None until the listener runs
    startups_waiting: int | None
    bytes_to_home: int  # closed channels and live ones
    bytes_from_home: int
    web_open: int | None = None  # web connections open now; None: the web front is off


class LinkMetrics(Protocol):
    """What the agent's metrics read of one link (``agent.status.LinkStatus`` is one)."""

    @property
    def bastion(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def published(self) -> Sequence[str]: ...
    @property
    def connects(self) -> int: ...
    @property
    def last_connected_at(self) -> float | None: ...


def bastion_samples(m: BastionMetrics) -> Iterator[Sample]:
    """sshtun_bastion_* from a running bastion's ``BastionMetrics``."""
    counters = m.counters

    def counter(name: str, doc: str, key: str, labels: dict[str, str] | None = None) -> Sample:
        return (name, "counter", doc, labels or {}, counters.get(key, 0))

    yield ("sshtun_bastion_connections", "gauge", "Open SSH connections", {}, m.connections)
    yield (
        "sshtun_bastion_agent_connections",
        "gauge",
        "Connections serving names",
        {},
        m.agent_connections,
    )
    yield (
        "sshtun_bastion_published_names",
        "gauge",
        "Published name:port routes",
        {},
        m.published_names,
    )
    yield (
        "sshtun_bastion_routed_channels",
        "gauge",
        "Client channels open now",
        {},
        m.routed_channels,
    )
    for outcome in ("ok", "refused", "target_failed", "abandoned"):
        yield counter(
            "sshtun_bastion_routed_connections",
            "Routed channel requests",
            f"routed_{outcome}",
            {"outcome": outcome},
        )
    yield counter("sshtun_bastion_auth_failures", "Refused authentications", "auth_failures")
    yield counter(
        "sshtun_bastion_publish_refused", "Refused tcpip-forward requests", "publish_refused"
    )
    yield counter(
        "sshtun_bastion_sessions_refused",
        "Session channels refused (max_sessions_per_connection)",
        "sessions_refused",
    )
    yield (
        "sshtun_bastion_audit_records_dropped",
        "counter",
        "Audit log records not written (the disk was full or the file unwritable)",
        {},
        m.audit_records_dropped,
    )
    yield counter(
        "sshtun_bastion_penalties",
        "Source cool-downs started after failed authentications",
        "penalties",
    )
    for reason, key in (("penalty", "penalty_refused"), ("key_limit", "key_limit_refused")):
        yield counter(
            "sshtun_bastion_refused_connections",
            "Connections refused by a source cool-down or a per-key limit",
            key,
            {"reason": reason},
        )
    if m.startups_active is not None and m.startups_waiting is not None:
        for kind, value in (("started", m.startups_active), ("waiting", m.startups_waiting)):
            yield (
                "sshtun_bastion_startups",
                "gauge",
                "Connections not logged in yet: in their key exchange, or waiting for a slot",
                {"state": kind},
                value,
            )
    for outcome in ("queued", "refused", "evicted", "wait_expired"):
        yield counter(
            "sshtun_bastion_startup_events",
            "Connections that waited for a slot, were dropped before their key exchange, "
            "were evicted at max_startups, or waited too long",
            f"startup_{outcome}",
            {"outcome": outcome},
        )
    for direction, value in (("to_home", m.bytes_to_home), ("from_home", m.bytes_from_home)):
        yield ("sshtun_bastion_bytes", "counter", "Bytes routed", {"direction": direction}, value)
    if m.web_open is not None:
        yield from web_samples(m.web_open, counters)


def web_samples(web_open: int, counters: Mapping[str, int]) -> Iterator[Sample]:
    """sshtun_bastion_web_*: the web front (bastion/web), when it is on."""
    yield ("sshtun_bastion_web_open", "gauge", "Web connections open now", {}, web_open)
    yield (
        "sshtun_bastion_web_idle_closed",
        "counter",
        "Routed web connections closed after idle_timeout with no byte either way",
        {},
        counters.get("web_idle_closed", 0),
    )
    for key in sorted(counters):
        if key == "web_routed_ok":
            labels = {"outcome": "routed"}
        elif key.startswith("web_refused_"):
            labels = {"outcome": "refused", "reason": key.removeprefix("web_refused_")}
        elif key.startswith("web_answered_"):
            labels = {"outcome": "answered", "answer": key.removeprefix("web_answered_")}
        else:
            continue
        yield (
            "sshtun_bastion_web_connections",
            "counter",
            "Web connections",
            labels,
            counters[key],
        )


def agent_samples(
    healthy: bool,
    links: Iterable[LinkMetrics],
    web: Mapping[str, Mapping[str, int]] | None = None,
) -> Iterator[Sample]:
    """sshtun_agent_* from a running agent: its health, each link's status and, in
    ``web``, each web tunnel's counts (``agent/web/stats.py``: tunnel -> kind -> count)."""
    yield from agent_web_samples(web or {})
    now = time.time()
    yield (
        "sshtun_agent_healthy",
        "gauge",
        "1 if every up link passed its probe",
        {},
        1.0 if healthy else 0.0,
    )
    for st in links:
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


def _web_counter(
    name: str, row: Mapping[str, int], metric: str, doc: str, kind: str, **more: str
) -> Sample:
    return (metric, "counter", doc, {"name": name, **more}, row.get(kind, 0))


def agent_web_samples(web: Mapping[str, Mapping[str, int]]) -> Iterator[Sample]:
    """sshtun_agent_web_*: the sessions of the agent's web path, per tunnel (``name:port``)."""
    for name, row in web.items():
        yield (
            "sshtun_agent_web_open",
            "gauge",
            "Web sessions open now",
            {"name": name},
            row.get("open", 0),
        )
        yield _web_counter(
            name, row, "sshtun_agent_web_sessions", "Routed web sessions served", "sessions"
        )
        for outcome in ("ok", "failed"):
            yield _web_counter(
                name,
                row,
                "sshtun_agent_web_tls_handshakes",
                "TLS handshakes the agent ended",
                f"tls_{outcome}",
                outcome=outcome,
            )
        yield _web_counter(
            name, row, "sshtun_agent_web_requests", "HTTP requests forwarded", "requests"
        )
        yield _web_counter(
            name, row, "sshtun_agent_web_websockets", "Upgrades (101) accepted", "websockets"
        )
        for direction, kind in (("from_client", "bytes_in"), ("to_client", "bytes_out")):
            yield _web_counter(
                name,
                row,
                "sshtun_agent_web_bytes",
                "Bytes on the routed channel",
                kind,
                direction=direction,
            )
        for status in ("400", "408", "431", "502"):
            yield _web_counter(
                name,
                row,
                "sshtun_agent_web_refused",
                "Requests the agent answered itself (bad, slow or large head; target down)",
                f"refused_{status}",
                status=status,
            )
        yield _web_counter(
            name,
            row,
            "sshtun_agent_web_idle_closed",
            "Web sessions closed after idle_timeout with no byte either way",
            "idle_closed",
        )
