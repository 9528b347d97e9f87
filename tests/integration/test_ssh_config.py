"""``sshtun ssh-config`` run where its users are, and its output used as-is by the real ssh.

On the laptop (a HOME of its own under tmp_path) it is given only the bastion's address and
the key fingerprint the bastion's admin handed out; it reads each home box's key through
the pinned bastion, and the real ``ssh`` then reaches the home box on the first try with
StrictHostKeyChecking=yes. On the bastion it prints what an admin hands out."""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshtunnel_mgr.cli.main import main
from sshtunnel_mgr.core.errors import EXIT_HOSTKEY, EXIT_UNPINNED
from sshtunnel_mgr.runtime.admin import AdminServer
from tests.harness import (
    USER,
    Keys,
    access_text,
    agent_config,
    bastion_config,
    free_port,
    home_sshd,
    pub_of,
    run_ssh,
    running_agent,
    running_bastion,
    wait_for,
    write_toml,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene

# What the laptop user already had in ~/.ssh/config: kept, and after our block.
USERS_CONFIG = (
    "# my own settings\n\nHost *\n    BatchMode yes\n    GlobalKnownHostsFile /dev/null\n"
    "    LogLevel ERROR\n    ConnectTimeout 10\n"
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() points the root logger at the (captured) stderr of the moment; undo that."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("asyncssh").level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("asyncssh").setLevel(saved[2])


@pytest.fixture
def laptop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The laptop user's HOME, with no ssh-agent."""
    home = tmp_path / "laptop"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.chdir(home)
    return home


async def _sshtun(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["ssh-config", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_laptop_pins_every_hop_and_ssh_gets_in_first_try(
    keys: Keys, tmp_path: Path, laptop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ssh_dir = laptop / ".ssh"
    (ssh_dir / "config").write_text(USERS_CONFIG)
    async with scene(keys, tmp_path) as s:
        home, bastion = s.home, s.bastion
        at = f"127.0.0.1:{bastion.port}"
        argv = [
            "--bastion",
            at,
            "--user",
            USER,
            "--identity",
            str(keys.client.path),
            "--output",
            "~/.ssh/config",
            "homebox",
        ]
        async with running_agent(
            agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home.port}")])
        ):
            code, out, err = await _sshtun(
                capsys, *argv, "--bastion-key", keys.bastion_host.fingerprint
            )
            assert code == 0, err
            pinned = [
                f"[127.0.0.1]:{bastion.port} {pub_of(keys.bastion_host)}",
                f"homebox {pub_of(keys.home_host)}",
            ]
            known = ssh_dir / "sshtun_known_hosts"
            # Written where the laptop user is, 0600, and printed with where it went.
            assert known.read_text() == "\n".join(pinned) + "\n" and _mode(known) == 0o600
            assert f"# known_hosts {known}: 2 line(s) added" in out
            assert all(f"#   {line}\n" in out for line in pinned)
            assert "Host homebox\n    HostName homebox\n    Port 22\n" in out
            config = (ssh_dir / "config").read_text()
            assert config.startswith("# my own settings\n\n# BEGIN sshtun ssh-config " + at)
            assert (
                config.endswith(USERS_CONFIG.split("\n\n", 1)[1])
                and _mode(ssh_dir / "config") == 0o600
            )
            assert (ssh_dir / "config.sshtun-backup").read_text() == USERS_CONFIG

            # The real ssh, strict host key checking, with nothing but what was written.
            got = await run_ssh(ssh_dir / "config", "homebox", "echo first-try")
            assert got.stdout == b"first-try\n", got.stderr

            # A rerun needs no --bastion-key (it is pinned now) and changes nothing.
            before = {p.name: p.read_bytes() for p in ssh_dir.iterdir()}
            code, again, err = await _sshtun(capsys, *argv)
            assert code == 0, err
            assert "0 line(s) added, 2 already there" in again and "unchanged" in again
            assert {p.name: p.read_bytes() for p in ssh_dir.iterdir()} == before


async def test_bastion_down_names_the_hop_and_exits_non_zero(
    keys: Keys, laptop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    code, out, err = await _sshtun(
        capsys,
        "--bastion",
        f"127.0.0.1:{port}",
        "--bastion-key",
        keys.bastion_host.fingerprint,
        "--identity",
        str(keys.client.path),
        "homebox",
    )
    assert code == EXIT_UNPINNED
    assert f"the bastion 127.0.0.1:{port}: unreachable" in err
    assert "homebox:22: the bastion is unreachable; fix: check that the bastion runs" in err
    assert "# NOT PINNED yet: no known_hosts line for homebox\nHost homebox\n" in out
    # A fingerprint alone pins nothing: no line was written for either hop.
    assert not (laptop / ".ssh" / "sshtun_known_hosts").exists()


async def test_unpublished_name_wrong_key_and_known_hosts_to_stdout(
    keys: Keys, tmp_path: Path, laptop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        bastion = s.bastion
        at = f"127.0.0.1:{bastion.port}"
        ident = ["--identity", str(keys.client.path)]
        # No agent publishes homebox: the bastion hop is pinned, the inner one named.
        code, out, err = await _sshtun(
            capsys, "--bastion", at, "--bastion-key", pub_of(keys.bastion_host), *ident,
            "--known-hosts", "-", "homebox",
        )  # fmt: skip
        assert code == EXIT_UNPINNED
        assert "homebox:22: the bastion does not route it" in err and "agent is up" in err
        assert "known_hosts lines (not written: --known-hosts -)" in out
        assert f"#   [127.0.0.1]:{bastion.port} {pub_of(keys.bastion_host)}\n" in out
        assert "UserKnownHostsFile" not in out
        assert not (laptop / "-").exists() and not (laptop / ".ssh" / "sshtun_known_hosts").exists()

        # Another server's key: refused outright, nothing written, exit 4.
        code, out, err = await _sshtun(
            capsys, "--bastion", at, "--bastion-key", keys.home_host.fingerprint, *ident, "homebox"
        )
        assert code == EXIT_HOSTKEY and f"not {keys.home_host.fingerprint}" in err
        assert out == "" and list((laptop / ".ssh").iterdir()) == []

        # A key the bastion does not know: its hop is pinned, the next one named.
        stranger = keys.extra("stranger")
        code, out, err = await _sshtun(
            capsys, "--bastion", at, "--bastion-key", keys.bastion_host.fingerprint,
            "--identity", str(stranger.path), "homebox",
        )  # fmt: skip
        assert code == EXIT_UNPINNED and "homebox:22: the bastion refused your key" in err
        assert "add your public key to its access file" in err
        known = laptop / ".ssh" / "sshtun_known_hosts"
        assert known.read_text() == f"[127.0.0.1]:{bastion.port} {pub_of(keys.bastion_host)}\n"
        known.unlink()

        # No key at all: never trusted on first use.
        code, out, err = await _sshtun(capsys, "--bastion", at, *ident, "homebox")
        assert code == EXIT_UNPINNED and "never trusted on first use" in err
        assert "--bastion-key" in err


async def test_on_the_bastion_it_prints_what_the_admin_hands_out(
    keys: Keys,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    bcfg = bastion_config(keys, access)
    async with home_sshd(keys, tmp_path / "home") as home, running_bastion(bcfg) as bastion:
        bcfg = bcfg.model_copy(update={"listen": [f"127.0.0.1:{bastion.port}"]})
        bfile = write_toml(tmp_path / "bastion.toml", "bastion", bcfg)
        assert bcfg.admin_socket is not None
        admin = AdminServer(bcfg.admin_socket, bastion.handle_admin)
        assert await admin.start()
        at = f"127.0.0.1:{bastion.port}"
        try:
            async with running_agent(
                agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home.port}")])
            ):
                await wait_for(lambda: logged(caplog, "key request", "sshtun-hostkey"))
                code, out, err = await _sshtun(
                    capsys, "--config", str(bfile), "--address", at, "--user", USER,
                    "--identity", str(keys.client.path),
                )  # fmt: skip
                assert code == 0, err
                # Both hops, as their agents read them; printed, no file written.
                assert f"#   [127.0.0.1]:{at.split(':')[1]} {pub_of(keys.bastion_host)}\n" in out
                assert f"#   homebox {pub_of(keys.home_host)}\n" in out
                assert (
                    f"sshtun ssh-config --bastion {at} --bastion-key "
                    f"{keys.bastion_host.fingerprint} homebox\n" in out
                )
                assert not Path("-").exists()
                # Pasted by the user: the Host blocks into a config, the lines into known_hosts.
                user = tmp_path / "user"
                user.mkdir()
                lines = [
                    ln[4:] for ln in out.splitlines() if ln.startswith("#   ") and " ssh-" in ln
                ]
                (user / "known_hosts").write_text("\n".join(lines) + "\n")
                cfg = user / "config"
                cfg.write_text(
                    out
                    + f"\nHost *\n    UserKnownHostsFile {user / 'known_hosts'}\n"
                    + USERS_CONFIG
                )
                got = await run_ssh(cfg, "homebox", "echo pasted")
                assert got.stdout == b"pasted\n", got.stderr
        finally:
            await admin.stop()


async def test_on_a_stopped_bastion_the_missing_home_keys_are_an_error(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys, listen="homebox:22,*.home.example.com:2222"))
    bcfg = bastion_config(keys, access).model_copy(update={"admin_socket": tmp_path / "none.sock"})
    bfile = write_toml(tmp_path / "bastion.toml", "bastion", bcfg)
    code, out, err = await _sshtun(
        capsys, "--config", str(bfile), "--address", "bastion.example.com"
    )
    assert code == EXIT_UNPINNED
    assert "homebox:22: the bastion is not running here" in err
    assert "sshtun ssh-config --bastion bastion.example.com:22 --bastion-key SHA256:" in err
    assert "Host homebox\n    HostName homebox\n    Port 22\n" in out
    assert "Host *.home.example.com\n    HostName %h\n    Port 2222\n" in out
    assert f"#   bastion.example.com {pub_of(keys.bastion_host)}\n" in out


async def test_only_the_publishing_connection_may_announce_a_host_key(
    keys: Keys, tmp_path: Path
) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        bastion, client = s.bastion, s.client_cfg
        line = pub_of(keys.home_host)
        for command, error in [
            (f"sshtun-hostkey homebox 22 {line}", b"homebox:22 is not published on this"),
            ("sshtun-hostkey homebox 22 ssh-ed25519 AAAA", b"bad host key announcement"),
            ("sshtun-hostkey homebox", b"bad host key announcement"),
        ]:
            got = await run_ssh(client, "bastion", command)
            assert got.returncode == 1 and error in got.stdout, (got.stdout, got.stderr)
        assert all(not c.home_host_keys for c in bastion.state.connections.values())
