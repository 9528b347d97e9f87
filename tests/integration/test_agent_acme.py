"""``tls = "acme"`` with real peers: Debian's ``pebble`` ACME test CA validates HTTP-01 on
port 80 of the sshtun bastion for real (no validation shortcut), inside a network
namespace this test creates (``unshare -n``: ports 80 and 443 there are the test's own);
curl then gets the home app's page through the bastion with the certificate pebble issued,
trusting only pebble's root. See acme_scene.py for the scene. A CA that is down is a real
closed port on loopback: the order fails as "unreachable" and is retried with backoff.

Skips without pebble, curl, ``unshare`` or root, except in CI (SSHTUN_REQUIRE_OPENSSH=1:
.ci/run installs pebble), where a skip is a failure."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from sshtunnel_mgr.agent.web.acme import AcmeError, AcmeFiles, AcmeRequest, Challenges, obtain
from sshtunnel_mgr.agent.web.acmerenew import AcmeCertStore, AcmeRenewer
from sshtunnel_mgr.core.backoff import Backoff
from sshtunnel_mgr.core.config import TunnelConfig
from tests.harness import REQUIRE_OPENSSH

ROOT = Path(__file__).resolve().parents[2]
SCENE_TIMEOUT = 150  # bounds a hang only; the scene takes a few seconds on a quiet machine


def require_pebble() -> None:
    tools = ("pebble", "pebble-challtestsrv", "curl", "unshare", "ip")
    missing = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (for unshare -n)")
    if missing:
        message = f"needs {', '.join(missing)} (apt-get install pebble curl; .ci/run does)"
        if REQUIRE_OPENSSH:
            pytest.fail(message + " but SSHTUN_REQUIRE_OPENSSH=1")
        pytest.skip(message)


@pytest.fixture(scope="module")
def scene() -> dict[str, Any]:
    """One run of acme_scene.py in its own network namespace (shared by the tests here)."""
    require_pebble()

    async def run() -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            "unshare", "-n", sys.executable, "-m", "tests.integration.acme_scene",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), SCENE_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out, err

    code, out, err = asyncio.run(run())
    assert code == 0, err.decode(errors="replace")[-4000:]
    result: dict[str, Any] = json.loads(out)
    return result


def test_curl_gets_the_page_through_the_bastion_with_the_certificate_pebble_issued(
    scene: dict[str, Any],
) -> None:
    first = scene["first"]
    assert first["curl_rc"] == 0, first["curl_err"]
    assert first["curl_out"] == "hello from the home box\n"
    assert first["issuer"].startswith("CN=Pebble Intermediate CA")
    assert not first["saved_served_at_start"]
    # pebble validated for real: an HTTP request to cloud.test:80 (the bastion, through
    # challtestsrv's DNS), then the authorization VALID (no PEBBLE_VA_ALWAYS_VALID here)
    pebble = "\n".join(scene["pebble_log"])
    assert (
        "Attempting to validate w/ HTTP: http://cloud.test:80/.well-known/acme-challenge/" in pebble
    )
    assert "set VALID by completed challenge" in pebble
    # port 80 for anything but a challenge: the bastion's redirect to https
    assert first["http"] == "308 https://cloud.test/page"
    # kept 0600 in a 0700 directory
    assert (first["cert_mode"], first["account_mode"], first["dir_mode"]) == (
        "0o600",
        "0o600",
        "0o700",
    )
    row = next(t for t in first["snapshot"] if t["name"] == "cloud.test:443")
    assert row["cert_subject"] == "CN=cloud.test" and row["acme_error"] == ""
    assert row["acme_next"] < row["cert_not_after"]  # renewal is scheduled before expiry
    logged = "\n".join(scene["log"])
    assert "acme certificate issued name=cloud.test:443" in logged
    assert "renew_at=" in logged


def test_a_failed_challenge_is_logged_with_the_cas_reason_and_retried(
    scene: dict[str, Any],
) -> None:
    first = scene["first"]
    assert first["bad_error"].startswith("challenge: the CA's challenge failed: bad.test http-01")
    assert "127.0.0.2:80" in first["bad_error"]  # pebble's own words: where it connected
    assert first["bad_next"] is not None
    line = next(x for x in scene["log"] if x.startswith("acme order failed name=bad.test:443"))
    assert "kind=challenge" in line and "retry_in=" in line
    row = next(t for t in first["snapshot"] if t["name"] == "bad.test:443")
    assert row["cert_not_after"] is None and row["acme_failures"] >= 1


def test_a_restarted_agent_serves_the_saved_certificate_without_a_new_order(
    scene: dict[str, Any],
) -> None:
    first, second = scene["first"], scene["second"]
    assert second["saved_served_at_start"]
    assert second["serial"] == first["serial"]
    assert second["curl_rc"] == 0 and second["curl_out"] == "hello from the home box\n"
    issued = [x for x in scene["log"] if x.startswith("acme certificate issued name=cloud.test")]
    assert len(issued) == 2  # the first order, and the renewal below: none at the restart


def test_a_renewal_serves_new_connections_and_leaves_the_live_one_alone(
    scene: dict[str, Any],
) -> None:
    """The order the renewer makes when due, for real against pebble, while a TLS
    connection through the bastion is open: a new connection gets the new certificate,
    the old one still gets its page."""
    renewal, first = scene["second"]["renewal"], scene["first"]
    assert renewal["failed"] is None
    assert renewal["before"] == first["serial"] and renewal["after"] != first["serial"]
    assert renewal["old_conn"].startswith("HTTP/1.1 200 OK")
    assert renewal["old_conn"].endswith("hello from the home box\n")


# The CA down: a real closed port -------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def test_a_ca_that_is_down_is_unreachable(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{closed_port()}/dir"
    with pytest.raises(AcmeError) as caught:
        obtain(AcmeRequest("cloud.test", url), AcmeFiles(tmp_path, "cloud.test", url), Challenges())
    assert caught.value.kind == "unreachable"
    assert f"ACME directory {url} unreachable" in caught.value.message
    assert "acme_directory" in caught.value.hint
    assert (tmp_path / "acme").stat().st_mode & 0o777 == 0o700  # the account key was made


async def test_the_renewer_backs_off_while_the_ca_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sshtunnel_mgr")
    url = f"https://127.0.0.1:{closed_port()}/dir"
    tunnel = TunnelConfig(
        name="cloud.test", port=443, target="127.0.0.1:8080", tls="acme", acme_directory=url
    )
    store = AcmeCertStore("cloud.test:443", tunnel, tmp_path)
    now = [1_800_000_000.0]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        if len(sleeps) == 4:
            raise asyncio.CancelledError  # enough: the loop ends here

    renewer = AcmeRenewer(
        store, Challenges(), clock=lambda: now[0], sleep=sleep,
        backoff=Backoff(base=60, cap=300, jitter=0.0),
    )  # fmt: skip
    with pytest.raises(asyncio.CancelledError):
        await renewer.run()
    assert sleeps == [60, 120, 240, 300]  # the real order failed each time; capped backoff
    assert renewer.failures == 4 and renewer.last_error.startswith("unreachable: ACME directory")
    lines = [r.getMessage() for r in caplog.records if "acme order failed" in r.getMessage()]
    assert len(lines) == 4 and all("kind=unreachable" in line for line in lines)
    assert store.context is None and store.error.startswith("no certificate yet: unreachable")
