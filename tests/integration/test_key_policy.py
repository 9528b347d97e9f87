"""The key policy is enforced at login, not only advertised: ECDSA keys, RSA keys under
3072 bits and ``ssh-rsa`` (SHA-1) signatures are refused with the reason in the log and the
audit log, even from clients that ignore ``server-sig-algs`` (paramiko told to sign with
ssh-rsa). The access-file loader warns about such keys naming the line, and ``sshtun
doctor`` fails them. Real paramiko, asyncssh and OpenSSH clients on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from sshtunnel_mgr.runtime.accessfile import load_access
from tests.harness import Keys, bastion_pub, require_openssh, run_ssh, write_ssh_config
from tests.integration.conftest import logged
from tests.integration.test_abuse import echo_scene, events
from tests.integration.test_doctor import bastion_setup, by_check, doctor, ssh_keygen


def public_line(key: paramiko.PKey, comment: str) -> str:
    return f'permitopen="homebox:22" {key.get_name()} {key.get_base64()} {comment}'


def paramiko_login(
    port: int, keys: Keys, key: paramiko.PKey, disabled: dict[str, list[str]] | None = None
) -> bytes | None:
    """Log in with paramiko (bastion host key pinned) and reach homebox:22 through the
    bastion; its first bytes, or None when the login is refused."""
    transport = paramiko.Transport(
        socket.create_connection(("127.0.0.1", port), timeout=20),
        disabled_algorithms=disabled,
    )
    try:
        transport.start_client(timeout=20)
        assert transport.get_remote_server_key().get_base64() == bastion_pub(keys).split()[1]
        try:
            transport.auth_publickey("alice", key)
        except paramiko.AuthenticationException:
            return None
        channel = transport.open_channel("direct-tcpip", ("homebox", 22), ("127.0.0.1", 0))
        channel.settimeout(20)
        channel.sendall(b"ping")
        data = b""
        while len(data) < 4:
            data += channel.recv(4 - len(data))
        channel.close()
        return data
    finally:
        transport.close()


@pytest.fixture
def weak_keys() -> dict[str, paramiko.PKey]:
    return {
        "ecdsa": paramiko.ECDSAKey.generate(bits=256),
        "rsa2048": paramiko.RSAKey.generate(2048),
        "rsa3072": paramiko.RSAKey.generate(3072),
    }


async def test_weak_keys_and_sha1_signatures_are_refused_at_login(
    keys: Keys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    weak_keys: dict[str, paramiko.PKey],
) -> None:
    async with echo_scene(keys, tmp_path) as s:
        extra = [public_line(k, name) for name, k in weak_keys.items()]
        s.bastion.state.access = load_access_text(tmp_path, keys, extra)
        port = s.bastion.port

        async def login(name: str, disabled: dict[str, list[str]] | None = None) -> Any:
            return await asyncio.to_thread(paramiko_login, port, keys, weak_keys[name], disabled)

        assert await login("ecdsa") is None
        assert await login("rsa2048") is None
        # An RSA-3072 key signing with rsa-sha2-256/512 is fine, and so is ed25519.
        assert await login("rsa3072", {"pubkeys": ["rsa-sha2-512"]}) == b"ping"
        assert await login("rsa3072", {"pubkeys": ["rsa-sha2-256"]}) == b"ping"
        ed25519 = paramiko.Ed25519Key.from_private_key_file(str(keys.client.path))
        assert await asyncio.to_thread(paramiko_login, port, keys, ed25519) == b"ping"

        # asyncssh told to sign with ssh-rsa (SHA-1) whatever server-sig-algs says (paramiko
        # 5 can no longer sign with it): the same RSA-3072 key is refused.
        rsa = asyncssh.import_private_key(key_text(weak_keys["rsa3072"]))
        with pytest.raises(asyncssh.PermissionDenied):
            async with asyncssh_login(keys, port, rsa, ["ssh-rsa"]):
                pass
        async with asyncssh_login(keys, port, rsa, ["rsa-sha2-256"]) as conn:
            reader, writer = await conn.open_connection("homebox", 22)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 20) == b"ping"

    fp = {name: fingerprint_of(k) for name, k in weak_keys.items()}
    reasons = {
        "ecdsa": "ecdsa-sha2-nistp256 keys are not accepted; use ssh-ed25519",
        "rsa2048": "RSA key of 2048 bits (at least 3072 are required)",
        "rsa3072": "ssh-rsa signatures (SHA-1) are not accepted; sign with rsa-sha2-256 or -512",
    }
    for name, reason in reasons.items():
        assert logged(caplog, "auth refused", fp[name], reason), name
    audited = [e["reason"] for e in events(s.audit, "refused") if e["stage"] == "auth"]
    for name, reason in reasons.items():
        assert any(fp[name] in r and reason in r for r in audited), (name, audited)
    logins = [e["key"] for e in events(s.audit, "login")]
    assert fp["rsa3072"] in logins and fp["ecdsa"] not in logins and fp["rsa2048"] not in logins


async def test_real_openssh_with_an_ecdsa_key_is_refused_and_rsa_3072_accepted(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_openssh()
    assert ssh_keygen(tmp_path / "id_ecdsa", "-t", "ecdsa")
    assert ssh_keygen(tmp_path / "id_rsa", "-t", "rsa", "-b", "3072")
    async with echo_scene(keys, tmp_path) as s:
        lines = [
            f'permitopen="homebox:22" {(tmp_path / f"{n}.pub").read_text().strip()}'
            for n in ("id_ecdsa", "id_rsa")
        ]
        s.bastion.state.access = load_access_text(tmp_path, keys, lines)

        async def probe(identity: str, extra: str = "") -> str:
            cfg = write_ssh_config(
                tmp_path / f"cfg-{identity}",
                keys,
                s.bastion.port,
                identity=tmp_path / identity,
                extra_opts=extra,
            )
            result = await run_ssh(cfg, "-W", "homebox:22", "bastion", stdin=b"")
            return result.stderr if result.returncode else ""

        assert "Permission denied (publickey)" in await probe("id_ecdsa")
        assert logged(caplog, "auth refused", "ecdsa-sha2-nistp256 keys are not accepted")
        # (OpenSSH 9.2 allowed only ssh-rsa does not even offer the key: it honours
        # server-sig-algs. asyncssh above is the client that ignores it.)
        assert await probe("id_rsa") == ""  # rsa-sha2-512 by default: in


def test_the_access_loader_warns_about_refused_keys_naming_the_line(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sshtunnel_mgr")
    ecdsa = paramiko.ECDSAKey.generate(bits=256)
    rsa = paramiko.RSAKey.generate(2048)
    path = tmp_path / "access"
    path.write_text(
        f'permitopen="homebox:22" {keys.client.public_line}\n# a comment\n'
        f"{public_line(ecdsa, 'old-ecdsa')}\n{public_line(rsa, 'old-rsa')}\n"
    )
    access = load_access(path)
    assert len(access.entries) == 3  # loaded (the bastion refuses them at login)
    warned = [r.getMessage() for r in caplog.records if "access key refused" in r.getMessage()]
    assert len(warned) == 2, warned
    assert f"file={path}" in warned[0] and "line=3" in warned[0] and "ecdsa" in warned[0]
    assert "line=4" in warned[1] and "RSA key of 2048 bits" in warned[1]


def test_doctor_fails_refused_keys_in_the_access_file(tmp_path: Path) -> None:
    require_openssh()
    for name, args in (("ecdsa", ("-t", "ecdsa")), ("rsa", ("-t", "rsa", "-b", "2048"))):
        assert ssh_keygen(tmp_path / name, *args)
    lines = [
        f'permitopen="homebox:22" {(tmp_path / f"{n}.pub").read_text().strip()}'
        for n in ("ecdsa", "rsa")
    ]
    cfg = bastion_setup(tmp_path / "b", "\n".join(lines) + "\n")
    status, report = doctor("--config", str(cfg), "--role", "bastion")
    assert status != 0
    assert by_check(report, "bastion.access-weak-key")["bastion.access-weak-key"] == [
        "fail",
        "fail",
    ]


# Helpers ------------------------------------------------------------------------------------
def asyncssh_login(keys: Keys, port: int, key: asyncssh.SSHKey, sig_algs: list[str]) -> Any:
    return asyncssh.connect(
        "127.0.0.1",
        port,
        username="alice",
        client_keys=[key],
        signature_algs=sig_algs,
        known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
        config=None,
        agent_path=None,
        connect_timeout=20,
    )


def load_access_text(tmp_path: Path, keys: Keys, extra: list[str]) -> Any:
    path = tmp_path / "access-weak"
    path.write_text(
        f'permitlisten="homebox:22" {keys.agent.public_line}\n'
        f'permitopen="homebox:22" {keys.client.public_line}\n' + "\n".join(extra) + "\n"
    )
    return load_access(path)


def key_text(key: paramiko.PKey) -> str:
    import io

    out = io.StringIO()
    key.write_private_key(out)
    return out.getvalue()


def fingerprint_of(key: paramiko.PKey) -> str:
    from sshtunnel_mgr.core.access import fingerprint

    return fingerprint(key.asbytes())
