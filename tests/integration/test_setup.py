"""`sshtun init` for both roles, then the written configs run for real; the systemd units
verified offline (systemd-analyze verify, security score) and `sshtun systemd install`."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sshtunnel_mgr.cli.main import main
from sshtunnel_mgr.setup.init import UNIT_BINARY, UNIT_NAMES, render_unit, unit_template
from tests.harness import (
    SSHTUN,
    free_port,
    process,
    read_until,
)

REPO = Path(__file__).resolve().parents[2]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_init_both_roles_and_run_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    bdir, adir = tmp_path / "bastion", tmp_path / "agent"
    code, out, err = cli(
        capsys, "init", "--role", "bastion", "--dir", str(bdir), "--listen", f"127.0.0.1:{port}"
    )
    assert code == 0, err
    host_key_line = out.split("Agents and clients pin this host key:\n")[1].splitlines()[0]
    assert host_key_line.startswith("ssh-ed25519 ")
    assert stat.S_IMODE((bdir / "host_key").stat().st_mode) == 0o600

    code, out, err = cli(
        capsys,
        "init",
        "--role",
        "agent",
        "--dir",
        str(adir),
        "--bastion",
        f"127.0.0.1:{port}",
        "--bastion-key",
        host_key_line,
        "--tunnel",
        "homebox=127.0.0.1:9",
        "--tunnel",
        "web:8080=127.0.0.1:9",
    )
    assert code == 0, err
    access_line = out.split("access file, then reload it:\n")[1].splitlines()[0]
    assert access_line.startswith('permitlisten="homebox:22,web:8080" ssh-ed25519 ')
    assert stat.S_IMODE((adir / "agent_key").stat().st_mode) == 0o600
    with (bdir / "access").open("a") as handle:
        handle.write(access_line + "\n")

    # Running init again keeps what exists (keys are never overwritten).
    before = (adir / "agent_key").read_bytes()
    code, out, _ = cli(
        capsys,
        "init",
        "--role",
        "agent",
        "--dir",
        str(adir),
        "--bastion",
        f"127.0.0.1:{port}",
        "--bastion-key",
        host_key_line,
        "--tunnel",
        "homebox=127.0.0.1:9",
    )
    assert code == 0 and f"kept existing {adir / 'agent_key'}" in out
    assert (adir / "agent_key").read_bytes() == before

    async with process(*SSHTUN, "bastion", "--config", str(bdir / "bastion.toml")) as bastion:
        await read_until(bastion.stderr, "listening on")
        async with process(*SSHTUN, "up", "--config", str(adir / "agent.toml")) as agent:
            lines = await read_until(agent.stderr, "name=web:8080")
            assert any("published" in line and "name=homebox:22" in line for line in lines)


def test_init_agent_without_answers_and_no_terminal_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "init", "--role", "agent", "--dir", str(tmp_path))
    assert code == 2  # a usage error, as for every command
    assert "--bastion is required (no terminal to ask on)" in err


def test_init_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        capsys, "init", "--role", "bastion", "--dir", str(tmp_path / "b"), "--dry-run"
    )
    assert code == 0
    assert f"would generate key {tmp_path / 'b' / 'host_key'} mode 0600" in out
    assert not (tmp_path / "b").exists()


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not installed")
    return path


@pytest.mark.parametrize("role", ["agent", "bastion"])
def test_units_in_the_repo_are_the_packaged_ones(role: str) -> None:
    assert (REPO / "systemd" / UNIT_NAMES[role]).read_text() == unit_template(role)


@pytest.mark.parametrize("role", ["agent", "bastion"])
def test_unit_verifies_without_warnings(role: str, tmp_path: Path) -> None:
    tool = analyze()
    sshtun = shutil.which("sshtun") or "/bin/true"
    unit = tmp_path / UNIT_NAMES[role]
    unit.write_text(render_unit(unit_template(role), role, sshtun, tmp_path / f"{role}.toml"))
    result = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # a misspelled key is only a warning


@pytest.mark.parametrize("role", ["agent", "bastion"])
def test_unit_security_exposure_at_most_2(role: str, tmp_path: Path) -> None:
    tool = analyze()
    unit = tmp_path / UNIT_NAMES[role]
    unit.write_text(unit_template(role))
    result = subprocess.run(
        [tool, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_units_are_type_notify_and_never_get_secrets_on_the_command_line() -> None:
    for role in ("agent", "bastion"):
        text = unit_template(role)
        assert "Type=notify" in text and "Restart=always" in text and "WatchdogSec=" in text
        exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert exec_line.startswith(f"ExecStart={UNIT_BINARY} ")
        assert "key" not in exec_line.split("--config")[0]
    agent = unit_template("agent")
    assert "LoadCredential=agent_key:/etc/sshtun/agent_key" in agent
    assert "AmbientCapabilities" not in agent
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit_template("bastion")


def test_systemd_install_writes_the_unit_with_this_installation_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "etc" / "bastion.toml"
    code, out, err = cli(
        capsys,
        "systemd",
        "install",
        "--role",
        "bastion",
        "--config",
        str(cfg),
        "--unit-dir",
        str(tmp_path / "units"),
    )
    assert code == 0, err
    unit = (tmp_path / "units" / "sshtun-bastion.service").read_text()
    sshtun = shutil.which("sshtun")
    assert f"ExecStart={sshtun} bastion --config {cfg}" in unit
    assert "systemctl enable --now sshtun-bastion.service" in out
    code, out, _ = cli(
        capsys,
        "systemd",
        "install",
        "--role",
        "agent",
        "--dry-run",
        "--unit-dir",
        str(tmp_path / "dry"),
    )
    assert code == 0 and "would write" in out and not (tmp_path / "dry").exists()


def test_agent_unit_follows_the_config_and_keeps_the_directory_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "srv" / "sshtun"
    etc.mkdir(parents=True, mode=0o700)
    cfg = etc / "agent.toml"
    units = tmp_path / "units"
    code, out, err = cli(
        capsys,
        "systemd",
        "install",
        "--role",
        "agent",
        "--config",
        str(cfg),
        "--unit-dir",
        str(units),
    )
    assert code == 0, err
    unit = (units / "sshtun-agent.service").read_text()
    assert f"LoadCredential=agent_key:{etc / 'agent_key'}\n" in unit
    assert "/etc/sshtun" not in unit
    assert f"keep it at {etc / 'agent_key'}" in out
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700  # was loosened to 0755


async def test_init_systemd_says_how_to_start_the_unit_and_up_by_hand_explains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "etc"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqjmB1yJ6O3b9dHq1hDkLkmPzIY1N2nB0gqN1Lr8v6N"
    code, out, err = cli(
        capsys,
        "init",
        "--role",
        "agent",
        "--dir",
        str(directory),
        "--systemd",
        "--bastion",
        "127.0.0.1:9",
        "--bastion-key",
        key,
        "--tunnel",
        "homebox=127.0.0.1:22",
    )
    assert code == 0, err
    config = directory.absolute() / "agent.toml"
    assert f"sshtun systemd install --role agent --config {config}" in out
    assert "Then run: sshtun up" not in out  # that command cannot read a credential
    # an acme tunnel added later keeps its certificates in the unit's StateDirectory
    assert 'state_dir = "/var/lib/sshtun-agent"' in config.read_text()
    assert "CREDENTIALS_DIRECTORY" not in os.environ
    async with process(*SSHTUN, "up", "--config", str(config)) as proc:
        code = await proc.wait()
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
    assert code == 6
    assert "$CREDENTIALS_DIRECTORY is not set" in err
    assert "systemctl start sshtun-agent.service" in err
    assert "sshtun keys gen $CREDENTIALS_DIRECTORY" not in err
