"""Config for the bastion's abuse resistance: [bastion.limits] penalty and per-key keys,
and bastion.audit_log. TOML texts in, values or exact errors out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sshtunnel_mgr.core.config import LimitsConfig, parse_config
from sshtunnel_mgr.core.errors import ConfigError

BASTION = """\
[bastion]
host_key = "bastion_host_key"
access_file = "access"
{extra}
"""
NOT_INT = "Input should be a valid integer"
HINT = "`sshtun example-config` prints every key, documented"


def limits(text: str) -> str:
    return BASTION.format(extra=f"[bastion.limits]\n{text}")


def test_defaults() -> None:
    cfg = parse_config(BASTION.format(extra=""), "x.toml", Path("/srv")).require_bastion()
    assert cfg.audit_log is None
    lim = cfg.limits
    assert (
        lim.max_auth_failures_per_source,
        lim.penalty_seconds,
        lim.penalty_exempt,
        lim.max_connections_per_key,
        lim.max_channels_per_key,
    ) == (10, 300.0, [], 128, 256)
    assert lim == LimitsConfig()


@pytest.mark.parametrize(
    ("text", "attr", "expected"),
    [
        ("max_auth_failures_per_source = 0", "max_auth_failures_per_source", 0),
        ("max_auth_failures_per_source = 3", "max_auth_failures_per_source", 3),
        ("max_auth_failures_per_source = 10000", "max_auth_failures_per_source", 10000),
        ("penalty_seconds = 1", "penalty_seconds", 1.0),
        ("penalty_seconds = 0.5", "penalty_seconds", 0.5),
        ("penalty_seconds = 86400", "penalty_seconds", 86400.0),
        ("penalty_exempt = []", "penalty_exempt", []),
        ('penalty_exempt = ["192.0.2.0/24"]', "penalty_exempt", ["192.0.2.0/24"]),
        ('penalty_exempt = ["192.0.2.7"]', "penalty_exempt", ["192.0.2.7"]),
        (
            'penalty_exempt = ["127.0.0.0/8", "::1/128", "2001:db8::/32"]',
            "penalty_exempt",
            ["127.0.0.0/8", "::1/128", "2001:db8::/32"],
        ),
        ("max_connections_per_key = 1", "max_connections_per_key", 1),
        ("max_connections_per_key = 1000000", "max_connections_per_key", 1_000_000),
        ("max_channels_per_key = 1", "max_channels_per_key", 1),
        ("max_channels_per_key = 5000", "max_channels_per_key", 5000),
    ],
)
def test_limit_values(text: str, attr: str, expected: object) -> None:
    lim = parse_config(limits(text)).require_bastion().limits
    assert getattr(lim, attr) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "max_auth_failures_per_source = -1",
            "max_auth_failures_per_source: Input should be greater than or equal to 0",
        ),
        (
            "max_auth_failures_per_source = 10001",
            "max_auth_failures_per_source: Input should be less than or equal to 10000",
        ),
        ("max_auth_failures_per_source = 2.5", f"max_auth_failures_per_source: {NOT_INT}"),
        ('max_auth_failures_per_source = "5"', f"max_auth_failures_per_source: {NOT_INT}"),
        ("max_auth_failures_per_source = true", f"max_auth_failures_per_source: {NOT_INT}"),
        ("penalty_seconds = 0", "penalty_seconds: Input should be greater than 0"),
        ("penalty_seconds = -5", "penalty_seconds: Input should be greater than 0"),
        ("penalty_seconds = 86401", "penalty_seconds: Input should be less than or equal to 86400"),
        ('penalty_seconds = "300"', "penalty_seconds: Input should be a valid number"),
        ('penalty_exempt = "127.0.0.0/8"', "penalty_exempt: Input should be a valid list"),
        ("penalty_exempt = [1]", "penalty_exempt[0]: Input should be a valid string"),
        (
            'penalty_exempt = ["loopback"]',
            "penalty_exempt: 'loopback' is not an IP network like 192.0.2.0/24",
        ),
        (
            'penalty_exempt = ["192.0.2.0/33"]',
            "penalty_exempt: '192.0.2.0/33' is not an IP network like 192.0.2.0/24",
        ),
        (
            'penalty_exempt = ["10.1.2.3/8"]',
            "penalty_exempt: '10.1.2.3/8' has host bits set; write 10.0.0.0/8",
        ),
        (
            'penalty_exempt = ["2001:db8::1/32"]',
            "penalty_exempt: '2001:db8::1/32' has host bits set; write 2001:db8::/32",
        ),
        (
            "max_connections_per_key = 0",
            "max_connections_per_key: Input should be greater than or equal to 1",
        ),
        ("max_connections_per_key = 1.0", f"max_connections_per_key: {NOT_INT}"),
        (
            "max_channels_per_key = 0",
            "max_channels_per_key: Input should be greater than or equal to 1",
        ),
        (
            "max_channels_per_key = 1000001",
            "max_channels_per_key: Input should be less than or equal to 1000000",
        ),
        ("max_channel_per_key = 5", "max_channel_per_key: unknown key"),
        ("penalty = 5", "penalty: unknown key"),
    ],
)
def test_invalid_limits(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(limits(text), "b.toml")
    assert re.sub(r"^b\.toml:\d+: ", "b.toml: ", info.value.message).startswith(
        f"b.toml: bastion.limits.{message}"
    )
    assert info.value.hint == HINT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"audit.jsonl"', Path("/srv/audit.jsonl")),
        ('"logs/audit.jsonl"', Path("/srv/logs/audit.jsonl")),
        ('"/var/log/sshtun/audit.jsonl"', Path("/var/log/sshtun/audit.jsonl")),
    ],
)
def test_audit_log_paths_are_resolved_against_the_file(value: str, expected: Path) -> None:
    cfg = parse_config(BASTION.format(extra=f"audit_log = {value}"), "x.toml", Path("/srv"))
    assert cfg.require_bastion().audit_log == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "bastion.audit_log: Input is not a valid path"),
        ("true", "bastion.audit_log: Input is not a valid path"),
        ("[]", "bastion.audit_log: Input is not a valid path"),
    ],
)
def test_invalid_audit_log(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASTION.format(extra=f"audit_log = {value}"), "b.toml")
    assert re.sub(r"^b\.toml:\d+: ", "b.toml: ", info.value.message).startswith(
        f"b.toml: {message}"
    )
