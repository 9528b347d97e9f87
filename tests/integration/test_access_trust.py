"""The access file fails closed (issue 8, items 8 and 9), with real peers and processes:
a ``from=`` exclusion holds however the address is spelled, a pattern that could never
match refuses the file (at start and on reload, where the old policy stays), and a file
that someone else could change is refused like OpenSSH's StrictModes refuses it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sshtunnel_mgr.cli.main import main
from sshtunnel_mgr.keys.store import generate_key
from tests.harness import (
    SSHTUN,
    Keys,
    access_text,
    agent_config,
    bastion_config,
    bastion_pub,
    free_port,
    home_sshd,
    process,
    read_until,
    run_ssh,
    running_agent,
    running_bastion,
    wait_for,
    write_ssh_config,
    write_toml,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene
from tests.integration.test_rotation import scene as rotation_scene

STRANGER_UID = 4242  # owns nothing on this machine


def client_line(keys: Keys, options: str) -> str:
    return f'{options},permitopen="homebox:22" {keys.client.public_line}'


def access_with(keys: Keys, options: str) -> str:
    return access_text(keys).replace(
        f'permitopen="homebox:22" {keys.client.public_line}', client_line(keys, options)
    )


# --- item 8: from= ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("from_", "allowed"),
    [
        ("!::ffff:127.0.0.1,*", False),  # IPv4-mapped spelling of the client's address
        ("!0:0:0:0:0:ffff:7f00:1,*", False),  # the same, uncompressed hex
        ("!::ffff:127.0.0.0/104,*", False),  # a mapped CIDR block is an IPv4 block
        ("!127.0.0.2,*", True),  # control: another address is not excluded
    ],
)
async def test_excluded_address_is_refused_however_spelled(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, from_: str, allowed: bool
) -> None:
    async with scene(keys, tmp_path, access=access_with(keys, f'from="{from_}"')) as s, s.agent():
        cfg = s.client_cfg
        result = await run_ssh(cfg, "homebox", "echo through")
        if allowed:
            assert result.stdout == b"through\n", result.stderr
            return
        assert result.returncode == 255
        assert "Permission denied" in result.stderr
        assert logged(caplog, "not allowed from 127.0.0.1", from_)


@pytest.mark.parametrize(
    ("from_", "allowed"),
    [
        ("!0:0:0:0:0:0:0:1,*", False),  # ::1 uncompressed
        ("!0000::0001,*", False),  # ::1 with leading zeros
        ("!::2,*", True),  # control
    ],
)
async def test_excluded_ipv6_address_is_refused_however_spelled(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, from_: str, allowed: bool
) -> None:
    """A real ssh client from ::1 (``ssh -W``, the same direct-tcpip as ``-J``)."""
    access = tmp_path / "access"
    access.write_text(access_with(keys, f'from="{from_}"'))
    config = bastion_config(keys, access).model_copy(update={"listen": ["[::1]:0"]})
    async with running_bastion(config) as bastion:
        known = tmp_path / "known_hosts"
        known.write_text(f"[::1]:{bastion.port} {bastion_pub(keys)}\n")
        cfg = tmp_path / "ssh_config"
        cfg.write_text(
            f"Host bastion\n  HostName ::1\n  Port {bastion.port}\n  User sshtun\n"
            f"  BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {known}\n"
            f"  GlobalKnownHostsFile /dev/null\n  IdentitiesOnly yes\n"
            f"  IdentityFile {keys.client.path}\n  ConnectTimeout 10\n  LogLevel ERROR\n"
        )
        result = await run_ssh(cfg, "-W", "homebox:22", "bastion")
        assert result.returncode == 255
        if allowed:  # logged in; homebox is simply not published here
            assert "Permission denied" not in result.stderr
            assert logged(caplog, "auth ok", "from=::1")
            return
        assert "Permission denied" in result.stderr
        assert logged(caplog, "not allowed from ::1", from_)


async def test_doctor_fails_a_directory_others_can_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    generate_key(etc / "host_key")
    agent = generate_key(tmp_path / "agent_key").public_line
    (etc / "access").write_text(f'permitlisten="homebox:22" {agent}\n')
    (etc / "access").chmod(0o600)
    cfg = etc / "bastion.toml"
    cfg.write_text('[bastion]\nhost_key = "host_key"\naccess_file = "access"\n')
    etc.chmod(0o777)
    assert main(["doctor", "--config", str(cfg), "--json"]) == 7
    report = json.loads(capsys.readouterr().out)
    failed = {f["check"]: f for f in report["findings"] if f["level"] == "fail"}
    assert "bastion.access-dir" in failed
    assert failed["bastion.access-dir"]["message"].startswith(
        f"directory {etc} is writable by group and others (mode 0777)"
    )
    assert failed["bastion.access-dir"]["fix"] == f"chmod go-w {etc}"


@dataclass
class Stack:
    """A real ``sshtun bastion`` process, an agent publishing homebox, a client config."""

    access: Path
    bastion_toml: Path
    client: Path
    log: list[str]


@contextlib.asynccontextmanager
async def stack(keys: Keys, tmp_path: Path) -> AsyncIterator[Stack]:
    access = tmp_path / "access"
    port = free_port()
    bfile = write_toml(tmp_path / "bastion.toml", "bastion", bastion_config(keys, access, port))
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        process(*SSHTUN, "bastion", "--config", str(bfile)) as proc,
    ):
        await read_until(proc.stderr, "listening on")
        log: list[str] = []

        async def collect() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                log.append(raw.decode(errors="replace"))

        collector = asyncio.create_task(collect())
        try:
            async with running_agent(
                agent_config(keys, port, [("homebox", 22, f"127.0.0.1:{home.port}")])
            ):
                yield Stack(access, bfile, write_ssh_config(tmp_path / "alice", keys, port), log)
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector


async def reload(s: Stack, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = await asyncio.to_thread(main, ["reload", "--config", str(s.bastion_toml)])
    out, err = capsys.readouterr()
    return code, out + err


async def test_a_bad_reload_keeps_the_running_policy_and_says_why(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "access").write_text(access_text(keys))
    async with stack(keys, tmp_path) as s:
        assert (await run_ssh(s.client, "homebox", "echo one")).stdout == b"one\n"
        # item 8: a from= pattern that would never match refuses the whole file
        s.access.write_text(access_with(keys, 'from="!127.0.0.01,*"'))
        code, said = await reload(s, capsys)
        assert code != 0
        assert f"{s.access}:2: from= pattern '!127.0.0.01' has a leading zero" in said
        await wait_for(lambda: any("reload refused" in line for line in s.log))
        assert (await run_ssh(s.client, "homebox", "echo two")).stdout == b"two\n"
        # item 9: a now world-writable file (valid content) is refused the same way
        s.access.write_text(access_text(keys, extra=[]))
        s.access.chmod(0o666)
        code, said = await reload(s, capsys)
        assert code != 0
        assert "is writable by group and others (mode 0666)" in said
        assert f"chmod 600 {s.access}" in said
        assert (await run_ssh(s.client, "homebox", "echo three")).stdout == b"three\n"
        # fixed: the reload goes through
        s.access.chmod(0o600)
        code, said = await reload(s, capsys)
        assert code == 0, said


async def start_fails(keys: Keys, tmp_path: Path, access: Path) -> str:
    """Run ``sshtun bastion`` on ``access``; it must exit 3 (a config error): its stderr."""
    bfile = write_toml(
        tmp_path / "bastion.toml", "bastion", bastion_config(keys, access, free_port())
    )
    async with process(*SSHTUN, "bastion", "--config", str(bfile)) as proc:
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            pytest.fail(f"the bastion started on {access} ({oct(access.stat().st_mode)})")
        assert proc.returncode == 3, err.decode()
        return err.decode()


async def test_an_unparseable_from_pattern_refuses_to_start(keys: Keys, tmp_path: Path) -> None:
    access = tmp_path / "access"
    access.write_text(access_with(keys, 'from="!127.0.0.01,*"'))
    err = await start_fails(keys, tmp_path, access)
    assert f"{access}:2: from= pattern '!127.0.0.01' has a leading zero" in err


# --- item 9: StrictModes ---------------------------------------------------------------------
def _file(mode: int, uid: int | None = None) -> object:
    def make(access: Path) -> str:
        access.chmod(mode)
        if uid is not None:
            os.chown(access, uid, -1)
        return f"file {access}"

    return make


def _dir(mode: int, uid: int | None = None) -> object:
    def make(access: Path) -> str:
        access.parent.chmod(mode)
        if uid is not None:
            os.chown(access.parent, uid, -1)
        return f"directory {access.parent}"

    return make


@pytest.mark.parametrize(
    ("make", "reason", "fix"),
    [
        (_file(0o666), "is writable by group and others (mode 0666)", "chmod 600"),
        (_file(0o620), "is writable by group (mode 0620)", "chmod 600"),
        (_file(0o600, STRANGER_UID), f"is owned by uid {STRANGER_UID}, not by root", "chown"),
        (_dir(0o777), "is writable by group and others (mode 0777)", "chmod go-w"),
        (_dir(0o770), "is writable by group (mode 0770)", "chmod go-w"),
        (_dir(0o755, STRANGER_UID), f"is owned by uid {STRANGER_UID}", "chown"),
    ],
)
async def test_an_access_file_others_can_change_refuses_to_start(
    keys: Keys, tmp_path: Path, make: object, reason: str, fix: str
) -> None:
    if os.geteuid() != 0 and "uid" in reason:
        pytest.skip("chown to another user needs root")
    access = tmp_path / "etc" / "access"
    access.parent.mkdir(mode=0o755)
    access.write_text(access_text(keys))
    assert callable(make)
    where = make(access)
    err = await start_fails(keys, tmp_path, access)
    assert f"refusing access file {access}: {where} {reason}" in err
    assert fix in err


async def test_a_sticky_world_writable_directory_is_accepted(keys: Keys, tmp_path: Path) -> None:
    """Like /tmp: nobody can rename or delete another's entry in it."""
    access = tmp_path / "shared" / "access"
    access.parent.mkdir()
    access.parent.chmod(0o1777)
    access.write_text(access_text(keys))
    async with running_bastion(bastion_config(keys, access)) as bastion:
        assert len(bastion.state.access.entries) == 2


async def test_a_symlinked_lock_is_refused_and_nothing_is_written_through_it(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    before = access.read_text()
    victim = tmp_path / "victim"
    (tmp_path / ".access.lock").symlink_to(victim)
    bfile = write_toml(
        tmp_path / "bastion.toml", "bastion", bastion_config(keys, access, free_port())
    )
    code = await asyncio.to_thread(
        main, ["keys", "revoke", keys.client.fingerprint, "--config", str(bfile)]
    )
    _, err = capsys.readouterr()
    assert code == 3, err
    assert "is a symbolic link; refusing to follow it" in err
    assert not victim.exists() and not victim.is_symlink()
    assert (tmp_path / ".access.lock").is_symlink()
    assert access.read_text() == before


async def test_revoke_as_root_keeps_the_owner_and_writes_0600(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bastion's own (e.g. systemd dynamic) user keeps its file after an admin edit."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    access.chmod(0o644)
    os.chown(access, STRANGER_UID, STRANGER_UID)
    bfile = write_toml(
        tmp_path / "bastion.toml", "bastion", bastion_config(keys, access, free_port())
    )
    code = await asyncio.to_thread(
        main, ["keys", "revoke", keys.client.fingerprint, "--config", str(bfile)]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    st = access.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (STRANGER_UID, STRANGER_UID, 0o600)
    assert keys.client.public_line not in access.read_text()


async def test_a_rotation_rewrites_the_access_file_0600(keys: Keys, tmp_path: Path) -> None:
    async with rotation_scene(keys, tmp_path) as s:
        s.access.chmod(0o644)
        async with s.agent():
            result = await s.rotate()
            assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(s.access.stat().st_mode) == 0o600


async def test_a_rotation_never_launders_a_world_writable_access_file(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rewrite must not turn a file anyone could have edited into a trusted 0600 one."""
    async with rotation_scene(keys, tmp_path) as s, s.agent():
        s.access.chmod(0o666)
        before = s.access.read_text()
        result = await s.rotate()
        assert result.returncode != 0
        assert "is writable by group and others (mode 0666)" in result.stderr
        assert s.access.read_text() == before
        assert stat.S_IMODE(s.access.stat().st_mode) == 0o666
        assert await s.logs_in(s.key)  # the old key keeps working
