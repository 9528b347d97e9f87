"""``sshtun doctor`` end to end: the real ``sshd -T -f`` on a weak and a hardened sshd config
(host keys made by the real ``ssh-keygen``), real files with real modes, and the CLI's
``--json`` output and exit status run as a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sshtunnel_mgr.core.errors import EXIT_CHECKS_FAILED, EXIT_CONFIG, EXIT_OK, EXIT_USAGE
from sshtunnel_mgr.keys.store import generate_key
from tests.harness import USER, require_openssh

pytestmark = pytest.mark.openssh
SSHTUN = [sys.executable, "-m", "sshtunnel_mgr"]


def ssh_keygen(path: Path, *args: str) -> bool:
    binary = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
    proc = subprocess.run(
        [binary, "-q", "-N", "", "-C", path.name, "-f", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0


def doctor(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [*SSHTUN, "doctor", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_check(report: dict[str, Any], prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in report["findings"]:
        if f["check"].startswith(prefix):
            out.setdefault(f["check"], []).append(f["level"])
    return out


def worst(levels: list[str]) -> str:
    return max(levels, key=["ok", "warn", "fail"].index)


HARDENED = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ed25519
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
PermitEmptyPasswords no
MaxAuthTries 3
X11Forwarding no
AllowUsers {user}
UsePAM no
UseDNS no
Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-ctr
MACs hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com
KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,diffie-hellman-group16-sha512
HostKeyAlgorithms ssh-ed25519
PubkeyAcceptedAlgorithms ssh-ed25519,rsa-sha2-512,rsa-sha2-256
MaxStartups 100:30:200
"""

WEAK = """\
Port {port}
ListenAddress 0.0.0.0
HostKey {dir}/ed25519
HostKey {dir}/rsa2048
HostKey {dir}/ecdsa
{dsa}
PasswordAuthentication yes
KbdInteractiveAuthentication yes
PubkeyAuthentication no
PermitRootLogin yes
PermitEmptyPasswords yes
MaxAuthTries 10
X11Forwarding yes
StrictModes no
UsePAM no
UseDNS no
Ciphers aes128-cbc,3des-cbc,aes128-ctr
MACs hmac-md5,hmac-sha1,hmac-sha2-256
KexAlgorithms diffie-hellman-group1-sha1,diffie-hellman-group14-sha1,curve25519-sha256
HostKeyAlgorithms ssh-rsa,ssh-ed25519
PubkeyAcceptedAlgorithms ssh-rsa,ecdsa-sha2-nistp256
"""


@pytest.fixture
def host_keys(tmp_path: Path) -> Path:
    require_openssh(server=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    directory = tmp_path / "hostkeys"
    directory.mkdir()
    assert ssh_keygen(directory / "ed25519", "-t", "ed25519")
    assert ssh_keygen(directory / "rsa2048", "-t", "rsa", "-b", "2048")
    assert ssh_keygen(directory / "ecdsa", "-t", "ecdsa", "-b", "256")
    ssh_keygen(directory / "dsa", "-t", "dsa")  # gone from newer OpenSSH builds
    return directory


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_weak_sshd_config_every_finding(tmp_path: Path, host_keys: Path) -> None:
    dsa = f"HostKey {host_keys}/dsa" if (host_keys / "dsa").exists() else ""
    cfg = write(tmp_path / "sshd_weak", WEAK.format(port=2201, dir=host_keys, dsa=dsa))
    status, report = doctor("--role", "agent", "--sshd-config", str(cfg))
    assert status == EXIT_CHECKS_FAILED
    assert report["ok"] is False and report["roles"] == ["agent"]
    got = {check: worst(levels) for check, levels in by_check(report, "sshd.").items()}
    expected = {
        "sshd.password-auth": "fail",
        "sshd.kbd-interactive": "fail",
        "sshd.pubkey-auth": "fail",
        "sshd.empty-passwords": "fail",
        "sshd.root-login": "fail",
        "sshd.max-auth-tries": "warn",
        "sshd.x11-forwarding": "warn",
        "sshd.allow-users": "warn",
        "sshd.listen": "warn",
        "sshd.strict-modes": "warn",
        "sshd.ciphers": "fail",  # 3des-cbc; aes128-cbc alone would warn
        "sshd.macs": "fail",
        "sshd.kex": "fail",
        "sshd.host-key-algs": "fail",
        "sshd.pubkey-algs": "fail",
        "sshd.host-key": "fail" if dsa else "warn",
        "sshd.host-key-mode": "ok",
        "sshd.tunnel-shared-source": "warn",  # Debian's default MaxStartups 10:30:100
    }
    assert got == expected
    keys = {
        f["message"].split()[2]: f["level"]
        for f in report["findings"]
        if f["check"] == "sshd.host-key"
    }
    assert keys[f"{host_keys}/ed25519"] == "ok"
    assert keys[f"{host_keys}/rsa2048"] == "warn"
    assert keys[f"{host_keys}/ecdsa"] == "warn"
    if dsa:
        assert keys[f"{host_keys}/dsa"] == "fail"
    messages = {f["check"]: f for f in report["findings"]}
    assert "3des-cbc" in messages["sshd.ciphers"]["message"]
    assert messages["sshd.ciphers"]["fix"] == "Ciphers aes128-ctr"
    assert "hmac-md5" in messages["sshd.macs"]["message"]
    assert "with a tunnel sshd can listen on 127.0.0.1 only" in messages["sshd.listen"]["message"]
    assert "MaxStartups 100:30:200" in messages["sshd.tunnel-shared-source"]["fix"]
    for f in report["findings"]:
        assert (f["level"] == "ok") == (f["fix"] == ""), f


def test_hardened_sshd_config_is_clean(tmp_path: Path, host_keys: Path) -> None:
    cfg = write(tmp_path / "sshd_good", HARDENED.format(port=2202, dir=host_keys, user=USER))
    _status, report = doctor("--role", "agent", "--sshd-config", str(cfg))
    got = by_check(report, "sshd.")
    assert set(got) >= {
        "sshd.password-auth",
        "sshd.kbd-interactive",
        "sshd.pubkey-auth",
        "sshd.empty-passwords",
        "sshd.root-login",
        "sshd.max-auth-tries",
        "sshd.x11-forwarding",
        "sshd.allow-users",
        "sshd.listen",
        "sshd.strict-modes",
        "sshd.ciphers",
        "sshd.macs",
        "sshd.kex",
        "sshd.host-key-algs",
        "sshd.pubkey-algs",
        "sshd.host-key",
        "sshd.host-key-mode",
        "sshd.tunnel-shared-source",
    }
    bad = {c: lv for c, lv in got.items() if set(lv) != {"ok"}}
    assert bad == {}


def test_a_match_block_that_reopens_passwords_on_loopback(tmp_path: Path, host_keys: Path) -> None:
    """A tunnel's connections come from 127.0.0.1: doctor asks sshd -T -C about them."""
    text = HARDENED.format(port=2203, dir=host_keys, user=USER)
    text += "Match Address 127.0.0.1\n  PasswordAuthentication yes\n"
    cfg = write(tmp_path / "sshd_match", text)
    status, report = doctor("--role", "agent", "--sshd-config", str(cfg))
    assert status == EXIT_CHECKS_FAILED
    password = [f for f in report["findings"] if f["check"] == "sshd.password-auth"]
    assert [f["level"] for f in password] == ["ok", "fail"]
    assert "addr=127.0.0.1" in password[1]["message"]
    assert "Match" in password[1]["fix"]


def test_sshd_t_that_fails_is_a_failing_finding(tmp_path: Path) -> None:
    require_openssh(server=True)
    # An existing file sshd -t rejects (a missing one is a usage error, exit 2).
    broken = write(tmp_path / "sshd_config", "NotAnSshdKeyword yes\n")
    status, report = doctor("--sshd-config", str(broken))
    assert status == EXIT_CHECKS_FAILED
    assert by_check(report, "sshd.") == {"sshd.effective-config": ["fail"]}


# The agent (home box) and the bastion -------------------------------------------------------
def agent_toml(directory: Path, key: str, pin: str) -> Path:
    return write(
        directory / "agent.toml",
        f'[agent]\nkey = "{key}"\n[[agent.bastions]]\naddress = "127.0.0.1:2222"\n{pin}\n'
        '[[agent.tunnels]]\nname = "homebox"\n',
    )


def test_agent_files_key_and_pin(tmp_path: Path, host_keys: Path) -> None:
    sshd_cfg = write(tmp_path / "sshd", HARDENED.format(port=2204, dir=host_keys, user=USER))
    good = tmp_path / "good"
    good.mkdir()
    generate_key(good / "agent_key")
    bastion_pub = " ".join(generate_key(good / "bastion_host").public_line.split()[:2])
    write(good / "known_hosts", f"[127.0.0.1]:2222 {bastion_pub}\n")
    cfg = agent_toml(good, "agent_key", 'known_hosts = "known_hosts"')
    _status, report = doctor("--config", str(cfg), "--sshd-config", str(sshd_cfg))
    assert report["roles"] == ["agent"]
    agent = by_check(report, "agent.")
    assert agent == {
        "agent.config-mode": ["ok"],
        "agent.key-mode": ["ok"],
        "agent.key-strength": ["ok"],
        "agent.key-age": ["ok"],
        "agent.key-rotation": ["ok"],
        "agent.asyncssh-shims": ["ok"],
        "agent.bastion-pinned": ["ok"],
        "agent.known-hosts-mode": ["ok"],
    }

    weak = tmp_path / "weak"
    weak.mkdir()
    assert ssh_keygen(weak / "agent_key", "-t", "rsa", "-b", "2048")
    (weak / "agent_key").chmod(0o644)
    old = time.time() - 400 * 86400
    os.utime(weak / "agent_key", (old, old))
    write(weak / "known_hosts", f"[127.0.0.1]:2299 {bastion_pub}\nnot a line\n", 0o666)
    cfg = agent_toml(weak, "agent_key", 'known_hosts = "known_hosts"')
    cfg.chmod(0o666)
    status, report = doctor("--config", str(cfg), "--sshd-config", str(sshd_cfg))
    assert status == EXIT_CHECKS_FAILED
    assert {c: worst(lv) for c, lv in by_check(report, "agent.").items()} == {
        "agent.config-mode": "fail",
        "agent.key-mode": "fail",
        "agent.key-strength": "fail",
        "agent.key-age": "warn",
        "agent.key-rotation": "ok",
        "agent.asyncssh-shims": "ok",
        "agent.bastion-pinned": "fail",  # the entry is for another port
        "agent.known-hosts-syntax": "warn",
        "agent.known-hosts-mode": "fail",
    }


def bastion_setup(directory: Path, access: str, access_mode: int = 0o600) -> Path:
    directory.mkdir()
    generate_key(directory / "host_key")
    write(directory / "access", access, access_mode)
    return write(
        directory / "bastion.toml",
        '[bastion]\nlisten = ["127.0.0.1:0"]\nhost_key = "host_key"\naccess_file = "access"\n',
    )


def test_bastion_clean_exits_0(tmp_path: Path) -> None:
    agent = generate_key(tmp_path / "agent_key").public_line
    client = generate_key(tmp_path / "client_key").public_line
    cfg = bastion_setup(
        tmp_path / "b",
        f'permitlisten="homebox:22" {agent}\npermitopen="homebox:22" {client}\n',
    )
    status, report = doctor("--config", str(cfg))
    assert report["roles"] == ["bastion"]
    assert status == EXIT_OK, [f for f in report["findings"] if f["level"] != "ok"]
    assert report["ok"] is True and report["summary"]["fail"] == 0
    assert set(by_check(report)) == {
        "bastion.config-mode",
        "bastion.access-file-mode",
        "bastion.access-dir",
        "bastion.host-key-mode",
        "bastion.host-key",
        "bastion.access-idle-key",
        "bastion.access-broad",
        "bastion.access-overlap",
        "bastion.access-expired",
        "bastion.access-rotation",
        "bastion.access-weak-key",
        "bastion.asyncssh-shims",
        "policy.kex",
        "policy.ciphers",
        "policy.macs",
        "policy.host-key-algs",
        "policy.signature-algs",
        "policy.compression",
    }


def test_bastion_weak_access_file_and_host_key(tmp_path: Path) -> None:
    require_openssh()
    keys = [generate_key(tmp_path / f"k{i}").public_line for i in range(5)]
    access = "\n".join(
        [
            f'permitlisten="*:*" {keys[0]}',
            f'permitlisten="homebox:22" {keys[1]}',
            f"{keys[2]}",
            f'permitopen="homebox:22",expiry-time="20200101Z" {keys[3]}',
            f'permitopen="*:22" {keys[4]}',
        ]
    )
    cfg = bastion_setup(tmp_path / "b", access + "\n", 0o666)
    (tmp_path / "b" / "host_key").unlink()
    (tmp_path / "b" / "host_key.pub").unlink()
    assert ssh_keygen(tmp_path / "b" / "host_key", "-t", "ecdsa")
    (tmp_path / "b" / "host_key").chmod(0o640)
    status, report = doctor("--config", str(cfg), "--role", "bastion")
    assert status == EXIT_CHECKS_FAILED
    got = by_check(report, "bastion.")
    assert worst(got["bastion.access-file-mode"]) == "fail"
    assert sorted(got["bastion.access-broad"]) == ["fail", "warn"]
    assert got["bastion.access-idle-key"] == ["warn"]
    assert got["bastion.access-expired"] == ["warn"]
    assert "warn" in got["bastion.access-overlap"]
    assert got["bastion.host-key-mode"] == ["fail"]
    assert got["bastion.host-key"] == ["warn"]  # ECDSA: a NIST curve


def test_an_invalid_access_file_is_a_failing_finding(tmp_path: Path) -> None:
    cfg = bastion_setup(tmp_path / "b", "permitlisten=homebox ssh-ed25519 AAAA\n")
    status, report = doctor("--config", str(cfg))
    assert status == EXIT_CHECKS_FAILED
    assert by_check(report, "bastion.access-file") == {
        "bastion.access-file": ["fail"],
        "bastion.access-file-mode": ["ok"],
    }


def test_text_report_and_usage_errors(tmp_path: Path) -> None:
    agent = generate_key(tmp_path / "agent_key").public_line
    cfg = bastion_setup(tmp_path / "b", f'permitlisten="*:*" {agent}\n')
    proc = subprocess.run(
        [*SSHTUN, "doctor", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == EXIT_CHECKS_FAILED
    assert "FAIL  bastion.access-broad" in proc.stdout
    assert 'fix: list the names it serves, e.g. permitlisten="homebox:22"' in proc.stdout
    assert "doctor FAILED:" in proc.stdout.splitlines()[-1]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SSHTUN, "doctor", *args], capture_output=True, text=True, timeout=60, check=False
        )

    assert run("--role", "bastion").returncode == EXIT_USAGE  # needs its config
    assert run("--role", "nonsense").returncode == EXIT_USAGE
    assert run("--config", str(tmp_path / "nope.toml")).returncode == EXIT_CONFIG
    missing = run("--config", str(cfg), "--role", "agent")
    assert missing.returncode == EXIT_CONFIG
    assert "no [agent] section" in missing.stderr
