"""The ``sshtun`` command line: ``main(argv)`` returns the exit code; errors go to stderr."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sshtunnel_mgr import __version__
from sshtunnel_mgr.cli.main import main
from sshtunnel_mgr.core.errors import EXIT_CONFIG, EXIT_KEYS, EXIT_OK, EXIT_USAGE
from tests.clisamples import (
    AGENT_TOML,
    BASTION_TOML,
    restore_logging,  # noqa: F401 (an autouse fixture)
)

UNKNOWN = "unknown key (not one sshtun knows; check the spelling)"

SSH_KEYGEN = shutil.which("ssh-keygen") or (
    "/usr/bin/ssh-keygen" if os.path.exists("/usr/bin/ssh-keygen") else None
)
REQUIRE_OPENSSH = os.environ.get("SSHTUN_REQUIRE_OPENSSH") == "1"


def _ssh_keygen() -> str:
    if SSH_KEYGEN is None:
        if REQUIRE_OPENSSH:
            pytest.fail("ssh-keygen not installed but SSHTUN_REQUIRE_OPENSSH=1")
        pytest.skip("ssh-keygen not installed")
    return SSH_KEYGEN


def _keygen(*args: str) -> str:
    return subprocess.run([_ssh_keygen(), *args], check=True, capture_output=True, text=True).stdout


# --- --version -------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out == f"sshtun {__version__}\n"
    assert err == ""


@pytest.mark.parametrize("argv", [["--help"], ["keys", "--help"], ["up", "--help"]])
def test_help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == EXIT_OK
    assert "Usage" in capsys.readouterr().out


# --- keys gen --------------------------------------------------------------------------------


def test_keys_gen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent_key"
    assert main(["keys", "gen", str(path)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0] == f"wrote {path} (private, 0600) and {path}.pub"
    assert lines[1].startswith("fingerprint: SHA256:")
    pub = (tmp_path / "agent_key.pub").read_text()
    assert lines[2] == pub.strip()
    kind, b64, comment = pub.split()
    assert kind == "ssh-ed25519"
    assert comment == "agent_key"  # the comment defaults to the file name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "agent_key.pub").stat().st_mode) == 0o644
    assert path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["agent_key", "agent_key.pub"]

    # the fingerprint is the one ssh-keygen prints, and ssh-keygen reads the private key
    printed = lines[1].removeprefix("fingerprint: ")
    listed = _keygen("-lf", str(tmp_path / "agent_key.pub")).split()
    assert listed[0] == "256"
    assert listed[1] == printed
    assert listed[-1] == "(ED25519)"
    derived = _keygen("-y", "-f", str(path)).split()
    assert derived[:2] == [kind, b64]
    assert _keygen("-lf", str(path)).split()[1] == printed


def test_keys_gen_comment_and_new_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new" / "dir" / "id"
    assert main(["keys", "gen", str(path), "--comment", "agent@home"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.splitlines()[2].endswith(" agent@home")
    assert (tmp_path / "new" / "dir" / "id.pub").read_text().split()[2] == "agent@home"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("existing", ["agent_key", "agent_key.pub"])
def test_keys_gen_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str
) -> None:
    path = tmp_path / "agent_key"
    (tmp_path / existing).write_text("precious\n")
    assert main(["keys", "gen", str(path)]) == EXIT_KEYS
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"sshtun: error: {path} already exists\n  hint: choose another path or remove it first\n"
    )
    assert (tmp_path / existing).read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir()] == [existing]


def test_keys_gen_force_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent_key"
    assert main(["keys", "gen", str(path)]) == EXIT_OK
    first = (tmp_path / "agent_key.pub").read_text()
    assert main(["keys", "gen", str(path)]) == EXIT_KEYS
    assert (tmp_path / "agent_key.pub").read_text() == first
    assert main(["keys", "gen", str(path), "--force"]) == EXIT_OK
    second = (tmp_path / "agent_key.pub").read_text()
    assert second != first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent_key", "agent_key.pub"]
    capsys.readouterr()


# --- config errors: exit 3 with the file and the field path ----------------------------------


@pytest.mark.parametrize("command", ["bastion", "up"])
def test_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    path = tmp_path / "missing.toml"
    assert main([command, "--config", str(path)]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"sshtun: error: config file {path} does not exist\n"
        "  hint: start from config.example.toml\n"
    )


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        (
            "up",
            AGENT_TOML + "port = 70000\n",
            "agent.tunnels[0].port: Input should be less than or equal to 65535",
        ),
        (
            "up",
            AGENT_TOML.replace('"homebox"', '"127.0.0.1"'),
            "agent.tunnels[0].name: '127.0.0.1' is an IP address, not a name",
        ),
        (
            "bastion",
            BASTION_TOML + "colour = 1\n",
            f"bastion.colour: {UNKNOWN}",
        ),
        (
            "bastion",
            BASTION_TOML.replace('"127.0.0.1:0"', '"bastion.example.com:22"'),
            "bastion.listen: listen address 'bastion.example.com:22' must be an IP address "
            "and port",
        ),
    ],
)
def test_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, text: str, message: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert main([command, "-c", str(path)]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert re.sub(rf"^sshtun: error: {re.escape(str(path))}:\d+: ", "", err) == (
        f"{message}\n  hint: `sshtun example-config` prints every key, documented\n"
    ) or (UNKNOWN in message and f"{message}; valid keys here: " in err)


def test_invalid_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[agent\n")
    assert main(["up", "--config", str(path)]) == EXIT_CONFIG
    assert capsys.readouterr().err == (
        f"sshtun: error: {path}: invalid TOML: "
        "Expected ']' at the end of a table declaration (at line 1, column 7)\n"
    )


@pytest.mark.parametrize(
    ("command", "text", "section"),
    [("up", BASTION_TOML, "agent"), ("bastion", AGENT_TOML, "bastion")],
)
def test_config_without_the_role_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, text: str, section: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert main([command, "--config", str(path)]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"sshtun: error: {path}: no [{section}] section\n"
        f"  hint: see config.example.toml for the [{section}] keys\n"
    )


# --- usage errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["up"], ["bastion"], ["keys", "gen"], ["nosuch"], ["--bogus"], ["keys", "gen", "k", "-x"]],
)
def test_usage_errors_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert "Usage" in out + err
    assert list(tmp_path.iterdir()) == []


def test_no_arguments_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([])
    out, err = capsys.readouterr()
    assert code in (EXIT_OK, EXIT_USAGE)
    assert "Usage" in out + err


# --- demo ------------------------------------------------------------------------------------


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "hello from homebox" in out
    assert "refused" in out
    assert "'127.0.0.1' is an IP address, not a name" in out
    # The web path: the page through the bastion's HTTPS listener, TLS ended at home.
    assert "HTTP 200, 'Hello from the home box'; the app saw the client as 127.0.0.1" in out
    assert "other.demo.test/ (not public, not published): TLS alert TLSV1_UNRECOGNIZED_NAME" in out
    assert "curl --cacert " in out and "--resolve cloud.demo.test:" in out
    assert out.rstrip().endswith("demo ok: the tunnel works.")


def test_example_config_prints_the_shipped_documented_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["example-config"]) == 0
    out = capsys.readouterr().out
    assert out == (Path(__file__).resolve().parents[1] / "config.example.toml").read_text()
    assert "[bastion.limits]" in out and "[[agent.tunnels]]" in out


def test_help_keeps_bracketed_words_and_offers_completion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "the [bastion] section" in out  # rich markup used to eat "[bastion]"
    assert "<bool>" not in out  # flags are flags, not "<bool>" arguments
    assert "--install-completion" in out
