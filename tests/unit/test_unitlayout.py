"""What `sshtun systemd install` refuses: layouts the sandboxed units cannot run (pure
checks), and the passphrase credential the agent unit gets only when the file exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from sshtunnel_mgr.core.config import parse_config
from sshtunnel_mgr.setup.init import render_unit, unit_template
from sshtunnel_mgr.setup.unitlayout import (
    agent_problems,
    bastion_problems,
    others_may_read,
    readable_problems,
)

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqjmB1yJ6O3b9dHq1hDkLkmPzIY1N2nB0gqN1Lr8v6N"


def bastion(host_key: str, access: str, audit: str | None = None) -> str:
    text = f'[bastion]\nhost_key = "{host_key}"\naccess_file = "{access}"\n'
    return text + (f'audit_log = "{audit}"\n' if audit else "")


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        (bastion("/var/lib/sshtun/host_key", "/var/lib/sshtun/access"), []),
        (
            bastion(
                "/var/lib/sshtun/host_key", "/var/lib/sshtun/access", "/var/log/sshtun/audit.log"
            ),
            [],
        ),
        (bastion("/etc/sshtun/host_key", "/etc/sshtun/access"), ["host_key", "access_file"]),
        (bastion("/var/lib/sshtun/host_key", "/var/lib/sshtun/sub/access"), ["access_file"]),
        (
            bastion("/var/lib/sshtun/host_key", "/var/lib/sshtun/access", "/srv/audit.log"),
            ["audit_log"],
        ),
    ],
)
def test_bastion_files_must_be_in_the_units_directories(text: str, fields: list[str]) -> None:
    cfg = parse_config(text, "bastion.toml", Path("/etc/sshtun")).require_bastion()
    found = bastion_problems(cfg)
    assert len(found) == len(fields)
    for problem, field in zip(found, fields, strict=True):
        assert problem.startswith(f"{field} = ")


def agent(key: str) -> str:
    return (
        f'[agent]\nkey = "{key}"\n'
        f'[[agent.bastions]]\naddress = "bastion:2222"\nhost_key = "{HOST_KEY}"\n'
        '[[agent.tunnels]]\nname = "homebox"\n'
    )


def test_agent_key_must_be_the_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    good = parse_config(agent("$CREDENTIALS_DIRECTORY/agent_key"), "a", Path("/etc/sshtun"))
    assert agent_problems(good.require_agent(), Path("/etc/sshtun/agent_key"), True) == []
    missing = agent_problems(good.require_agent(), Path("/etc/sshtun/agent_key"), False)
    assert len(missing) == 1 and "does not exist" in missing[0]
    plain = parse_config(agent("agent_key"), "a", Path("/etc/sshtun")).require_agent()
    assert "$CREDENTIALS_DIRECTORY/agent_key" in agent_problems(plain, Path("/x"), True)[0]


def test_others_may_read_a_file_and_search_a_directory() -> None:
    assert others_may_read(0o644, is_dir=False) and not others_may_read(0o640, is_dir=False)
    assert others_may_read(0o711, is_dir=True) and not others_may_read(0o750, is_dir=True)


def test_an_unreadable_config_directory_is_named_with_the_fix(tmp_path: Path) -> None:
    etc = tmp_path / "sshtun"
    etc.mkdir(mode=0o700)
    cfg = etc / "bastion.toml"
    cfg.write_text("")
    cfg.chmod(0o644)
    found = readable_problems(cfg)
    assert (
        f"{etc} (mode 0700) cannot be read by the unit's dynamic user; it holds no "
        f"secrets: chmod o+x {etc}"
    ) in found
    assert not any(p.startswith(f"{cfg} ") for p in found)
    cfg.chmod(0o600)
    assert f"{cfg} (mode 0600)" in readable_problems(cfg)[0]


def test_passphrase_credential_only_when_the_file_exists(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    unit = render_unit(unit_template("agent"), "agent", "/opt/sshtun/bin/sshtun", cfg)
    assert f"LoadCredential=agent_key:{tmp_path / 'agent_key'}\n" in unit
    assert "agent_key.passphrase" not in unit.replace("(agent_key.passphrase beside it)", "")
    (tmp_path / "agent_key.passphrase").write_text("secret")
    unit = render_unit(unit_template("agent"), "agent", "/opt/sshtun/bin/sshtun", cfg)
    line = f"LoadCredential=agent_key.passphrase:{tmp_path / 'agent_key.passphrase'}\n"
    assert line in unit
