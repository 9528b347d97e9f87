"""One table of exit codes (``errors.EXIT_STATUSES``): every error class's code is in it,
README's "Exit codes" section is generated from it, the systemd units stop restarting on
exactly its final codes, and a usage error exits 2 whatever the command."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from sshtunnel_mgr.cli.main import app, main
from sshtunnel_mgr.core import errors
from sshtunnel_mgr.core.errors import EXIT_STATUSES, EXIT_USAGE, SshtunError
from tests.clisamples import (
    AGENT_TOML,
    BASTION_TOML,
    restore_logging,  # noqa: F401 (an autouse fixture)
)

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "sshtunnel_mgr" / "units").glob("*.service"))


# --- the table ---------------------------------------------------------------------------


def _subclasses(cls: type[SshtunError]) -> Iterator[type[SshtunError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_codes_are_unique_and_every_constant_and_error_class_is_in_the_table() -> None:
    codes = [s.code for s in EXIT_STATUSES]
    assert len(set(codes)) == len(codes)
    assert len({s.name for s in EXIT_STATUSES}) == len(codes)
    constants = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert constants == set(codes)
    classes = {SshtunError, *_subclasses(SshtunError)}
    assert {c.__name__ for c in classes} >= {"ConfigError", "UsageError", "KeyFileError"}
    for cls in classes:
        assert cls.exit_code in codes, cls


def readme_table() -> str:
    """The README "Exit codes" table, as EXIT_STATUSES renders it."""
    rows = ["| code | meaning | example |", "|---|---|---|"]
    rows += [f"| {s.code} {s.name} | {s.meaning} | {s.example} |" for s in EXIT_STATUSES]
    return "\n".join(rows)


def test_readme_table_is_the_one_in_the_errors_module() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Exit codes\n(.*?)(?=^## )", readme, re.M | re.S)
    assert match, "README has no '## Exit codes' section"
    found = "\n".join(line for line in match.group(1).splitlines() if line.startswith("|"))
    assert found == readme_table(), f"README's table should read:\n{readme_table()}"


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_units_stop_restarting_on_exactly_the_final_codes(unit: Path) -> None:
    lines = [ln for ln in unit.read_text().splitlines() if ln.startswith("RestartPreventExit")]
    assert len(lines) == 1
    listed = {int(code) for code in lines[0].split("=", 1)[1].split()}
    assert listed == {s.code for s in EXIT_STATUSES if s.final}


def test_help_ends_with_the_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 ok, 1 error, 2 usage, 3 config," in out
    for s in EXIT_STATUSES:
        assert f"{s.code} {s.name}" in out


# --- usage errors: 2 from every command --------------------------------------------------


def _commands(group: typer.core.TyperGroup, prefix: list[str]) -> Iterator[tuple[list[str], bool]]:
    """Every command and group under ``group``: (its words, whether it is a leaf)."""
    for name, command in sorted(group.commands.items()):
        leaf = not isinstance(command, typer.core.TyperGroup)
        yield [*prefix, name], leaf
        if not leaf:
            assert isinstance(command, typer.core.TyperGroup)
            yield from _commands(command, [*prefix, name])


_ROOT = typer.main.get_command(app)
assert isinstance(_ROOT, typer.core.TyperGroup)
COMMANDS = [words for words, _ in _commands(_ROOT, [])]
LEAVES = [words for words, leaf in _commands(_ROOT, []) if leaf]
# Commands that take no value at all: an unknown option is the usage error they can have.
FLAGS_ONLY = [["demo"], ["example-config"]]

# What each usage error looks like on each command that takes the option (besides an
# unknown option, which every command is driven with). {agent} and {bastion} are configs.
CASES = [
    ["--log-format", "xml", "example-config"],
    ["-v", "nosuch"],
    ["up"],
    ["bastion", "-c"],
    ["status", "-c", "{agent}", "--role", "foo"],
    ["reload", "-c", "{agent}", "--role", "foo"],
    ["doctor", "--role", "foo"],
    ["doctor", "--role", "bastion"],
    ["doctor", "--sshd-config", "{missing}"],
    ["init", "--role", "foo"],
    ["init", "--role", "agent", "--dir", "{tmp}/new", "--bastion", "b.example.com"],
    ["systemd", "install", "--role", "foo"],
    ["systemd", "install"],
    ["keys", "gen"],
    ["keys", "gen", "{tmp}/k", "--type", "dsa"],
    ["keys", "gen", "{tmp}/k", "--type", "rsa", "--bits", "2048"],
    ["keys", "gen", "{tmp}/k", "--bits", "many"],
    ["keys", "passphrase", "{missing}", "--stdin"],
    ["keys", "list"],
    ["keys", "list", "--dir", "{missing}"],
    ["keys", "show", "{missing}"],
    ["keys", "show", "SHA256:AAAA"],
    ["keys", "revoke", "SHA256:AAAA"],
    ["keys", "rotate", "-c", "{agent}", "--stop-after", "foo"],
    ["keys", "rotate", "-c", "{agent}", "--key", "{missing}"],
    ["keys", "rotate", "-c", "{agent}", "--drain", "soon"],
    ["ssh-config", "-c", "{bastion}"],
    ["ssh-config", "-c", "{bastion}", "--address", "host:port"],
    ["ssh-config", "homebox"],
]


def _run(argv: list[str], tmp_path: Path) -> tuple[int, str]:
    (tmp_path / "agent.toml").write_text(AGENT_TOML)
    (tmp_path / "bastion.toml").write_text(BASTION_TOML)
    before = sorted(tmp_path.rglob("*"))
    where = {
        "agent": tmp_path / "agent.toml",
        "bastion": tmp_path / "bastion.toml",
        "missing": tmp_path / "missing",
        "tmp": tmp_path,
    }
    code = main([a.format(**where) for a in argv])
    assert sorted(tmp_path.rglob("*")) == before, "a usage error changed nothing"
    return code, argv[0]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_an_unknown_option_exits_2_on_every_command(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _run([*command, "--no-such-option"], tmp_path)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "No such option: --no-such-option" in err


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(c) for c in CASES])
def test_a_usage_error_exits_2_whatever_the_command(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _ = _run(argv, tmp_path)
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE, out + err
    assert out == "" or out.startswith("Usage:"), out
    assert err.startswith(("Usage:", "Error: ", "sshtun: error: ")), err


def test_the_cases_cover_every_command() -> None:
    """A new command gets its usage errors here (and its unknown option above for free)."""
    driven = [leaf for leaf in LEAVES if any(c[: len(leaf)] == leaf for c in CASES)]
    assert sorted(driven + FLAGS_ONLY) == sorted(LEAVES)
