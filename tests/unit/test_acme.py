"""``tls = "acme"`` without a CA: the config (the name:80 side added, what does not fit
together), the renewal schedule on a fake clock (two thirds of the lifetime, backoff after
failures, a swap that leaves live connections their context), the port-80 answers, the
CA's refusals as errors, status and doctor. The real CA (pebble) is in
tests/integration/test_agent_acme.py."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import threading
from pathlib import Path

import h11
import pytest
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sshtunnel_mgr.agent.web import WebFront, uses_web
from sshtunnel_mgr.agent.web.acme import (
    AcmeError,
    AcmeFiles,
    AcmeRequest,
    Challenges,
    _refusal,
    lifetime,
)
from sshtunnel_mgr.agent.web.acmehttp import answer_http01, reply
from sshtunnel_mgr.agent.web.acmerenew import AcmeCertStore, AcmeRenewer, renew_at
from sshtunnel_mgr.cli.status import format_tunnels
from sshtunnel_mgr.core.backoff import Backoff
from sshtunnel_mgr.core.config import AgentConfig, TunnelConfig, parse_config
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.tlsconfig import LETSENCRYPT
from sshtunnel_mgr.doctor import acmecheck
from sshtunnel_mgr.doctor.certcheck import check_certificate
from sshtunnel_mgr.doctor.findings import Level

HK = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
DAY = 86400.0
T0 = 1_800_000_000.0  # the fake clock's start


def agent_toml(tunnels: str, agent_extra: str = 'state_dir = "state"') -> str:
    return (
        f'[agent]\nkey = "agent_key"\n{agent_extra}\n[[agent.bastions]]\n'
        f'address = "b.example.com"\nhost_key = "{HK}"\n{tunnels}'
    )


ACME = (
    '[[agent.tunnels]]\nname = "Cloud.Example.com"\nport = 443\ntarget = "127.0.0.1:8080"\n'
    'tls = "acme"\nacme_email = "me@example.com"\n'
)


# Config ------------------------------------------------------------------------------------
def test_an_acme_tunnel_also_publishes_its_name_on_port_80(tmp_path: Path) -> None:
    agent = parse_config(agent_toml(ACME), "x.toml", tmp_path).require_agent()
    assert [(t.name, t.port, t.tls, t.target) for t in agent.tunnels] == [
        ("cloud.example.com", 443, "acme", "127.0.0.1:8080"),
        ("cloud.example.com", 80, "acme-http01", "127.0.0.1:8080"),
    ]
    assert agent.state_dir == tmp_path / "state"
    assert agent.tunnels[0].acme_directory is None  # Let's Encrypt production at order time
    assert all(uses_web(t) for t in agent.tunnels)
    # a dump read back (tests, reloads) is the same config, not a second name:80
    again = AgentConfig.model_validate(agent.model_dump())
    assert again.tunnels == agent.tunnels


@pytest.mark.parametrize(
    ("tunnels", "agent_extra", "message"),
    [
        (ACME, "", 'tls = "acme" needs state_dir in [agent]'),
        (ACME.replace("port = 443", "port = 8443"), 'state_dir = "s"', "needs port = 443"),
        (
            ACME + '[[agent.tunnels]]\nname = "cloud.example.com"\nport = 80\n',
            'state_dir = "s"',
            "tunnel cloud.example.com:80: the agent publishes it itself",
        ),
        (
            '[[agent.tunnels]]\nname = "a.test"\nport = 80\ntls = "acme-http01"\n',
            'state_dir = "s"',
            'tls = "acme-http01" without an acme tunnel',
        ),
        (ACME + 'acme_directory = "http://ca.test/dir"\n', 'state_dir = "s"', "https:// URL"),
        (ACME.replace("me@example.com", "me at example"), 'state_dir = "s"', "not an email"),
        (
            '[[agent.tunnels]]\nname = "a.test"\nport = 443\ntls = "files"\ncert = "c"\n'
            'key = "k"\nacme_email = "me@example.com"\n',
            'state_dir = "s"',
            'are only for tls = "acme"',
        ),
    ],
)
def test_acme_config_errors(tunnels: str, agent_extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(agent_toml(tunnels, agent_extra), "x.toml", Path("/etc/sshtun"))
    assert message in caught.value.message


def test_the_ca_bundle_and_state_dir_resolve_beside_the_config(tmp_path: Path) -> None:
    text = agent_toml(ACME + 'acme_ca_bundle = "pebble.pem"\n', 'state_dir = "$HOME_X/st"')
    os.environ["HOME_X"] = str(tmp_path / "home")
    try:
        agent = parse_config(text, "x.toml", tmp_path).require_agent()
    finally:
        del os.environ["HOME_X"]
    assert agent.tunnels[0].acme_ca_bundle == tmp_path / "pebble.pem"
    assert agent.state_dir == tmp_path / "home" / "st"


# Certificates made here ---------------------------------------------------------------------
class Ca:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ACME CA")])

    def fullchain(
        self, name: str, not_before: float, days: float
    ) -> tuple[str, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        start = datetime.datetime.fromtimestamp(not_before, datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key


class FakeTime:
    """The renewer's clock and sleep: a sleep moves the clock, never waits."""

    def __init__(self) -> None:
        self.now = T0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Done(BaseException):
    """The scripted orders ran out: the test's loop ends."""


def acme_tunnel(**kw: object) -> TunnelConfig:
    return TunnelConfig(name="cloud.test", port=443, target="127.0.0.1:8080", tls="acme", **kw)  # type: ignore[arg-type]


def scripted(time_: FakeTime, ca: Ca, script: list[str], calls: list[float]):  # type: ignore[no-untyped-def]
    """An order function playing ``script``: "ok" saves a 90-day certificate valid from
    the fake now; anything else fails with that kind of ``AcmeError``."""

    def order(request: AcmeRequest, files: AcmeFiles, challenges: Challenges) -> None:
        calls.append(time_.now)
        if not script:
            raise Done
        step = script.pop(0)
        if step != "ok":
            raise AcmeError(step, f"scripted {step}")  # type: ignore[arg-type]
        chain, key = ca.fullchain(request.name, time_.now, 90)
        files.save(chain, key)

    return order


async def test_orders_at_once_renews_at_two_thirds_and_backs_off_on_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sshtunnel_mgr")
    time_, ca, calls = FakeTime(), Ca(), []
    store = AcmeCertStore("cloud.test:443", acme_tunnel(), tmp_path / "state")
    script = ["unreachable", "ok", "challenge", "challenge", "ok"]
    renewer = AcmeRenewer(
        store,
        Challenges(),
        clock=time_.clock,
        sleep=time_.sleep,
        order=scripted(time_, ca, script, calls),
        backoff=Backoff(base=60, cap=3600, jitter=0.0),
    )
    contexts: list[ssl.SSLContext | None] = []
    original = renewer.attempt

    async def attempt() -> float | None:
        result = await original()
        contexts.append(store.context)
        return result

    renewer.attempt = attempt  # type: ignore[method-assign]
    with pytest.raises(Done):
        await renewer.run()
    first = T0 + 60  # the first order failed: retried after the backoff's base
    renewal = renew_at(first, first + 90 * DAY)
    assert renewal == first + 60 * DAY
    assert calls == [T0, first, renewal, renewal + 60, renewal + 60 + 120, calls[-1]]
    assert calls[-1] == renew_at(renewal + 180, renewal + 180 + 90 * DAY)
    # served: nothing, the first certificate through two failed renewals, then the second,
    # a new context for new connections (a live one keeps the one it holds)
    assert contexts[0] is None
    assert contexts[1] is not None and contexts[1] is contexts[2] is contexts[3]
    assert contexts[4] is not None and contexts[4] is not contexts[1]
    assert renewer.failures == 0 and renewer.last_error == ""
    failed = [r for r in caplog.records if r.getMessage().startswith("acme order failed")]
    assert [r.getMessage().split("retry_in=")[1].split()[0] for r in failed] == [
        "60s",
        "60s",
        "120s",
    ]
    assert "kind=challenge" in failed[1].getMessage()
    issued = [r for r in caplog.records if r.getMessage().startswith("acme certificate issued")]
    assert len(issued) == 2
    mode = os.stat(store.files.cert).st_mode & 0o777
    assert mode == 0o600 and os.stat(store.files.dir).st_mode & 0o777 == 0o700
    assert os.stat(store.files.root).st_mode & 0o777 == 0o700


async def test_a_saved_certificate_is_served_at_start_and_renewed_when_due(tmp_path: Path) -> None:
    ca, time_ = Ca(), FakeTime()
    import time

    state = tmp_path / "state"
    tunnel = acme_tunnel(acme_directory="https://ca.test/dir")
    files = AcmeFiles(state, "cloud.test", "https://ca.test/dir")
    chain, key = ca.fullchain("cloud.test", time.time() - 10 * DAY, 30)
    files.save(chain, key)
    stores = WebFront.prepare([tunnel], state)  # as at start-up
    store = stores["cloud.test:443"]
    assert isinstance(store, AcmeCertStore) and store.context is not None
    assert store.info is not None and store.info.subject == "CN=cloud.test"
    time_.now = time.time()
    calls: list[float] = []
    renewer = AcmeRenewer(
        store, Challenges(), clock=time_.clock, sleep=time_.sleep,
        order=scripted(time_, ca, [], calls),
    )  # fmt: skip
    span = lifetime(files.cert)
    assert span is not None and renewer.due() == renew_at(*span)
    with pytest.raises(Done):
        await renewer.run()
    assert calls == [pytest.approx(renew_at(*span))]  # waited (in naps) until due
    assert max(time_.sleeps) <= 3600


def test_an_expired_saved_certificate_is_not_served(tmp_path: Path) -> None:
    import time

    files = AcmeFiles(tmp_path, "cloud.test", LETSENCRYPT)
    chain, key = Ca().fullchain("cloud.test", time.time() - 100 * DAY, 90)
    files.save(chain, key)
    store = WebFront.prepare([acme_tunnel()], tmp_path)["cloud.test:443"]
    assert store.context is None and "no certificate yet" in store.error


async def test_an_unexpected_failure_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    time_ = FakeTime()
    store = AcmeCertStore("cloud.test:443", acme_tunnel(), tmp_path)

    def order(request: AcmeRequest, files: AcmeFiles, challenges: Challenges) -> None:
        raise KeyError("surprise")

    renewer = AcmeRenewer(store, Challenges(), clock=time_.clock, sleep=time_.sleep, order=order)
    assert await renewer.attempt() is not None
    assert renewer.last_error.startswith("unexpected: KeyError")
    assert store.error.startswith("no certificate yet: unexpected")
    assert renewer.snapshot()["acme_failures"] == 1


# The CA's refusals ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("rejectedIdentifier", "not-allowed"),
        ("caa", "not-allowed"),
        ("unsupportedIdentifier", "not-allowed"),
        ("rateLimited", "refused"),
        ("malformed", "refused"),
    ],
)
def test_the_cas_problem_documents_become_clear_errors(code: str, kind: str) -> None:
    error = _refusal(messages.Error.with_code(code, detail="the CA's own words"))
    assert error.kind == kind
    assert code in error.message and "the CA's own words" in error.message


# Port 80 ----------------------------------------------------------------------------------
def request(target: bytes, method: bytes = b"GET") -> h11.Request:
    return h11.Request(method=method, target=target, headers=[("Host", "cloud.test")])


def test_port_80_answers_only_tokens_in_progress_and_redirects_the_rest() -> None:
    challenges = Challenges()
    challenges.put("tok-1", "tok-1.thumb")
    prefix = b"/.well-known/acme-challenge/"
    assert reply(request(prefix + b"tok-1"), challenges, "cloud.test") == (200, b"tok-1.thumb")
    assert reply(request(prefix + b"tok-2"), challenges, "cloud.test") == (404, b"")
    assert reply(request(prefix + b"tok-1/x"), challenges, "cloud.test") == (404, b"")
    assert reply(request(prefix + b"tok-1", b"POST"), challenges, "cloud.test")[0] == 308
    assert reply(request(b"/login"), challenges, "cloud.test") == (308, b"")
    assert reply(None, challenges, "cloud.test") == (400, b"")
    challenges.drop("tok-1")
    assert reply(request(prefix + b"tok-1"), challenges, "cloud.test") == (404, b"")


class Stream:
    """An in-memory ByteStream: what a client sent, what it got."""

    def __init__(self, incoming: bytes) -> None:
        self.incoming = [incoming[i : i + 7] for i in range(0, len(incoming), 7)]
        self.sent = b""
        self.eof = False

    async def recv(self, n: int = 65536) -> bytes:
        return self.incoming.pop(0) if self.incoming else b""

    async def send(self, data: bytes) -> None:
        self.sent += data

    async def send_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        pass


async def test_port_80_over_a_stream() -> None:
    challenges = Challenges()
    challenges.put("abc", "abc.xyz")
    got = Stream(b"GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: cloud.test\r\n\r\n")
    assert await answer_http01(got, challenges, "cloud.test") == 200
    assert got.sent.startswith(b"HTTP/1.1 200 OK\r\n") and got.sent.endswith(b"\r\n\r\nabc.xyz")
    assert got.eof
    moved = Stream(b"GET /a?b=1 HTTP/1.1\r\nHost: cloud.test\r\n\r\n")
    assert await answer_http01(moved, challenges, "cloud.test") == 308
    assert b"Location: https://cloud.test/a?b=1\r\n" in moved.sent
    bad = Stream(b"NOT HTTP AT ALL\r\n\r\n")
    assert await answer_http01(bad, challenges, "cloud.test") == 400
    gone = Stream(b"GET / HT")
    assert await answer_http01(gone, challenges, "cloud.test") == 400


# Status and doctor ---------------------------------------------------------------------------
def test_status_shows_expiry_next_renewal_and_the_last_failure() -> None:
    now = T0
    rows = [
        {
            "name": "cloud.test:443", "target": "127.0.0.1:8080", "tls": "acme",
            "proxy_protocol": "", "cert_not_after": now + 80 * DAY, "cert_error": "",
            "acme_next": now + 50 * DAY, "acme_error": "", "acme_failures": 0,
        },
        {
            "name": "new.test:443", "target": "127.0.0.1:8080", "tls": "acme",
            "proxy_protocol": "", "cert_not_after": None,
            "cert_error": "no certificate yet: unreachable: CA down",
            "acme_next": now + 60, "acme_error": "unreachable: CA down", "acme_failures": 2,
        },
    ]  # fmt: skip
    text = format_tunnels(rows, now)
    assert "2027-04-05 08:00 UTC (in 80d); renews 2027-03-06 08:00 UTC" in text
    assert "-; orders 2027-01-15 08:01 UTC (retry 2: unreachable: CA down)" in text


def test_doctor_on_an_acme_tunnel(tmp_path: Path) -> None:
    import time

    tunnel = acme_tunnel()
    facts = acmecheck.saved_facts(tunnel, tmp_path)
    assert facts.missing and check_certificate(facts, time.time()).level is Level.WARN
    files = AcmeFiles(tmp_path, "cloud.test", LETSENCRYPT)
    chain, key = Ca().fullchain("cloud.test", time.time() - 80 * DAY, 90)
    files.save(chain, key)
    finding = check_certificate(acmecheck.saved_facts(tunnel, tmp_path), time.time())
    assert finding.level is Level.WARN and "renews it by itself" in finding.fix
    chain, key = Ca().fullchain("cloud.test", time.time(), 90)
    files.save(chain, key)
    from sshtunnel_mgr.doctor.collect import stat_path

    found = acmecheck.findings(tunnel, tmp_path, time.time(), stat_path, {os.geteuid()})
    assert [f.level for f in found] == [Level.OK, Level.OK]
    os.chmod(files.cert, 0o644)
    found = acmecheck.findings(tunnel, tmp_path, time.time(), stat_path, {os.geteuid()})
    assert found[1].level is Level.FAIL


def test_a_broken_saved_file_is_replaced_by_the_next_order(tmp_path: Path) -> None:
    files = AcmeFiles(tmp_path, "cloud.test", LETSENCRYPT)
    files.ensure_dir()
    files.cert.write_text("not a certificate")
    store = AcmeCertStore("cloud.test:443", acme_tunnel(), tmp_path)
    store.load_saved()
    assert store.context is None
    with pytest.raises(ConfigError, match="no certificate yet"):
        asyncio.run(store.current())


async def test_an_order_in_progress_never_holds_up_a_stop() -> None:
    """The order runs in a daemon thread: cancelling its waiter returns at once (the agent
    stops), and a late result finds nobody waiting; an error reaches the waiter as is."""
    from sshtunnel_mgr.agent.web.acmerenew import in_daemon_thread

    release, finished = threading.Event(), threading.Event()

    def slow() -> None:
        release.wait(30)
        finished.set()

    waiter = asyncio.create_task(in_daemon_thread(slow))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not finished.is_set()  # the stop did not wait for the CA
    release.set()
    await asyncio.to_thread(finished.wait, 30)

    def fails() -> None:
        raise AcmeError("unreachable", "CA down")

    with pytest.raises(AcmeError, match="CA down"):
        await in_daemon_thread(fails)


async def test_a_reload_keeps_an_unchanged_acme_tunnels_certificate_and_renewer(
    tmp_path: Path,
) -> None:
    """The renewers order from a closed loopback port here (never a real CA)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{sock.getsockname()[1]}/dir"
    tunnel = acme_tunnel(acme_directory=url)
    front = WebFront()
    front.use(WebFront.prepare([tunnel], tmp_path))
    front.start()
    try:
        renewer, task = front.acme.renewers["cloud.test:443"]
        front.use(WebFront.prepare([tunnel], tmp_path))  # a reload, nothing changed
        assert front.acme.renewers["cloud.test:443"] == (renewer, task)
        assert front.stores["cloud.test:443"] is renewer.store
        changed = acme_tunnel(acme_directory=url, acme_email="new@example.com")
        front.use(WebFront.prepare([changed], tmp_path))  # a new setting: a new renewer
        await asyncio.sleep(0)
        assert task.cancelled() or task.done()
        new = front.acme.renewers["cloud.test:443"][0]
        assert new is not renewer and new.store.request.email == "new@example.com"
        front.use({})  # the tunnel is gone: so is its renewer
        assert front.acme.renewers == {}
    finally:
        await front.close()


def test_doctor_reads_an_acme_tunnels_saved_certificate(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from sshtunnel_mgr.doctor.collect import agent_section

    agent = parse_config(agent_toml(ACME), "x.toml", tmp_path).require_agent()
    section = agent_section(agent, None, datetime.now(UTC))
    found = [f for f in section.findings if f.check == "agent.tls-certificate"]
    assert len(found) == 1 and found[0].level is Level.WARN
    assert "cloud.example.com:443: no ACME certificate saved yet" in found[0].message
    saved = AcmeFiles(tmp_path / "state", "cloud.example.com", LETSENCRYPT).cert
    assert saved.parent.parent == tmp_path / "state" / "acme"
    assert saved.parent.name.startswith("acme-v02.api.letsencrypt.org-")
    assert str(saved) in found[0].message


def test_a_certificate_from_another_directory_is_not_served(tmp_path: Path) -> None:
    """Staging first, then production: the staging certificate (untrusted) is not reused."""
    import time

    staging = "https://acme-staging-v02.api.letsencrypt.org/directory"
    files = AcmeFiles(tmp_path, "cloud.test", staging)
    chain, key = Ca().fullchain("cloud.test", time.time(), 90)
    files.save(chain, key)
    assert WebFront.prepare([acme_tunnel(acme_directory=staging)], tmp_path)[
        "cloud.test:443"
    ].context
    production = WebFront.prepare([acme_tunnel()], tmp_path)["cloud.test:443"]
    assert production.context is None
