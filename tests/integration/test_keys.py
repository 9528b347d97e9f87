"""The key manager's commands with real key files, ssh-keygen and a running bastion."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import subprocess
from pathlib import Path

import asyncssh
import keyring
import keyring.backend
import pytest

from sshtunnel_mgr.cli.main import main
from sshtunnel_mgr.keys import secrets
from sshtunnel_mgr.keys.store import load_private_key
from sshtunnel_mgr.runtime.admin import AdminServer
from tests.harness import (
    Keys,
    access_text,
    agent_config,
    bastion_config,
    bastion_pub,
    require_openssh,
    running_agent,
    running_bastion,
    write_toml,
)
from tests.integration.scene import scene


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def keygen_l(path: Path) -> tuple[int, str]:
    require_openssh()
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), out[1]


class MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


class PlaintextKeyring(MemoryKeyring):
    """Stands in for keyrings.alt's plaintext file backend."""


PlaintextKeyring.__module__ = "keyrings.alt.file"


@pytest.fixture
def fresh_keyring() -> object:
    before = keyring.get_keyring()
    yield
    keyring.set_keyring(before)


def test_rsa_on_request_at_least_3072_bits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "keys", "gen", str(tmp_path / "rsa"), "--type", "rsa")
    assert code == 0, err
    bits, fp = keygen_l(tmp_path / "rsa.pub")
    assert bits == 3072 and f"fingerprint: {fp}" in out
    code, _, err = cli(
        capsys, "keys", "gen", str(tmp_path / "weak"), "--type", "rsa", "--bits", "2048"
    )
    assert code == 2 and "at least 3072 bits" in err  # a bad value: a usage error


def test_passphrase_falls_back_to_a_0600_file_without_a_keyring(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fresh_keyring: object,
) -> None:
    from keyring.backends import fail

    keyring.set_keyring(fail.Keyring())
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    key = tmp_path / "agent_key"
    code, out, err = cli(capsys, "keys", "gen", str(key), "--passphrase-stdin")
    assert code == 0, err
    secret_file = tmp_path / "agent_key.passphrase"
    assert f"passphrase stored in {secret_file} (mode 0600; no OS keyring" in out
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    # The key really is encrypted, and OpenSSH opens it with that passphrase.
    require_openssh()
    wrong = subprocess.run(
        ["ssh-keygen", "-y", "-P", "nope", "-f", str(key)], capture_output=True, text=True
    )
    assert wrong.returncode != 0
    right = subprocess.run(
        ["ssh-keygen", "-y", "-P", "correct horse battery", "-f", str(key)],
        capture_output=True,
        text=True,
    )
    assert (
        right.returncode == 0
        and right.stdout.split()[1] in (tmp_path / "agent_key.pub").read_text()
    )
    # sshtun opens it with the stored passphrase, no argument needed.
    assert load_private_key(key).public_data


def test_passphrase_goes_to_a_real_keyring_backend_when_there_is_one(
    tmp_path: Path, fresh_keyring: object
) -> None:
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    stored = secrets.store_passphrase(tmp_path / "k", "s3cret-pass")
    assert stored.where == "keyring"
    assert backend.store == {("sshtun", str((tmp_path / "k").absolute())): "s3cret-pass"}
    assert not (tmp_path / "k.passphrase").exists()
    assert secrets.load_passphrase(tmp_path / "k") == "s3cret-pass"
    secrets.forget_passphrase(tmp_path / "k")
    assert backend.store == {}


def test_keyrings_alt_plaintext_backend_is_never_used(
    tmp_path: Path, fresh_keyring: object
) -> None:
    backend = PlaintextKeyring()
    keyring.set_keyring(backend)
    stored = secrets.store_passphrase(tmp_path / "k", "s3cret-pass")
    assert stored.where == "file" and "refusing keyrings.alt" in stored.detail
    assert backend.store == {}


def test_credentials_directory_passphrase_is_read_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_keyring: object
) -> None:
    from keyring.backends import fail

    keyring.set_keyring(fail.Keyring())
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "agent_key.passphrase").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert secrets.load_passphrase(tmp_path / "elsewhere" / "agent_key") == "from-systemd"


async def test_agent_runs_with_an_encrypted_key(
    keys: Keys, tmp_path: Path, fresh_keyring: object
) -> None:
    from keyring.backends import fail

    keyring.set_keyring(fail.Keyring())
    from sshtunnel_mgr.keys.store import generate_key

    info = generate_key(tmp_path / "enc_key", comment="enc", passphrase="long passphrase")
    secrets.store_passphrase(tmp_path / "enc_key", "long passphrase")
    access = access_text(keys) + f'permitlisten="enc:22" {info.public_line}\n'
    async with scene(keys, tmp_path, access=access, home=False) as s:
        bastion = s.bastion
        cfg = agent_config(
            keys, bastion.port, [("enc", 22, "127.0.0.1:9")], key=tmp_path / "enc_key"
        )
        async with running_agent(cfg):
            assert bastion.state.routes.lookup("enc", 22)[0].owner == info.fingerprint


def test_keys_list_and_show(keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    access = tmp_path / "access"
    access.write_text(
        access_text(keys, open_="*.home.example.com:22")
        + f'permitopen="x:22",expiry-time="20200101Z" {keys.extra("old").public_line}\n'
    )
    bfile = write_toml(tmp_path / "b.toml", "bastion", bastion_config(keys, access))
    code, out, err = cli(
        capsys, "keys", "list", "--dir", str(keys.dir), "--config", str(bfile), "--json"
    )
    assert code == 0, err
    rows = {r["fingerprint"]: r for r in json.loads(out)}
    for info in (keys.agent, keys.client):
        bits, fp = keygen_l(info.path.with_name(info.path.name + ".pub"))
        assert fp == info.fingerprint and rows[fp]["bits"] == bits == 256
        assert rows[fp]["type"] == "ssh-ed25519" and rows[fp]["encrypted"] is False
        assert 0 <= rows[fp]["age_days"] < 1
    assert rows[keys.agent.fingerprint]["publish"] == "homebox:22"
    assert rows[keys.client.fingerprint]["reach"] == "*.home.example.com:22"
    old = next(r for r in rows.values() if r["comment"] == "old")
    assert old["expired"] is True
    code, out, _ = cli(capsys, "keys", "list", "--config", str(bfile))
    assert "EXPIRED" in out and keys.agent.fingerprint in out
    code, out, _ = cli(capsys, "keys", "show", keys.client.fingerprint, "--config", str(bfile))
    assert json.loads(out)["reach"] == "*.home.example.com:22"


async def test_revoke_removes_the_line_and_closes_live_sessions_at_once(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    access = tmp_path / "access"
    access.write_text("# keep this comment\n" + access_text(keys))
    access.chmod(0o640)
    bcfg = bastion_config(keys, access)
    async with (
        running_bastion(bcfg) as bastion,
        running_agent(agent_config(keys, bastion.port, [("homebox", 22, "127.0.0.1:9")])),
    ):
        bfile = write_toml(
            tmp_path / "b.toml",
            "bastion",
            bcfg.model_copy(update={"listen": [f"127.0.0.1:{bastion.port}"]}),
        )
        assert bcfg.admin_socket is not None
        admin = AdminServer(bcfg.admin_socket, bastion.handle_admin)
        assert await admin.start()
        try:
            live = await asyncssh.connect(
                "127.0.0.1",
                bastion.port,
                username="alice",
                config=None,
                agent_path=None,
                client_keys=[load_private_key(keys.client.path)],
                known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
            )
            code = await asyncio.to_thread(
                main, ["keys", "revoke", keys.client.fingerprint, "--config", str(bfile)]
            )
            out, err = capsys.readouterr()
            assert code == 0, err
            assert "1 live connection(s) of that key closed" in out
            await asyncio.wait_for(live.wait_closed(), 10)
            text = access.read_text()
            assert "# keep this comment" in text and keys.agent.public_line in text
            assert keys.client.public_line not in text
            # rewritten 0600 whatever it was (0640 here), like every access-file rewrite
            assert stat.S_IMODE(access.stat().st_mode) == 0o600
            assert bastion.state.routes.lookup("homebox", 22)  # the agent is untouched
            code = await asyncio.to_thread(
                main, ["keys", "revoke", keys.client.fingerprint, "--config", str(bfile)]
            )
            assert code == 6
        finally:
            await admin.stop()


def test_real_secretservice_without_dbus_falls_back_to_a_0600_file(tmp_path: Path) -> None:
    """The real SecretService backend, in a real process with no D-Bus session (as on a
    headless server): sshtun says why and stores the passphrase in a 0600 file."""
    pytest.importorskip("secretstorage")
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.SecretService.Keyring"
    key = tmp_path / "agent_key"
    done = subprocess.run(
        [sys.executable, "-m", "sshtunnel_mgr", "keys", "gen", str(key), "--passphrase-stdin"],
        input="correct horse battery\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "keyring unavailable" in done.stdout and "DBUS_SESSION_BUS_ADDRESS" in done.stdout
    secret_file = tmp_path / "agent_key.passphrase"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret_file.read_text() == "correct horse battery"
