"""The agent's web path without sockets: tunnel config, forwarded headers, the PROXY
endpoints, the status table and doctor's certificate check."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sshtunnel_mgr.agent.web import proxy_endpoints, uses_web
from sshtunnel_mgr.agent.web.httpfwd import forwarded_headers
from sshtunnel_mgr.cli.status import format_tunnels
from sshtunnel_mgr.core.config import TunnelConfig, parse_config
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.doctor import collect
from sshtunnel_mgr.doctor.certcheck import CertFacts, check_certificate
from sshtunnel_mgr.doctor.findings import Level

HK = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
DAY = 86400.0


def agent_toml(tunnel: str) -> str:
    return (
        '[agent]\nkey = "agent_key"\n[[agent.bastions]]\naddress = "b.example.com"\n'
        f'host_key = "{HK}"\n[[agent.tunnels]]\nname = "cloud.example.com"\nport = 443\n'
        f'target = "127.0.0.1:8080"\n{tunnel}\n'
    )


def test_files_tunnel_paths_resolve_beside_the_config(tmp_path: Path) -> None:
    config = parse_config(
        agent_toml(
            'tls = "files"\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\nproxy_protocol = "v2"'
        ),
        "x.toml",
        tmp_path,
    ).require_agent()
    tunnel = config.tunnels[0]
    assert (tunnel.tls, tunnel.cert, tunnel.key) == (
        "files",
        tmp_path / "tls/cert.pem",
        tmp_path / "tls/key.pem",
    )
    assert tunnel.proxy_protocol == "v2" and uses_web(tunnel)


@pytest.mark.parametrize(
    ("tunnel", "message"),
    [
        ('tls = "acme"', 'tls = "acme" needs state_dir in [agent]'),
        ('tls = "files"\ncert = "c.pem"', 'tls = "files" needs cert and key'),
        ('tls = "passthrough"\ncert = "c.pem"', 'cert and key are only for tls = "files"'),
        ('tls = "quic"', "agent.tunnels[0].tls"),
        ('proxy_protocol = "v3"', "agent.tunnels[0].proxy_protocol"),
    ],
)
def test_tunnel_tls_config_errors(tunnel: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(agent_toml(tunnel), "x.toml", Path("/etc/sshtun"))
    assert message in caught.value.message


def test_plain_and_passthrough_tunnels_keep_the_plain_splice() -> None:
    assert not uses_web(TunnelConfig(name="a", port=443, target="127.0.0.1:1"))
    assert not uses_web(TunnelConfig(name="a", port=443, target="127.0.0.1:1", tls="passthrough"))
    assert uses_web(
        TunnelConfig(
            name="a", port=443, target="127.0.0.1:1", tls="passthrough", proxy_protocol="v1"
        )
    )


def test_forwarded_headers_replace_what_the_client_claimed() -> None:
    raw = [
        (b"Host", b"cloud.example.com"),
        (b"X-Forwarded-For", b"6.6.6.6"),
        (b"x-forwarded-proto", b"http"),
        (b"Forwarded", b"for=6.6.6.6"),
        (b"X-Real-IP", b"6.6.6.6"),
        (b"Cookie", b"a=b"),
    ]
    assert forwarded_headers(raw, "203.0.113.7") == [
        (b"Host", b"cloud.example.com"),
        (b"Cookie", b"a=b"),
        (b"X-Forwarded-For", b"203.0.113.7"),
        (b"X-Forwarded-Proto", b"https"),
    ]
    assert forwarded_headers(raw[:2], None) == [
        (b"Host", b"cloud.example.com"),
        (b"X-Forwarded-Proto", b"https"),
    ]


@pytest.mark.parametrize(
    ("orig", "expected"),
    [
        (("203.0.113.7", 5), (("203.0.113.7", 5), ("0.0.0.0", 443))),
        (("::ffff:203.0.113.7", 5), (("203.0.113.7", 5), ("0.0.0.0", 443))),
        (("2001:db8::2", 6), (("2001:db8::2", 6), ("::", 443))),
        (("", 0), (None, ("0.0.0.0", 443))),
        (("laptop.example", 7), (None, ("0.0.0.0", 443))),
    ],
)
def test_proxy_endpoints(orig: tuple[str, int], expected: object) -> None:
    assert proxy_endpoints(orig[0], orig[1], 443) == expected


def test_status_table_shows_tls_mode_and_expiry() -> None:
    now = 1_800_000_000.0
    rows = [
        {"name": "homebox:22", "target": "127.0.0.1:22", "tls": "", "proxy_protocol": ""},
        {
            "name": "cloud.test:443",
            "target": "127.0.0.1:8080",
            "tls": "files",
            "proxy_protocol": "v2",
            "cert_not_after": now + 20 * DAY,
            "cert_error": "",
        },
        {
            "name": "nas.test:443",
            "target": "127.0.0.1:8443",
            "tls": "passthrough",
            "proxy_protocol": "",
        },
    ]
    lines = format_tunnels(rows, now).splitlines()
    assert lines[1].split() == ["TUNNEL", "TARGET", "TLS", "PROXY", "CERTIFICATE", "EXPIRES"]
    assert lines[2].split() == [
        "cloud.test:443",
        "127.0.0.1:8080",
        "files",
        "v2",
        "2027-02-04",
        "08:00",
        "UTC",
        "(in",
        "20d)",
    ]
    assert lines[3].split() == ["nas.test:443", "127.0.0.1:8443", "passthrough", "-", "-"]
    assert len(lines) == 4  # homebox: no TLS, no PROXY, no row
    assert format_tunnels(rows[:1], now) == ""


@pytest.mark.parametrize(
    ("days", "level"),
    [(60, Level.OK), (14.5, Level.OK), (13.9, Level.WARN), (0.5, Level.WARN), (-1, Level.FAIL)],
)
def test_certificate_expiry_levels(days: float, level: Level) -> None:
    facts = CertFacts("cloud.test:443", "/c.pem", 1000.0 + days * DAY)
    assert check_certificate(facts, 1000.0).level is level


def test_unreadable_certificate_fails() -> None:
    finding = check_certificate(CertFacts("cloud.test:443", "/c.pem", error="no such file"), 0)
    assert finding.level is Level.FAIL and "cannot be read" in finding.message


def _write_cert(path: Path, days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloud.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_doctor_reads_the_certificate_file_it_checks(tmp_path: Path) -> None:
    _write_cert(tmp_path / "cert.pem", days=5)
    facts = collect.cert_facts("cloud.test:443", tmp_path / "cert.pem")
    finding = check_certificate(facts, datetime.datetime.now(datetime.UTC).timestamp())
    assert finding.level is Level.WARN and "expires in" in finding.message
    missing = collect.cert_facts("cloud.test:443", tmp_path / "nope.pem")
    assert missing.not_after is None and "No such file" in missing.error
