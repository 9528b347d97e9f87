"""Connections that leave before logging in (a failed key exchange, a client that gives
up) are logged at INFO with asyncssh's reason said plainly (what was missing, what the
client offered) and audited (stage ``handshake``), rate-limited per source: a burst from
one address writes its first 10 lines, then every 100th. Real OpenSSH clients."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.harness import (
    Keys,
    run_ssh,
    wait_for,
    write_ssh_config,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene
from tests.integration.test_abuse import events


def preauth_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("left before login")]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (
            ["-o", "KexAlgorithms=diffie-hellman-group14-sha1"],
            "no common key exchange algorithm; client offered diffie-hellman-group14-sha1",
        ),
        (
            ["-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha1"],
            "no common MAC algorithm; client offered hmac-sha1",
        ),
    ],
    ids=["kex", "mac"],
)
async def test_a_failed_key_exchange_is_logged_at_info_and_audited_with_its_reason(
    keys: Keys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    options: list[str],
    reason: str,
) -> None:
    audit = tmp_path / "audit.jsonl"
    async with scene(keys, tmp_path, home=False, audit_log=audit) as s:
        bastion, cfg = s.bastion, s.client_cfg
        result = await run_ssh(cfg, *options, "-W", "homebox:22", "bastion", stdin=b"")
        assert result.returncode == 255
        await wait_for(lambda: preauth_lines(caplog))
        (record,) = preauth_lines(caplog)
        assert record.levelno == logging.INFO
        assert logged(caplog, "left before login", "from=127.0.0.1", 'phase="key exchange"', reason)
        await wait_for(lambda: events(audit, "refused"))
    (refused,) = events(audit, "refused")
    assert refused["stage"] == "handshake"
    assert refused["reason"].startswith(reason)
    assert refused["from"].startswith("127.0.0.1:")
    assert len(bastion.state.penalties) == 0  # it never tried to log in


async def test_a_burst_of_failed_handshakes_from_one_address_is_rate_limited_in_the_log(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = tmp_path / "audit.jsonl"
    async with scene(keys, tmp_path, home=False, audit_log=audit) as s:
        bastion = s.bastion
        bastion.state.preauth_log.clock = lambda: 1000.0  # one window, however slow the run
        cfg = write_ssh_config(tmp_path / "client", keys, bastion.port)
        for _ in range(15):
            result = await run_ssh(
                cfg,
                "-o",
                "MACs=hmac-sha1",
                "-o",
                "Ciphers=aes128-ctr",
                "-W",
                "homebox:22",
                "bastion",
                stdin=b"",
            )
            assert result.returncode == 255
        await wait_for(lambda: bastion.state.counters["preauth_disconnects"] == 15)
        # From another address (127.0.0.2 is loopback too): its own budget.
        other = write_ssh_config(
            tmp_path / "other", keys, bastion.port, extra_opts="  BindAddress 127.0.0.2\n"
        )
        result = await run_ssh(
            other,
            "-o",
            "MACs=hmac-sha1",
            "-o",
            "Ciphers=aes128-ctr",
            "-W",
            "homebox:22",
            "bastion",
            stdin=b"",
        )
        assert result.returncode == 255
        await wait_for(lambda: bastion.state.counters["preauth_disconnects"] == 16)
    lines = [r.getMessage() for r in preauth_lines(caplog)]
    assert len(lines) == 11, lines
    assert sum("from=127.0.0.1 " in line for line in lines) == 10
    assert "count=10" in lines[9] and "from=127.0.0.2" in lines[10]
    assert len([e for e in events(audit, "refused") if e["stage"] == "handshake"]) == 11
