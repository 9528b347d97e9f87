"""``[bastion.web]`` (core/webconfig.py): TOML in, a model or an error with file:line out;
the pure matcher (public names, allow_from) and the per-source cap, with a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from sshtunnel_mgr.core.config import parse_config
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.webconfig import PublicRule, SourceRate, WebConfig, WebPolicy

BASTION = """\
[bastion]
host_key = "bastion_host_key"
access_file = "access"

[bastion.web]
{web}
"""


def web(text: str) -> WebConfig:
    cfg = parse_config(BASTION.format(web=text), "b.toml", Path("/srv"))
    return cfg.require_bastion().web


def test_off_and_nothing_public_by_default() -> None:
    cfg = parse_config('[bastion]\nhost_key = "k"\naccess_file = "a"\n', "b.toml", Path("/"))
    w = cfg.require_bastion().web
    assert w.https_listen is None and w.http_listen is None and w.public == []
    assert WebPolicy(w).public_rule("cloud.example.com") is None


def test_a_full_section() -> None:
    w = web(
        'https_listen = "0.0.0.0:443"\nhttp_listen = "[::]:80"\n'
        'public = ["*.Example.com", "admin.example.org"]\n'
        '[bastion.web.rules."admin.example.org"]\n'
        'allow_from = ["192.0.2.0/24", "2001:db8::/32"]\nmax_new_per_source = 5\n'
    )
    assert w.https_address == ("0.0.0.0", 443)
    assert w.http_address == ("::", 80)
    assert w.public == ["*.example.com", "admin.example.org"]
    policy = WebPolicy(w)
    assert policy.public_rule("cloud.example.com") == PublicRule("*.example.com", None, 120)
    admin = policy.public_rule("admin.example.org")
    assert admin == PublicRule("admin.example.org", ("192.0.2.0/24", "2001:db8::/32"), 5)
    assert policy.public_rule("a.b.example.com") is None  # * never crosses a dot
    assert policy.public_rule("example.com") is None
    assert policy.allowed(admin, "192.0.2.7") and policy.allowed(admin, "2001:db8::1")
    assert not policy.allowed(admin, "198.51.100.1")
    assert policy.allowed(admin, "::ffff:192.0.2.7")  # a mapped address is its IPv4


def test_an_exact_name_wins_over_a_pattern() -> None:
    w = web(
        'public = ["*.example.com", "admin.example.com"]\n'
        '[bastion.web.rules."admin.example.com"]\nallow_from = ["10.0.0.0/8"]\n'
    )
    assert WebPolicy(w).public_rule("admin.example.com") == PublicRule(
        "admin.example.com", ("10.0.0.0/8",), 120
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('https_listen = "example.com:443"', "b.toml:6: bastion.web.https_listen"),
        ('http_listen = "0.0.0.0"', "b.toml:6: bastion.web.http_listen"),
        ('public = ["cloud..example.com"]', "b.toml:6: bastion.web.public"),
        ("max_new_per_source = -1", "b.toml:6: bastion.web.max_new_per_source"),
        ("hello_max_bytes = 100", "b.toml:6: bastion.web.hello_max_bytes"),
        ("head_timeout = 0", "b.toml:6: bastion.web.head_timeout"),
        ("publik = []", "b.toml:6: bastion.web.publik"),
    ],
)
def test_errors_name_file_line_and_field(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        web(text)
    assert where in caught.value.message, caught.value.message


def test_a_bad_allow_from_and_a_rule_for_no_public_entry() -> None:
    with pytest.raises(ConfigError) as caught:
        web('public = ["a.example.com"]\n[bastion.web.rules."a.example.com"]\nallow_from = ["x/8"]')
    assert "allow_from" in caught.value.message and "x/8" in caught.value.message
    with pytest.raises(ConfigError) as caught:
        web('public = ["a.example.com"]\n[bastion.web.rules."b.example.com"]\n')
    assert "not in public" in caught.value.message


def test_source_rate_with_a_fake_clock() -> None:
    now = [0.0]
    rate = SourceRate(window=60, max_keys=2, clock=lambda: now[0])
    rule = PublicRule("*.example.com", None, 2)
    assert rate.admit("192.0.2.1", rule) and rate.admit("192.0.2.1", rule)
    assert not rate.admit("192.0.2.1", rule)
    assert rate.admit("192.0.2.2", rule)  # another source has its own count
    now[0] = 60.0
    assert rate.admit("192.0.2.1", rule)  # a new window
    assert SourceRate().admit("192.0.2.1", PublicRule("x", None, 0))  # 0: no cap
    rate.admit("192.0.2.3", rule)
    assert len(rate._seen) <= 2  # bounded: the oldest source is forgotten
