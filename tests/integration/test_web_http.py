"""The bastion's HTTP front, end to end with real peers: curl, ``python -m http.server`` as
the home box's port 80 (ACME HTTP-01 challenges), ``openssl s_server`` on 443. Routed by
``Host`` parsed with h11; redirects, 404 and 400 say nothing about which names exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Keys, wait_for
from tests.integration.web_peers import (
    curl,
    http_server,
    make_pki,
    raw_exchange,
    tls_server,
    web_bastion,
)

pytestmark = pytest.mark.asyncio

PERMIT = "cloud.test:443,cloud.test:80,plain.test:80,tls.test:443"
WEB = {"public": ["*.test"], "head_timeout": 0.5, "head_max_bytes": 2048}


async def test_http_routes_by_host(keys: Keys, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "home", ["cloud.test", "tls.test"])
    root = tmp_path / "www"
    (root / ".well-known" / "acme-challenge").mkdir(parents=True)
    (root / ".well-known" / "acme-challenge" / "tok123").write_text("tok123.thumbprint")
    (root / "index.html").write_text("plain http at home")
    async with tls_server(pki) as tls, http_server(root) as plain:
        tunnels = [
            ("cloud.test", 443, f"127.0.0.1:{tls}"),
            ("cloud.test", 80, f"127.0.0.1:{plain}"),  # for ACME challenges only
            ("plain.test", 80, f"127.0.0.1:{plain}"),
            ("tls.test", 443, f"127.0.0.1:{tls}"),
        ]
        async with web_bastion(keys, tmp_path, tunnels, PERMIT, **WEB) as web:
            names = ("cloud.test", "plain.test", "tls.test", "nobody.test")
            resolve = [f"{n}:{p}:127.0.0.1" for n in names for p in (web.http, web.https)]
            args = [a for r in resolve for a in ("--resolve", r)] + ["--cacert", str(pki.ca)]
            fmt = ["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"]
            # A name served on 443: redirected to https (308), path and query kept ...
            code, out, err = await curl(*args, *fmt, f"http://cloud.test:{web.http}/a/b?c=d")
            assert (code, out) == (0, f"308 https://cloud.test:{web.https}/a/b?c=d"), err
            code, out, err = await curl(*args, *fmt, f"http://tls.test:{web.http}/")
            assert out == f"308 https://tls.test:{web.https}/"
            # ... which curl follows, through the bastion again, to the home TLS server.
            code, out, err = await curl(*args, "-L", f"http://cloud.test:{web.http}/")
            assert code == 0 and "s_server" in out, err
            # ACME HTTP-01: the challenge goes to the agent's cloud.test:80 publication.
            url = f"http://cloud.test:{web.http}/.well-known/acme-challenge/tok123"
            code, out, err = await curl(*args, url)
            assert (code, out) == (0, "tok123.thumbprint"), err
            # ... and for a name with no port-80 publication, 404.
            url = f"http://tls.test:{web.http}/.well-known/acme-challenge/tok123"
            code, out, err = await curl(*args, *fmt, url)
            assert out.strip() == "404"
            # A name published on 80 only: passed through.
            code, out, err = await curl(*args, f"http://plain.test:{web.http}/")
            assert (code, out) == (0, "plain http at home"), err
            # Unknown name: 404, no details.
            code, out, err = await curl(*args, "-i", f"http://nobody.test:{web.http}/")
            assert out.startswith("HTTP/1.1 404 Not Found\r\n") and "nobody" not in out
            await wait_for(lambda: len(web.records("route")) >= 3)
            routes = web.records("route")
            assert {(r["via"], r["name"], r["port"]) for r in routes} >= {
                ("http", "cloud.test", 80),
                ("http", "plain.test", 80),
                ("https", "cloud.test", 443),
            }
            refused = web.records("refused")
            reasons = " | ".join(r["reason"] for r in refused)
            assert "no tls.test:80 publication" in reasons
            assert "nobody.test is not published on 80 or 443" in reasons
            assert web.bastion.state.counters["web_answered_308"] >= 3


async def test_bad_oversized_and_slow_heads(keys: Keys, tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    async with http_server(root) as plain:
        tunnels = [("plain.test", 80, f"127.0.0.1:{plain}")]
        async with web_bastion(keys, tmp_path, tunnels, PERMIT, **WEB) as web:
            got = await raw_exchange(web.http, [b"BLAH\r\n\r\n"])
            assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            got = await raw_exchange(web.http, [b"GET / HTTP/1.1\r\n\r\n"])  # no Host
            assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            head = b"GET / HTTP/1.1\r\nHost: plain.test\r\n" + b"X-Pad: " + b"a" * 4000
            got = await raw_exchange(web.http, [head])
            assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            # Slowloris: a byte at a time never makes a head in time; the bastion hangs up.
            slow = [b"GET / HTTP/1.1\r\n", b"Host: plain.test\r\n", b"X-a: b\r\n"]
            assert await raw_exchange(web.http, slow, pause=0.3) == b""
            await wait_for(lambda: len(web.records("refused")) >= 4)
            reasons = " | ".join(r["reason"] for r in web.records("refused"))
            assert "no request head in 0.5 s" in reasons
            assert "request head over 2048 bytes" in reasons
            assert not web.records("route")
