"""Dropbear's ``dbclient`` (Debian 12: dropbear-bin 2022.83), a real peer, through sshtun:
as the jump client (multihop to a real home sshd) and as the agent (``dbclient -R``).

dbclient always sends a guessed first key-exchange packet; sshcompat/kexguess.py makes the
bastion judge that guess as RFC 4253 §7 says. The order test proves the shim is what makes
it work: with ML-KEM first in the bastion's offer, dbclient connects with the shim and is
cut off with "Key exchange not in progress" without it.

Host keys are pinned: dbclient reads ``$HOME/.ssh/known_hosts`` and matches a line by host
name alone, with no ``[host]:port`` form (measured on 2022.83; mkj/dropbear#124). It never
gets ``-y`` (accept unknown keys), and runs in a new session with no terminal, so it
cannot prompt (2022.83 has no BatchMode): an unpinned key fails the test by its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from sshtunnel_mgr.core import policy
from sshtunnel_mgr.keys.store import KeyInfo
from sshtunnel_mgr.sshcompat import kexguess
from tests.harness import (
    DBCLIENT,
    DROPBEARCONVERT,
    USER,
    Keys,
    Result,
    access_text,
    agent_config,
    bastion_config,
    bastion_pub,
    home_sshd,
    pub_of,
    require_dropbear,
    run_ssh,
    running_agent,
    running_bastion,
    wait_for,
    write_ssh_config,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene

pytestmark = pytest.mark.openssh

DBCLIENT_TIMEOUT = 60  # generous: the machine is shared; a hang fails here, not forever


def dropbear_key(info: KeyInfo, dest: Path) -> Path:
    """The same key in Dropbear's own format (dbclient -i reads no OpenSSH keys)."""
    assert DROPBEARCONVERT is not None
    done = subprocess.run(
        [DROPBEARCONVERT, "openssh", "dropbear", str(info.path), str(dest)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return dest


def dropbear_home(workdir: Path, keys: Keys) -> dict[str, str]:
    """A HOME whose ~/.ssh/known_hosts pins the bastion and the home box's name."""
    ssh_dir = workdir / "home" / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True)
    (ssh_dir / "known_hosts").write_text(
        f"127.0.0.1 {bastion_pub(keys)}\nhomebox {pub_of(keys.home_host)}\n"
    )
    return {**os.environ, "HOME": str(workdir / "home")}


@contextlib.asynccontextmanager
async def dbclient(
    *args: str, env: dict[str, str], stdin: int = subprocess.DEVNULL
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A dbclient process, always killed (by its PID) when the block ends."""
    assert DBCLIENT is not None
    proc = await asyncio.create_subprocess_exec(
        DBCLIENT,
        *args,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # no controlling terminal: it cannot ask about a host key
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def run_dbclient(*args: str, env: dict[str, str]) -> Result:
    async with dbclient(*args, env=env) as proc:
        out, err = await asyncio.wait_for(proc.communicate(), DBCLIENT_TIMEOUT)
    assert proc.returncode is not None
    return Result(proc.returncode, out, err.decode(errors="replace"))


def routes_to_home(home_port: int) -> Sequence[tuple[str, int, str]]:
    return [("homebox", 22, f"127.0.0.1:{home_port}")]


MLKEM_FIRST = ("mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org")


@pytest.fixture(params=["shipped-order", "mlkem-first"])
def server_kex_order(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bastion's kex offer as shipped (curve25519 first: dbclient's guess is right), and
    with ML-KEM first (its guess is wrong, so only a correct guess check lets it in)."""
    if request.param == "mlkem-first":
        monkeypatch.setattr(policy, "SERVER_KEX_ALGS", MLKEM_FIRST)


@pytest.mark.usefixtures("server_kex_order")
async def test_dbclient_multihop_through_the_bastion_reaches_the_home_sshd(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``dbclient bastion/port,user@homebox/22 cmd``: the first hop is a ``dbclient -B
    homebox:22`` (direct-tcpip) through sshtun, the second a real sshd behind the agent."""
    require_dropbear()
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    client_key = dropbear_key(keys.client, tmp_path / "client.dropbear")
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion_config(keys, access)) as bastion,
        running_agent(agent_config(keys, bastion.port, routes_to_home(home.port))),
    ):
        env = dropbear_home(tmp_path / "db", keys)
        hops = f"sshtun@127.0.0.1/{bastion.port},{USER}@homebox/22"
        result = await run_dbclient("-T", "-i", str(client_key), hops, "echo via-dbclient", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"via-dbclient\n"
        assert logged(caplog, "route", "name=homebox", "port=22")
        # The home sshd checked the client's own key: the inner session is end to end.
        assert any("Accepted publickey" in line for line in home.log)


@pytest.mark.usefixtures("server_kex_order")
async def test_dbclient_as_the_agent_publishes_a_name_that_ssh_jump_reaches(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``dbclient -N -R homebox:22:127.0.0.1:PORT``: dbclient accepts a bind address in
    -R and sends it as the tcpip-forward's name; OpenSSH's ``ssh -J`` then reaches the
    real home sshd through it."""
    require_dropbear()
    agent_key = dropbear_key(keys.agent, tmp_path / "agent.dropbear")
    async with scene(keys, tmp_path) as s:
        home, bastion = s.home, s.bastion
        env = dropbear_home(tmp_path / "db", keys)
        async with dbclient(
            "-N",
            "-T",
            "-o",
            "ExitOnForwardFailure=yes",
            "-i",
            str(agent_key),
            "-p",
            str(bastion.port),
            "-R",
            f"homebox:22:127.0.0.1:{home.port}",
            "sshtun@127.0.0.1",
            env=env,
        ) as agent:
            await wait_for(
                lambda: bastion.state.routes.lookup("homebox", 22) or agent.returncode is not None,
                timeout=DBCLIENT_TIMEOUT,
            )
            assert agent.returncode is None, "dbclient -R exited"
            cfg = write_ssh_config(tmp_path / "client", keys, bastion.port)
            result = await run_ssh(cfg, "homebox", "echo via-dropbear-agent")
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"via-dropbear-agent\n"
        # dbclient is gone: its name is freed.
        await wait_for(lambda: not bastion.state.routes.lookup("homebox", 22))
        assert logged(caplog, "unpublish", "name=homebox")


@pytest.mark.parametrize("shim", [True, False], ids=["with-shim", "without-shim"])
async def test_dbclient_connects_whatever_the_bastions_kex_order_because_of_the_shim(
    keys: Keys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    shim: bool,
) -> None:
    """ML-KEM first in the bastion's offer: dbclient's guess (curve25519) is then wrong by
    RFC 4253 §7, though negotiation picks curve25519. With the shim the guessed packet is
    dropped and dbclient's second one used; without it (stock asyncssh 2.24) the bastion
    uses the guess, gets the second packet after the exchange and cuts the connection.
    ``dbclient -B homebox:22`` carries the home sshd's banner back when it works."""
    require_dropbear()
    monkeypatch.setattr(policy, "SERVER_KEX_ALGS", MLKEM_FIRST)
    if not shim:
        monkeypatch.setattr(kexguess, "install", lambda conn: False)
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    client_key = dropbear_key(keys.client, tmp_path / "client.dropbear")
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion_config(keys, access)) as bastion,
        running_agent(agent_config(keys, bastion.port, routes_to_home(home.port))),
    ):
        env = dropbear_home(tmp_path / "db", keys)
        args = ("-i", str(client_key), "-p", str(bastion.port), "-B", "homebox:22")
        async with dbclient(*args, "sshtun@127.0.0.1", env=env, stdin=subprocess.PIPE) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            banner = await asyncio.wait_for(proc.stdout.readline(), DBCLIENT_TIMEOUT)
            if shim:
                assert banner.startswith(b"SSH-2.0-OpenSSH"), banner
                assert logged(caplog, "route", "name=homebox", "port=22")
                assert not logged(caplog, "Key exchange not in progress")
            else:
                assert banner == b""  # cut off before any route
                err = await asyncio.wait_for(proc.stderr.read(), DBCLIENT_TIMEOUT)
                assert b"Disconnect received" in err, err  # dbclient 2022.83 then exits 0
                assert logged(caplog, "left before login", "Key exchange not in progress")
                assert not logged(caplog, "route", "name=homebox")


async def test_dbclient_rekeys_mid_stream_with_a_guess_each_time(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dbclient answers every key re-exchange the bastion starts with its KEXINIT plus a
    guess, too. ML-KEM first and a 64 KiB rekey limit on the bastion: a 1 MB download
    through the multihop crosses many re-exchanges, each guess dropped, no byte lost."""
    require_dropbear()
    caplog.set_level(logging.DEBUG, logger="sshtunnel_mgr.sshcompat")
    monkeypatch.setattr(policy, "SERVER_KEX_ALGS", MLKEM_FIRST)
    stock_options = policy.server_options
    monkeypatch.setattr(
        policy, "server_options", lambda: {**stock_options(), "rekey_bytes": 64 * 1024}
    )
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    client_key = dropbear_key(keys.client, tmp_path / "client.dropbear")
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion_config(keys, access)) as bastion,
        running_agent(agent_config(keys, bastion.port, routes_to_home(home.port))),
    ):
        env = dropbear_home(tmp_path / "db", keys)
        hops = f"sshtun@127.0.0.1/{bastion.port},{USER}@homebox/22"
        size = 1_000_000
        result = await run_dbclient(
            "-T", "-i", str(client_key), hops, f"head -c {size} /dev/zero", env=env
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"\0" * size
        dropped = [r for r in caplog.records if "kex guess decision changed" in r.getMessage()]
        assert len(dropped) >= 2, "the first exchange and at least one re-exchange"
