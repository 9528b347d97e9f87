"""The agent's real unit under a real systemd (a ``systemd --user`` manager in a private
mount namespace, since systemd is not PID 1 here): READY only after a name is registered,
restart after a kill, clean stop.

Under a user manager the sandboxing directives and LoadCredential cannot apply (they need
the system manager), so this runs the unit's lifecycle keys only — Type=notify, ExecStart,
Restart, RestartSec, WatchdogSec, TimeoutStopSec, RuntimeDirectory — with
CREDENTIALS_DIRECTORY pointing at the key as LoadCredential would. The sandboxing is
checked offline (systemd-analyze security) in test_setup.py, and for real, with the
unedited units under a systemd system manager, in test_systemd_system.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tomli_w

from sshtunnel_mgr.setup.init import render_unit, unit_template
from tests.harness import (
    Keys,
    access_text,
    agent_config,
    bastion_config,
    free_port,
    running_bastion,
    wait_for,
)

LIFECYCLE_KEYS = (
    "Type=",
    "NotifyAccess=",
    "ExecStart=",
    "ExecReload=",
    "Restart=",
    "RestartSec=",
    "RestartPreventExitStatus=",
    "TimeoutStopSec=",
    "WatchdogSec=",
    "RuntimeDirectory=",
    "RuntimeDirectoryMode=",
    "UMask=",
    "Description=",
    "[",
)
SYSTEMD = "/usr/lib/systemd/systemd"


def lifecycle_unit(config: Path, creds: Path, errlog: Path) -> str:
    sshtun = shutil.which("sshtun")
    assert sshtun is not None
    full = render_unit(unit_template("agent"), "agent", sshtun, config)
    assert "LoadCredential=agent_key:" in full
    kept = [line for line in full.splitlines() if line.startswith(LIFECYCLE_KEYS)]
    extra = [f"Environment=CREDENTIALS_DIRECTORY={creds}", f"StandardError=append:{errlog}"]
    out = []
    for line in kept:
        out.append(line)
        if line == "[Service]":
            out += extra
    return "\n".join(out) + "\n"


def cgroup_root() -> Path | None:
    for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (root / "cgroup.procs").exists() and os.access(root, os.W_OK):
            return root
    return None


@contextlib.asynccontextmanager
async def user_manager(work: Path) -> AsyncIterator[tuple[int, dict[str, str]]]:
    """A systemd --user manager in its own mount namespace; yields (pid, env)."""
    root = cgroup_root()
    if (
        os.geteuid() != 0
        or not Path(SYSTEMD).exists()
        or not shutil.which("unshare")
        or root is None
    ):
        pytest.skip("needs root, systemd, unshare and a writable cgroup2 hierarchy")
    cgroup = root / f"sshtun-test-{os.getpid()}-{work.name}"
    xdg = work / "xdg"
    xdg.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(xdg), "SYSTEMD_UNIT_PATH": f"{work / 'units'}:"}
    script = (
        f"set -e; mount -t tmpfs tmpfs /run/systemd; mkdir -p /run/systemd/system; "
        f"mkdir -p {cgroup}; echo $$ > {cgroup}/cgroup.procs; exec {SYSTEMD} --user"
    )
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: (xdg / "systemd" / "private").exists(), timeout=20)
        yield proc.pid, env
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        remove_cgroup(cgroup)


def remove_cgroup(cgroup: Path) -> None:
    """Kill what is left in the test's cgroup tree (only ours) and remove it bottom-up."""
    if not cgroup.exists():
        return
    tree = sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for group in [*tree, cgroup]:
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
    for group in [*tree, cgroup]:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def systemctl(pid: int, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "systemctl", "--user", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout


def show(pid: int, env: dict[str, str]) -> dict[str, str]:
    text = systemctl(
        pid,
        env,
        "show",
        "-p",
        "ActiveState",
        "-p",
        "SubState",
        "-p",
        "MainPID",
        "-p",
        "NRestarts",
        "-p",
        "StatusText",
        "sshtun-agent.service",
    )
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def install_agent_unit(keys: Keys, tmp_path: Path, port: int) -> Path:
    """The agent's real unit (lifecycle keys) and config under tmp_path; its log file."""
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    shutil.copy(keys.agent.path, creds / "agent_key")
    cfg = agent_config(
        keys,
        port,
        [("homebox", 22, "127.0.0.1:9")],
        key=Path("$CREDENTIALS_DIRECTORY/agent_key"),
        backoff={"base": 0.2, "cap": 0.5},
    )
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["key"] = "$CREDENTIALS_DIRECTORY/agent_key"
    config = tmp_path / "agent.toml"
    config.write_text(tomli_w.dumps({"agent": data}))
    (tmp_path / "units").mkdir()
    errlog = tmp_path / "agent.log"
    (tmp_path / "units" / "sshtun-agent.service").write_text(lifecycle_unit(config, creds, errlog))
    return errlog


async def test_agent_unit_ready_after_registration_and_restarted_after_kill(
    keys: Keys, tmp_path: Path
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    port = free_port()
    errlog = install_agent_unit(keys, tmp_path, port)

    async with user_manager(tmp_path) as (pid, env):
        systemctl(pid, env, "start", "--no-block", "sshtun-agent.service")
        # No bastion yet: the agent runs and retries, but is not READY.
        await wait_for(
            lambda: errlog.exists() and errlog.read_text().count("link down") >= 2, timeout=30
        )
        assert show(pid, env)["ActiveState"] == "activating"
        async with running_bastion(bastion_config(keys, access, port)) as bastion:
            await wait_for(lambda: show(pid, env)["ActiveState"] == "active", timeout=30)
            state = show(pid, env)
            assert "up homebox:22" in state["StatusText"]
            assert bastion.state.routes.lookup("homebox", 22)
            first_pid = int(state["MainPID"])
            os.kill(first_pid, signal.SIGKILL)
            await wait_for(
                lambda: (
                    show(pid, env)["NRestarts"] == "1" and show(pid, env)["ActiveState"] == "active"
                ),
                timeout=30,
            )
            assert int(show(pid, env)["MainPID"]) != first_pid
            await wait_for(lambda: bastion.state.routes.lookup("homebox", 22), timeout=30)
            systemctl(pid, env, "stop", "sshtun-agent.service")
            assert show(pid, env)["ActiveState"] in ("inactive", "deactivating")
            await wait_for(lambda: not bastion.state.routes.lookup("homebox", 22))


async def test_a_refused_key_stops_the_unit_instead_of_restarting_it(
    keys: Keys, tmp_path: Path
) -> None:
    """Exit 5 (the bastion refuses the agent's key) is fatal: systemd does not restart it
    every 2 s (each retry would be a failed login against the whole address), and
    `systemctl status` says why."""
    access = tmp_path / "access"
    access.write_text(f'permitopen="homebox:22" {keys.client.public_line}\n')  # no agent key
    port = free_port()
    errlog = install_agent_unit(keys, tmp_path, port)
    async with (
        running_bastion(bastion_config(keys, access, port)),
        user_manager(tmp_path) as (pid, env),
    ):
        systemctl(pid, env, "start", "--no-block", "sshtun-agent.service")
        await wait_for(lambda: show(pid, env)["ActiveState"] == "failed", timeout=60)
        state = show(pid, env)
        assert state["NRestarts"] == "0"
        assert "exit 5" in state["StatusText"] and "refused" in state["StatusText"]
        assert "sshtun: error:" in errlog.read_text()
