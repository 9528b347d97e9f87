"""The web path's counts and pure helpers as tables: the agent's ``WebStats`` rows, the
``sshtun_agent_web_*`` / ``sshtun_bastion_web_*`` samples made from them, the head an ACME
challenge is passed on with, and ``idle_timeout`` in both configs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import h11
import pytest
from pydantic import ValidationError

from sshtunnel_mgr.agent.web.stats import WebStats
from sshtunnel_mgr.bastion.web.http import one_request_head
from sshtunnel_mgr.cli.status import format_tunnels
from sshtunnel_mgr.core.config import TunnelConfig
from sshtunnel_mgr.core.webconfig import WebConfig
from sshtunnel_mgr.runtime.metrics import agent_web_samples, web_samples


@dataclass(eq=False)
class FakePipe:
    bytes_in: int = 0
    bytes_out: int = 0

    def close(self) -> None:
        pass


def test_stats_rows_add_open_sessions_bytes_to_the_ended_ones() -> None:
    stats = WebStats()
    done, live = FakePipe(100, 2000), FakePipe(5, 7)
    stats.opened("a.test:443", done)
    stats.count("a.test:443", "tls_ok")
    stats.count("a.test:443", "requests", 3)
    stats.closed(done)
    stats.opened("a.test:443", live)
    stats.count("b.test:443", "refused_431")
    row = stats.row("a.test:443")
    assert (row["sessions"], row["open"], row["tls_ok"], row["requests"]) == (2, 1, 1, 3)
    assert (row["bytes_in"], row["bytes_out"]) == (105, 2007)
    assert row["idle_closed"] == row["websockets"] == row["tls_failed"] == 0
    assert set(stats.snapshot()) == {"a.test:443", "b.test:443"}
    stats.closed(live)
    stats.closed(live)  # twice: counted once
    assert stats.row("a.test:443")["bytes_in"] == 105 and stats.row("a.test:443")["open"] == 0


def test_agent_web_samples() -> None:
    stats = WebStats()
    pipe = FakePipe(10, 20)
    stats.opened("a.test:443", pipe)
    for kind in ("tls_ok", "tls_failed", "websockets", "refused_408", "idle_closed"):
        stats.count("a.test:443", kind)
    table = {
        (name, tuple(sorted(labels.items()))): value
        for name, _, _, labels, value in agent_web_samples(stats.snapshot())
    }
    name = ("name", "a.test:443")
    assert table[("sshtun_agent_web_open", (name,))] == 1
    assert table[("sshtun_agent_web_tls_handshakes", (name, ("outcome", "failed")))] == 1
    assert table[("sshtun_agent_web_websockets", (name,))] == 1
    assert table[("sshtun_agent_web_refused", (name, ("status", "408")))] == 1
    assert table[("sshtun_agent_web_refused", (name, ("status", "431")))] == 0
    assert table[("sshtun_agent_web_idle_closed", (name,))] == 1
    assert table[("sshtun_agent_web_bytes", (("direction", "to_client"), name))] == 20


def test_bastion_web_samples_cover_refusals_by_reason_and_idle_closes() -> None:
    counters = Counter({"web_refused_key_cap": 2, "web_idle_closed": 3, "web_routed_ok": 9})
    table = {
        (name, tuple(sorted(labels.items()))): value
        for name, _, _, labels, value in web_samples(1, counters)
    }
    assert table[("sshtun_bastion_web_idle_closed", ())] == 3
    key_cap = (("outcome", "refused"), ("reason", "key_cap"))
    assert table[("sshtun_bastion_web_connections", key_cap)] == 2
    assert table[("sshtun_bastion_web_connections", (("outcome", "routed"),))] == 9


def request(raw: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    found = conn.next_event()
    assert isinstance(found, h11.Request)
    return found


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"GET /.well-known/acme-challenge/t HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET /.well-known/acme-challenge/t HTTP/1.1\r\nHost: a.test\r\n"
            b"Connection: close\r\n\r\n",
        ),
        (  # the client's keep-alive and upgrade asks are dropped; other headers kept as spelt
            b"GET /x HTTP/1.1\r\nHOST: a.test\r\nConnection: keep-alive, Upgrade\r\n"
            b"Upgrade: websocket\r\nKeep-Alive: 5\r\nUser-Agent: LE\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHOST: a.test\r\nUser-Agent: LE\r\nConnection: close\r\n\r\n",
        ),
        (
            b"GET /y HTTP/1.0\r\nHost: a.test\r\n\r\n",
            b"GET /y HTTP/1.0\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        ),
    ],
)
def test_a_challenge_is_passed_on_as_the_last_request(raw: bytes, expected: bytes) -> None:
    assert one_request_head(request(raw)) == expected


def test_idle_timeout_in_both_configs() -> None:
    assert WebConfig().idle_timeout == 300.0
    assert WebConfig(idle_timeout=0).idle_timeout == 0  # off
    assert TunnelConfig(name="a.test", port=443, tls="passthrough").idle_timeout == 300.0
    for bad in (-1, "300", 86401):
        with pytest.raises(ValidationError):
            WebConfig(idle_timeout=bad)
        with pytest.raises(ValidationError):
            TunnelConfig(name="a.test", idle_timeout=bad)


def test_agent_status_shows_what_each_web_tunnel_did() -> None:
    stats = WebStats()
    pipe = FakePipe(2048, 10)
    stats.opened("cloud.test:443", pipe)
    for kind in ("tls_ok", "requests", "requests", "refused_431", "idle_closed"):
        stats.count("cloud.test:443", kind)
    row = {"name": "cloud.test:443", "target": "127.0.0.1:8080", "tls": "files"}
    quiet = {"name": "quiet.test:443", "target": "127.0.0.1:8081", "tls": "passthrough"}
    text = format_tunnels([{**row, **stats.row("cloud.test:443")}, quiet], 0.0)
    assert text.splitlines()[-1] == (
        "cloud.test:443: 1 sessions (1 open), TLS 1 ok/0 failed, 2 requests, 0 websockets, "
        "2.0KiB in/10B out, 1 idle closed, answered 431:1"
    )
    assert "quiet.test:443:" not in text  # no session yet: no line
