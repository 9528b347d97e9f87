"""``sshtun doctor`` in-process through ``main(argv)``: --json, the text report, exit codes
(bastion role: no sshd needed)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshtunnel_mgr.cli.main import main
from sshtunnel_mgr.core.errors import EXIT_CHECKS_FAILED, EXIT_CONFIG, EXIT_OK, EXIT_USAGE
from sshtunnel_mgr.keys import rotation
from sshtunnel_mgr.keys.store import generate_key
from tests.clisamples import systemd_agent


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def bastion(tmp_path: Path, access_options: str) -> Path:
    generate_key(tmp_path / "host_key")
    agent = generate_key(tmp_path / "agent_key").public_line
    access = tmp_path / "access"
    access.write_text(f"{access_options} {agent}\n")
    access.chmod(0o600)
    cfg = tmp_path / "bastion.toml"
    cfg.write_text('[bastion]\nhost_key = "host_key"\naccess_file = "access"\n')
    cfg.chmod(0o644)
    return cfg


def test_json_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = bastion(tmp_path, 'permitlisten="homebox:22"')
    assert main(["doctor", "--config", str(cfg), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["roles"] == ["bastion"]
    assert report["summary"] == {"ok": len(report["findings"]), "warn": 0, "fail": 0}
    row = report["findings"][0]
    assert set(row) == {"section", "level", "check", "message", "fix"}


def test_warnings_alone_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = bastion(tmp_path, 'permitlisten="homebox:22",expiry-time="20200101Z"')
    assert main(["doctor", "--config", str(cfg)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "WARN  bastion.access-expired" in out
    assert out.strip().splitlines()[-1].startswith("doctor passed: ")


def test_a_failure_exits_7(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = bastion(tmp_path, 'permitlisten="*:*"')
    (tmp_path / "access").chmod(0o666)
    assert main(["doctor", "--config", str(cfg), "--json"]) == EXIT_CHECKS_FAILED == 7
    report = json.loads(capsys.readouterr().out)
    failed = {f["check"] for f in report["findings"] if f["level"] == "fail"}
    assert failed == {"bastion.access-file-mode", "bastion.access-broad"}


def test_usage_and_config_errors_keep_their_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--role", "bastion"]) == EXIT_USAGE
    assert "need its config" in capsys.readouterr().err
    cfg = bastion(tmp_path, 'permitlisten="homebox:22"')
    assert main(["doctor", "--config", str(cfg), "--role", "agent"]) == EXIT_CONFIG
    assert main(["doctor", "--role", "both"]) == EXIT_USAGE


@pytest.mark.parametrize("inside", [False, True], ids=["outside-the-unit", "inside-the-unit"])
def test_a_systemd_credential_key_is_checked_at_its_source(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    inside: bool,
) -> None:
    """key = "$CREDENTIALS_DIRECTORY/agent_key": the variable is unset outside the unit and
    the copy read-only inside it, so `sshtun keys rotate --key SOURCE` rotates (and records
    beside) the LoadCredential= source, and doctor must look there too."""
    creds = tmp_path / "credentials"
    if inside:
        creds.mkdir()
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    else:
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg, source = systemd_agent(tmp_path, rotating=True)
    main(["doctor", "--config", str(cfg), "--role", "agent", "--json"])
    report = json.loads(capsys.readouterr().out)
    found = {f["check"]: f for f in report["findings"] if f["check"].startswith("agent.key")}
    assert {c: f["level"] for c, f in found.items()} == {
        "agent.key-mode": "ok",
        "agent.key-strength": "ok",
        "agent.key-age": "ok",
        "agent.key-rotation": "warn",
    }
    assert "half-finished" in found["agent.key-rotation"]["message"]
    assert f"--key {source}" in found["agent.key-rotation"]["fix"]

    rotation.clear_state(source)
    main(["doctor", "--config", str(cfg), "--role", "agent", "--json"])
    report = json.loads(capsys.readouterr().out)
    [done] = [f for f in report["findings"] if f["check"] == "agent.key-rotation"]
    assert done["level"] == "ok" and str(source) in done["message"]
