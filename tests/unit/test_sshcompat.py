"""sshcompat's registry on the asyncssh installed here: every shim active on the supported
release (2.24.1, floor and ceiling of the range at once), each one stepped aside with its
internal removed, nothing patched at import (a subprocess without asyncssh's
``lookup_server_auth`` still runs ``sshtun keys gen``), the start-up line, the status line
and the doctor finding. Real connections with each internal removed are in
tests/integration/test_sshcompat_wire.py."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import asyncssh.connection
import pytest
from asyncssh.channel import SSHChannel
from asyncssh.encryption import GCMEncryption

from sshtunnel_mgr import sshcompat
from sshtunnel_mgr.cli.status import format_shims
from sshtunnel_mgr.core.errors import KeyFileError
from sshtunnel_mgr.doctor.compat import check_shims
from sshtunnel_mgr.doctor.findings import Level
from sshtunnel_mgr.keys.store import load_private_key
from sshtunnel_mgr.sshcompat import ShimState, authlog, forwardreq, keyerrors

REPO = Path(__file__).resolve().parents[2]
Connection = asyncssh.connection.SSHConnection  # where most internals live
Server = asyncssh.SSHServerConnection
Logger = type(asyncssh.logger)


def test_the_range_is_pyprojects_pin_and_2_24_1_is_its_floor_and_ceiling() -> None:
    """Only 2.24.1 exists in >=2.24.1,<2.25 (pip index versions asyncssh: 2.24.1, then
    2.24.0 below the floor): the floor and the ceiling are the release installed here."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if d.startswith("asyncssh")]
    assert pins == [f"asyncssh[bcrypt]{sshcompat.ASYNCSSH_RANGE}"]
    assert sshcompat.TESTED_VERSIONS == ("2.24.1",)
    assert asyncssh.__version__ in sshcompat.TESTED_VERSIONS


def test_every_shim_is_active_on_the_supported_asyncssh() -> None:
    states = sshcompat.active_shims()
    assert [s.name for s in states] == list(sshcompat.NAMES)
    assert [s for s in states if not s.active] == []
    assert {s.name for s in sshcompat.active_shims("agent")} == {
        "cork",
        "skip_ignore",
        "quiet_packet_log",
        "recv_feed",
        "aead_glue",
        "data_packets",
        "kexguess",
        "keyerrors",
    }
    info = sshcompat.summary("bastion")
    assert info["tested"] and info["stepped_aside"] == {}
    assert info["active"] == list(sshcompat.NAMES)


def _lookup_renamed(monkeypatch: pytest.MonkeyPatch) -> None:
    original = getattr(asyncssh.connection, "lookup_server_auth")  # noqa: B009

    def lookup_server_auth(connection: Any, user: str, name: bytes, pkt: Any) -> Any:
        return original(connection, user, name, pkt)  # what a renamed signature looks like

    monkeypatch.setattr(asyncssh.connection, "lookup_server_auth", lookup_server_auth)


def _reads_encrypted_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    real = asyncssh.import_private_key
    monkeypatch.setattr(
        asyncssh,
        "import_private_key",
        lambda data, passphrase=None: real(
            asyncssh.generate_private_key("ssh-ed25519").export_private_key()
        ),
    )


def _no_waiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server options that no longer carry the login future (a future asyncssh)."""
    options = asyncssh.connection.SSHConnectionOptions
    monkeypatch.setattr(options, "__annotations__", {**options.__annotations__})
    monkeypatch.delitem(options.__annotations__, "waiter")


# shim -> how to take its internal away, as a future asyncssh might
REMOVALS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "authlog": _lookup_renamed,
    "cork": lambda mp: mp.delattr(Connection, "_send"),
    "skip_ignore": lambda mp: mp.setattr(Connection, "send_packet", lambda self, *a: None),
    "quiet_packet_log": lambda mp: mp.delattr(Logger, "_debug_level"),
    "recv_feed": lambda mp: mp.delattr(Connection, "_recv_pkthdr"),
    "aead_glue": lambda mp: mp.setattr(GCMEncryption, "encrypt_packet", lambda self, *a: None),
    "data_packets": lambda mp: mp.setattr(SSHChannel, "send_packet", lambda self, *a: None),
    "kexguess": lambda mp: mp.setattr(Connection, "_packet_handlers", {}),
    "sigpolicy": lambda mp: mp.delattr(Server, "validate_public_key"),
    "disconnects": lambda mp: mp.delattr(Connection, "_send_disconnect"),
    "forwardreq": lambda mp: mp.delattr(Server, "_process_tcpip_forward_global_request"),
    "hostkeys": lambda mp: mp.delattr(Server, "send_server_host_keys"),
    "keyerrors": _reads_encrypted_keys,
    "noreload": lambda mp: mp.delattr(Server, "reload_config"),
    "serverstart": _no_waiter,
}


def test_every_shim_has_a_removal_case() -> None:
    assert set(REMOVALS) == set(sshcompat.NAMES)


@pytest.mark.parametrize("name", sshcompat.NAMES)
def test_a_shim_steps_aside_when_its_internal_is_gone_and_only_that_one(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    REMOVALS[name](monkeypatch)
    reason = sshcompat.check(name)
    assert reason
    states = {s.name: s for s in sshcompat.active_shims()}
    assert states[name] == ShimState(name, False, reason, sshcompat.shim(name).fallback)
    assert [n for n, s in states.items() if not s.active] == [name]


def test_the_start_line_names_the_active_shims(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sshtun-test")
    sshcompat.announce(logging.getLogger("sshtun-test"), "agent")
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "asyncssh shims role=agent asyncssh=2.24.1 tested=true "
        "active=cork,skip_ignore,quiet_packet_log,recv_feed,aead_glue,data_packets,kexguess,"
        "keyerrors stepped_aside=-"
    )


def test_the_start_line_warns_with_the_shim_stepped_aside(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="sshtun-test")
    monkeypatch.delattr(Connection, "_send_disconnect")
    sshcompat.announce(logging.getLogger("sshtun-test"), "bastion")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "stepped_aside=\"disconnects: asyncssh's SSHServerConnection has no" in (
        record.getMessage()
    )
    assert "active=authlog,cork," in record.getMessage()


def test_a_connection_that_cannot_take_a_shim_shows_in_the_summary_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sshtunnel_mgr")
    for _ in range(3):
        assert not forwardreq.remember_bind_spellings(object(), {})
    assert sshcompat.summary("bastion")["stepped_aside"] == {
        "forwardreq": "this connection has no _process_tcpip_forward_global_request"
    }
    lines = [r for r in caplog.records if "asyncssh shim stepped aside" in r.getMessage()]
    assert len(lines) == 1 and "published names are answered in lower case" in lines[0].getMessage()


# Nothing at import -----------------------------------------------------------------------
_WITHOUT_LOOKUP = """
import asyncssh.connection, importlib, pkgutil, sys
del asyncssh.connection.lookup_server_auth
import sshtunnel_mgr
for mod in pkgutil.walk_packages(sshtunnel_mgr.__path__, "sshtunnel_mgr."):
    if mod.name != "sshtunnel_mgr.__main__":
        importlib.import_module(mod.name)
assert not hasattr(asyncssh.connection, "lookup_server_auth"), "something patched it back"
from sshtunnel_mgr.cli.main import main
sys.exit(main(["keys", "gen", sys.argv[1]]))
"""


def test_sshtun_runs_without_the_internal_authlog_wraps(tmp_path: Path) -> None:
    """The old authlog replaced asyncssh.connection.lookup_server_auth at import: without
    it, every sshtun command (``keys gen`` too) died on an AttributeError at start."""
    key = tmp_path / "agent_key"
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LOOKUP, str(key)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600


def test_importing_the_package_patches_nothing() -> None:
    code = (
        "import asyncssh.connection as c, importlib, pkgutil\n"
        "before = c.lookup_server_auth\n"
        "import sshtunnel_mgr\n"
        "for m in pkgutil.walk_packages(sshtunnel_mgr.__path__, 'sshtunnel_mgr.'):\n"
        "    if m.name != 'sshtunnel_mgr.__main__': importlib.import_module(m.name)\n"
        "assert c.lookup_server_auth is before\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_authlog_install_is_idempotent_and_steps_aside_when_renamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    authlog.uninstall()  # a bastion started by an earlier test installed it
    original = getattr(asyncssh.connection, "lookup_server_auth")  # noqa: B009
    try:
        assert authlog.install() and authlog.install()
        wrapper: Any = getattr(asyncssh.connection, "lookup_server_auth")  # noqa: B009
        assert wrapper.__wrapped__ is original
    finally:
        authlog.uninstall()
    assert getattr(asyncssh.connection, "lookup_server_auth") is original  # noqa: B009
    _lookup_renamed(monkeypatch)
    renamed = getattr(asyncssh.connection, "lookup_server_auth")  # noqa: B009
    assert not authlog.install()
    assert getattr(asyncssh.connection, "lookup_server_auth") is renamed  # noqa: B009


# keyerrors: from the file, not the message -----------------------------------------------
ED = asyncssh.generate_private_key("ssh-ed25519")
SECRET = "secret pass"


@functools.cache
def exported(fmt: str, encrypted: bool) -> bytes:
    """A key in ``fmt`` (PKCS#1 holds RSA only), encrypted or not; made once per run (an
    encrypted OpenSSH key costs bcrypt rounds: the fewest bcrypt accepts quietly)."""
    key = asyncssh.generate_private_key("ssh-rsa", key_size=1024) if fmt == "pkcs1-pem" else ED
    if not encrypted:
        return key.export_private_key(fmt)
    if fmt == "openssh":
        return key.export_private_key(fmt, SECRET, "aes256-ctr", "", 50)
    return key.export_private_key(fmt, SECRET)


@pytest.mark.parametrize(
    ("fmt", "encrypted", "expected"),
    [
        ("openssh", False, False),
        ("openssh", True, True),
        ("pkcs8-pem", False, False),
        ("pkcs8-pem", True, True),
        ("pkcs1-pem", False, False),
        ("pkcs1-pem", True, True),
        ("pkcs8-der", False, None),  # not a format asyncssh says "passphrase" for
    ],
)
def test_encrypted_is_read_from_the_key_format(
    fmt: str, encrypted: bool, expected: bool | None
) -> None:
    assert keyerrors.encrypted(exported(fmt, encrypted)) is expected


@pytest.mark.parametrize(
    "data",
    [b"-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n-----END OPENSSH PRIVATE KEY-----\n", b""],
)
def test_an_unreadable_file_is_not_said_to_be_encrypted(data: bytes) -> None:
    assert keyerrors.encrypted(data) is None


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("fmt", ["openssh", "pkcs8-pem", "pkcs1-pem"])
def test_an_encrypted_key_without_a_stored_passphrase_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    monkeypatch.setattr("sshtunnel_mgr.keys.store.load_passphrase", lambda path: None)
    path = _write(tmp_path / "k", exported(fmt, True))
    with pytest.raises(KeyFileError, match="is encrypted and no passphrase is stored"):
        load_private_key(path)


def test_a_stored_passphrase_opens_the_key_and_a_broken_key_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "sshtunnel_mgr.keys.store.load_passphrase",
        lambda path: SECRET if path.name == "k" else None,
    )
    path = _write(tmp_path / "k", exported("pkcs8-pem", True))  # PBKDF2: quick to open
    assert load_private_key(path).public_data == ED.public_data
    broken = _write(
        tmp_path / "broken", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(KeyFileError, match="cannot load key"):
        load_private_key(broken)


# forwardreq's parser, status and doctor (pure) ---------------------------------------------
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00\x00\x00\x07HomeBox\x00\x00\x00\x16", ("HomeBox", 22)),
        (b"\x00\x00\x00\x00\x00\x00\x00\x00", ("", 0)),
        (b"\x00\x00\x00\x07HomeBox\x00\x00", None),
        (b"\x00\x00\x00\x02\xff\xfe\x00\x00\x00\x16", None),
        (b"\x00\x00", None),
    ],
)
def test_bind_address(payload: bytes, expected: tuple[str, int] | None) -> None:
    assert forwardreq.bind_address(payload) == expected


def test_status_line() -> None:
    info = {
        "asyncssh": "2.24.1",
        "supported": ">=2.24.1,<2.25",
        "tested": True,
        "active": ["cork", "kexguess"],
        "stepped_aside": {"hostkeys": "no send_server_host_keys"},
    }
    assert format_shims(info) == (
        "\nasyncssh 2.24.1: shims active: cork, kexguess; "
        "stepped aside: hostkeys (no send_server_host_keys)"
    )
    assert format_shims(None) == ""
    assert format_shims({**info, "tested": False, "stepped_aside": {}}).endswith(
        "(not a tested release: >=2.24.1,<2.25)"
    )


def test_doctor_finding() -> None:
    active = [ShimState("cork", True), ShimState("kexguess", True)]
    found = check_shims("agent", "2.24.1", True, ">=2.24.1,<2.25", active)
    assert (found.level, found.check) == (Level.OK, "agent.asyncssh-shims")
    assert found.message == "asyncssh 2.24.1: shims active: cork, kexguess"
    aside = [*active, ShimState("hostkeys", False, "gone", "next login only")]
    found = check_shims("bastion", "2.24.1", True, ">=2.24.1,<2.25", aside)
    assert found.level is Level.WARN
    assert "hostkeys (gone; instead: next login only)" in found.message
    assert "pip install 'asyncssh[bcrypt]>=2.24.1,<2.25'" in found.fix
    found = check_shims("agent", "2.30.0", False, ">=2.24.1,<2.25", active)
    assert found.level is Level.WARN and "outside the range" in found.message
