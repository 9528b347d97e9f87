"""A real browser on the web path: headless Chromium (Debian's ``chromium``) opens
``https://cloud.test/`` through a real bastion's HTTPS listener (``[bastion.web]``, routing
raw TLS by SNI) to an in-process agent that ends TLS (``tls = "files"``, a certificate
from a CA made here) in front of ``python -m http.server`` at home.

The CA is *trusted*, never waved through: it is added to an NSS database under a
temporary HOME (``certutil -A -t C,,``), which is where Chromium on Linux reads trust
anchors a user added (no ``--ignore-certificate-errors``). Every name stays local: the
host resolver maps the test's names to the bastion's loopback port and every other name
to NOTFOUND. The screenshot (a PNG, decoded here with zlib) must show the page's solid
colour and its white text; ``--dump-dom`` must hold the page's text. The refusals: a name
the agent publishes but the bastion does not make public gets no page (and is audited),
and the same browser without the CA trusted gets no page either.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from sshtunnel_mgr.agent import Agent
from sshtunnel_mgr.core.config import TunnelConfig
from sshtunnel_mgr.core.webconfig import WebConfig
from tests.harness import (
    Keys,
    agent_config,
    bastion_config,
    running_agent,
    running_bastion,
    wait_for,
)
from tests.integration.test_agent_tls import require  # a skip, or a failure in CI
from tests.integration.web_peers import Pki, http_server, make_pki

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CERTUTIL = shutil.which("certutil")
NAME = "cloud.test"
HIDDEN = "secret.test"  # published by the agent, allowed by the access file, not public
BACKGROUND = (0x6A, 0x1B, 0x9A)  # the page's solid colour
WIDTH, HEIGHT = 640, 400
TEXT = "Through the tunnel"
PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>cloud.test</title></head>"
    '<body style="margin:0;background:#6a1b9a;color:#fff;font:bold 72px sans-serif">'
    f'<div style="padding:40px">{TEXT}</div></body></html>\n'
)


@pytest.fixture(autouse=True)
def _browser_installed() -> None:
    require(CHROMIUM, "chromium")
    require(CERTUTIL, "libnss3-tools")


# A PNG, decoded by hand -------------------------------------------------------------------
def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    prev = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        pixels.extend((line[x], line[x + 1], line[x + 2]) for x in range(0, stride, bpp))
        prev = line
    return width, height, pixels


def share(pixels: list[tuple[int, int, int]], colour: tuple[int, int, int]) -> float:
    """The fraction of pixels within a small distance of ``colour`` (colour management may
    shift a channel by a step or two)."""
    counts = Counter(pixels)
    near = sum(n for px, n in counts.items() if all(abs(px[i] - colour[i]) <= 4 for i in range(3)))
    return near / len(pixels)


# The browser ---------------------------------------------------------------------------------
@dataclass
class Browser:
    home: Path  # HOME for chromium: its NSS database is $HOME/.pki/nssdb
    https: int  # the bastion's HTTPS listener

    @classmethod
    async def create(cls, home: Path, https: int, trust: Path | None) -> Browser:
        nssdb = home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        await run(CERTUTIL, "-N", "-d", f"sql:{nssdb}", "--empty-password")
        if trust is not None:
            await run(CERTUTIL, "-A", "-d", f"sql:{nssdb}", "-n", "sshtun test CA", "-t", "C,,",
                      "-i", str(trust))  # fmt: skip
        return cls(home, https)

    async def open(self, name: str, shot: Path) -> tuple[str, str]:
        """Open ``https://name/``; the screenshot goes to ``shot`` (none when the load
        fails); returns the DOM and what the browser said on stderr (a failed load:
        ``Page load failed: net::ERR_...``)."""
        assert CHROMIUM is not None
        rules = f"MAP {NAME}:443 127.0.0.1:{self.https}, MAP {HIDDEN}:443 127.0.0.1:{self.https}"
        argv = [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # the browser's own sandbox cannot start as root
            "--disable-gpu",
            "--disable-dev-shm-usage",  # a container's small /dev/shm
            f"--user-data-dir={self.home / 'profile'}",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--host-resolver-rules={rules}, MAP * ~NOTFOUND",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--screenshot={shot}",
            "--dump-dom",
            f"https://{name}/",
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
        }
        return await run(*argv, env=env, check=False)


async def run(*argv: str, env: dict[str, str] | None = None, check: bool = True) -> tuple[str, str]:
    """A child in its own process group: on a time-out the group (the browser's helper
    processes too) is killed by its id, so nothing is left behind."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if check:
        assert proc.returncode == 0, f"{argv[0]}: {err.decode(errors='replace')}"
    return out.decode(errors="replace"), err.decode(errors="replace")


# The scene: bastion + agent (TLS at home) + a web server at home ----------------------------
@dataclass
class Scene:
    pki: Pki
    https: int
    audit: Path
    agent: Agent

    def connects(self) -> list[int]:
        """How often each of the agent's links connected: [1] while its first SSH
        connection has lasted (a browser closing its side must never end it)."""
        return [link.status.connects for link in self.agent.links]

    def records(self, kind: str) -> list[dict[str, object]]:
        lines = self.audit.read_text().splitlines() if self.audit.exists() else []
        return [r for r in map(json.loads, lines) if r["event"] == kind]


@asynccontextmanager
async def scene(keys: Keys, tmp_path: Path) -> AsyncIterator[Scene]:
    pki = make_pki(tmp_path / "home", [NAME, HIDDEN])
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE)
    access = tmp_path / "access"
    access.write_text(f'permitlisten="{NAME}:443,{HIDDEN}:443" {keys.agent.public_line}\n')
    audit = tmp_path / "audit.jsonl"
    web = WebConfig(https_listen="127.0.0.1:0", public=[NAME])
    async with (
        http_server(site) as app,
        running_bastion(bastion_config(keys, access, web=web, audit_log=audit)) as bastion,
    ):
        assert bastion.web is not None
        tunnels = [
            TunnelConfig(name=n, port=443, target=f"127.0.0.1:{app}", tls="files",
                         cert=pki.cert, key=pki.key)
            for n in (NAME, HIDDEN)
        ]  # fmt: skip
        base = agent_config(keys, bastion.port, [(NAME, 443, f"127.0.0.1:{app}")])
        config = base.model_copy(update={"tunnels": tunnels})
        async with running_agent(config) as running:
            await wait_for(lambda: len(bastion.state.routes) == 2)
            yield Scene(pki, bastion.web.https_addresses[0][1], audit, running.agent)


async def test_chromium_shows_the_home_page_through_the_bastion(keys: Keys, tmp_path: Path) -> None:
    async with scene(keys, tmp_path) as s:
        browser = await Browser.create(tmp_path / "browser", s.https, trust=s.pki.ca)
        shot = tmp_path / "page.png"
        dom, said = await browser.open(NAME, shot)
        await wait_for(lambda: s.records("route"), 20)
        routes = s.records("route")
        assert s.connects() == [1]  # the browser's close never reached the agent's link
    assert "Page load failed" not in said, said
    assert TEXT in dom and "<title>cloud.test</title>" in dom
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    assert share(pixels, BACKGROUND) > 0.6  # the page's colour fills the window
    assert share(pixels, (255, 255, 255)) > 0.01  # and its big white text is drawn
    assert all(r["via"] == "https" and r["name"] == NAME for r in routes)


async def test_chromium_gets_no_page_for_a_name_that_is_not_public(
    keys: Keys, tmp_path: Path
) -> None:
    async with scene(keys, tmp_path) as s:
        browser = await Browser.create(tmp_path / "browser", s.https, trust=s.pki.ca)
        shot = tmp_path / "refused.png"
        dom, said = await browser.open(HIDDEN, shot)
        await wait_for(lambda: s.records("refused"), 20)
        refused = s.records("refused")
        assert not s.records("route")
    assert TEXT not in dom
    assert "net::ERR_SSL_UNRECOGNIZED_NAME_ALERT" in said, said  # the bastion's TLS alert
    assert f"{HIDDEN} is not public" in " | ".join(str(r["reason"]) for r in refused)
    if shot.exists():  # an error page, never the home page's colour
        assert share(png_pixels(shot.read_bytes())[2], BACKGROUND) < 0.01


async def test_chromium_without_the_ca_trusted_gets_no_page(keys: Keys, tmp_path: Path) -> None:
    """The certificate really is checked: the same browser, no trust anchor, no page (the
    bastion did route it: the refusal is the browser's)."""
    async with scene(keys, tmp_path) as s:
        browser = await Browser.create(tmp_path / "browser", s.https, trust=None)
        shot = tmp_path / "untrusted.png"
        dom, said = await browser.open(NAME, shot)
        await wait_for(lambda: s.records("route"), 20)
    assert TEXT not in dom
    assert "net::ERR_CERT_AUTHORITY_INVALID" in said, said
    if shot.exists():
        assert share(png_pixels(shot.read_bytes())[2], BACKGROUND) < 0.01
