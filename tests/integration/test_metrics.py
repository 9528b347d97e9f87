"""Prometheus metrics on both ends, scraped over HTTP from the running processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.harness import Keys, free_port
from tests.integration.scene import scene, sshtun_process


async def scrape(port: int, path: str = "/metrics") -> tuple[str, dict[str, float]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = (await reader.read()).decode()
    writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    values: dict[str, float] = {}
    if not head.startswith("HTTP/1.1 200"):
        return head.splitlines()[0], values
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return head.splitlines()[0], values


async def test_bastion_and_agent_metrics(keys: Keys, tmp_path: Path) -> None:
    stranger = keys.extra("stranger")
    bmetrics, ametrics = free_port(), free_port()
    async with scene(keys, tmp_path, bastion=False) as s:
        port = s.port
        bfile = s.bastion_file(metrics_listen=str(bmetrics))
        metrics_up = "metrics on url=http://127.0.0.1:"
        async with (
            sshtun_process("bastion", "--config", str(bfile), ready=metrics_up),
            s.agent(metrics_listen=f"127.0.0.1:{ametrics}"),
        ):
            ok = await s.reach("head -c 50000 /dev/zero")
            assert len(ok.stdout) == 50000
            refused = await s.ssh("-W", "nothere:22", "bastion")
            assert refused.returncode != 0
            bad = s.ssh_config("s", identity=stranger.path)
            assert (await s.ssh("-W", "homebox:22", "bastion", cfg=bad)).returncode == 255

            status, m = await scrape(bmetrics)
            assert status == "HTTP/1.1 200 OK"
            assert m["sshtun_bastion_published_names"] == 1
            assert m["sshtun_bastion_agent_connections"] == 1
            assert m['sshtun_bastion_routed_connections_total{outcome="ok"}'] >= 1
            assert m['sshtun_bastion_routed_connections_total{outcome="refused"}'] == 1
            assert m["sshtun_bastion_auth_failures_total"] >= 1
            assert m["sshtun_bastion_penalties_total"] == 0  # one failure: no cool-down
            assert m["sshtun_bastion_sessions_refused_total"] == 0
            assert m["sshtun_bastion_audit_records_dropped_total"] == 0
            assert m['sshtun_bastion_refused_connections_total{reason="penalty"}'] == 0
            assert m['sshtun_bastion_refused_connections_total{reason="key_limit"}'] == 0
            assert m['sshtun_bastion_bytes_total{direction="from_home"}'] > 50000

            status, a = await scrape(ametrics)
            label = f'{{bastion="127.0.0.1:{port}"}}'
            assert a[f"sshtun_agent_up{label}"] == 1
            assert a[f"sshtun_agent_published_names{label}"] == 1
            assert a[f"sshtun_agent_reconnects_total{label}"] == 0
            assert 0 <= a[f"sshtun_agent_seconds_since_last_connect{label}"] < 600
            assert (await scrape(ametrics, "/other"))[0] == "HTTP/1.1 404 Not Found"


def test_metrics_listen_defaults_to_loopback() -> None:
    from sshtunnel_mgr.core.config import parse_config

    cfg = parse_config('[bastion]\nhost_key="h"\naccess_file="a"\nmetrics_listen="9810"\n')
    assert cfg.require_bastion().metrics_address == ("127.0.0.1", 9810)
