"""``sshtun --version`` and ``--help`` start fast: they import typer and the command modules,
never the SSH stack, the config models or the keyring (each command imports what it needs
when it runs). Checked in a fresh interpreter by reading ``sys.modules``, never by timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Heavy imports a help or version run must not pay for (asyncssh pulls cryptography).
HEAVY = ("asyncssh", "cryptography", "pydantic", "keyring", "bcrypt", "tomli_w")
HEAVY += ("acme", "josepy", "requests")  # tls = "acme" imports them when it orders
# Our own modules that import them, or start the services.
HEAVY_OURS = ("sshtunnel_mgr.core.config", "sshtunnel_mgr.agent", "sshtunnel_mgr.bastion")

COMMANDS = ("bastion", "up", "reload", "demo", "status", "ssh-config", "init", "example-config")
COMMANDS += ("doctor",)
# Every group's help and every command's help, in one interpreter; after each run the
# script records which heavy modules have been imported so far.
RUNS = [
    ["--version"],
    ["--help"],
    ["keys", "--help"],
    ["systemd", "--help"],
    *[[cmd, "--help"] for cmd in COMMANDS],
    *[["keys", cmd, "--help"] for cmd in ("gen", "passphrase", "list", "show", "revoke", "rotate")],
    ["systemd", "install", "--help"],
]

SCRIPT = """
import contextlib, io, json, sys
from sshtunnel_mgr.cli.main import main
heavy = json.loads(sys.argv[1])
report = []
for argv in json.loads(sys.argv[2]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy[0] or m in heavy[1])
    report.append({"argv": argv, "code": code, "out": out.getvalue(), "loaded": loaded})
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report() -> list[dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps([HEAVY, HEAVY_OURS]), json.dumps(RUNS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    runs: list[dict[str, object]] = json.loads(result.stdout)
    return runs


@pytest.mark.parametrize("index", range(len(RUNS)), ids=[" ".join(a) for a in RUNS])
def test_help_and_version_import_nothing_heavy(report: list[dict[str, object]], index: int) -> None:
    run = report[index]
    assert run["argv"] == RUNS[index]
    assert run["code"] == 0, run["out"]
    assert run["loaded"] == [], f"{RUNS[index]} imported {run['loaded']}"


def test_version_output(report: list[dict[str, object]]) -> None:
    from sshtunnel_mgr import __version__

    assert report[0]["out"] == f"sshtun {__version__}\n"


def _listed(help_text: str) -> dict[str, str]:
    """The Commands: section of a help page, as {name: the start of its help}."""
    section = help_text.split("Commands:\n", 1)[1].split("\n\n", 1)[0]  # not the epilog
    rows = [line.split(None, 1) for line in section.splitlines() if line.startswith("  ")]
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


def test_help_lists_every_command_with_its_help(report: list[dict[str, object]]) -> None:
    """The lazy imports leave the help whole: every command, with the first words of its
    docstring, as typer builds them from the app."""
    import typer

    from sshtunnel_mgr.cli.main import app

    group = typer.main.get_command(app)
    pages = {" ".join(map(str, r["argv"])): str(r["out"]) for r in report}
    assert isinstance(group, typer.core.TyperGroup)
    for prefix, page in (("", pages["--help"]), ("keys ", pages["keys --help"])):
        node = group if not prefix else group.commands["keys"]
        assert isinstance(node, typer.core.TyperGroup)
        listed = _listed(page)
        assert sorted(listed) == sorted(node.commands), prefix
        for name, command in node.commands.items():
            first_words = " ".join((command.help or "").split()[:3])
            assert listed[name].startswith(first_words), (prefix + name, listed[name])
    assert sorted(_listed(pages["systemd --help"])) == ["install"]
    for argv, page in pages.items():
        if argv != "--version":
            assert page.startswith("Usage: sshtun"), argv


def test_a_supervisor_of_workers_loads_no_ssh_stack_until_it_starts_them() -> None:
    """With ``workers`` over 1 the ``sshtun bastion`` process supervises and runs no SSH:
    importing its modules (bastion/run.py, bastion/workers/supervisor.py) loads neither
    asyncssh, cryptography nor keyring (``sshtun status`` and friends stay light); the
    supervisor imports the workers' stack once, as it starts them (workers/forked.py's
    ``preload``), so every worker forked from it shares those pages."""
    script = (
        "import json, sys\n"
        "import sshtunnel_mgr.bastion.run, sshtunnel_mgr.bastion.workers.supervisor\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[1:])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "asyncssh", "cryptography", "keyring", "pydantic"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert loaded == {"pydantic"}, loaded


def test_bastion_workers_and_agents_load_keyring_only_for_an_encrypted_key() -> None:
    """keyring (about 40 ms and a dozen modules in every bastion process and agent) is
    imported by keys/secrets.py only when a passphrase is stored, looked up or forgotten."""
    script = (
        "import sys\n"
        "import sshtunnel_mgr.bastion.workers.worker, sshtunnel_mgr.agent.serve\n"
        "import sshtunnel_mgr.keys.store, sshtunnel_mgr.keys.rotation\n"
        "print(int('keyring' in sys.modules))\n"
        "from sshtunnel_mgr.keys.secrets import usable_keyring\n"
        "usable_keyring()\n"
        "print(int('keyring' in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["0", "1"]
