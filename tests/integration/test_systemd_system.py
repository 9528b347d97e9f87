"""The shipped units, unedited, under a real systemd system manager (systemd_machine.py),
on exactly the layout ``sshtun init --systemd`` and ``sshtun systemd install`` produce.

The admin's steps from the README, as root inside the machine: init and install the
bastion and the agent, start both; the agent's key is not in the access file yet, so the
agent exits 5 and ``systemctl status`` says why; the admin adds the printed access lines,
reloads the bastion, restarts the agent; a real ``ssh -J`` through the bastion reaches a
throwaway OpenSSH sshd behind the agent; ``sshtun keys revoke`` takes the client's key away
live; a host key rotation and an agent key rotation go through live (same bastion process;
the restarted agent gets the new key as its credential). The sandbox applies: dynamic
users, read-only /etc, private /tmp, /root hidden.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.harness import SSH, SSHD, USER, require_openssh
from tests.integration.systemd_machine import Machine, system_manager

BASTION = "sshtun-bastion.service"
AGENT = "sshtun-agent.service"
BASTION_PORT = 2222  # the machine has its own network namespace: fixed ports are free
HOME_PORT = 2200


def keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def fingerprint(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub)], check=True, capture_output=True, text=True
    ).stdout
    return out.split()[1]


def start_home_sshd(machine: Machine, work: Path, client_pub: str) -> subprocess.Popen[bytes]:
    """The home box: OpenSSH's sshd in the machine's network, files on the host."""
    assert SSHD is not None
    host_key = work / "home_host_key"
    keygen(host_key, "home-host")
    (work / "authorized_keys").write_text(client_pub + "\n")
    cfg = work / "sshd_config"
    cfg.write_text(
        f"Port {HOME_PORT}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {work / 'sshd.pid'}\nAuthorizedKeysFile {work / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "AuthenticationMethods publickey\nUsePAM no\nStrictModes no\nUseDNS no\n"
        f"PermitRootLogin prohibit-password\nAllowUsers {USER}\nLogLevel VERBOSE\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = work / "sshd.log"
    with log.open("wb") as stderr:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            ["nsenter", "-t", str(machine.pid), "-n", "--", SSHD, "-D", "-e", "-f", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    machine.wait("sshd listening", lambda: "Server listening" in log.read_text(), 20)
    return proc


def ssh_config(work: Path, client_key: Path, bastion_pub: str) -> Path:
    home_pub = " ".join((work / "home_host_key.pub").read_text().split()[:2])
    known = work / "known_hosts"
    known.write_text(f"[127.0.0.1]:{BASTION_PORT} {bastion_pub}\nhomebox {home_pub}\n")
    cfg = work / "ssh_config"
    cfg.write_text(
        f"Host bastion\n  HostName 127.0.0.1\n  Port {BASTION_PORT}\n  User sshtun\n\n"
        f"Host homebox\n  HostName homebox\n  Port 22\n  User {USER}\n  ProxyJump bastion\n\n"
        f"Host *\n  BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {known}\n"
        f"  GlobalKnownHostsFile /dev/null\n  IdentitiesOnly yes\n  IdentityFile {client_key}\n"
        "  ConnectTimeout 15\n  LogLevel ERROR\n"
    )
    return cfg


def ssh_j(machine: Machine, cfg: Path) -> subprocess.CompletedProcess[str]:
    assert SSH is not None
    return subprocess.run(
        [
            "nsenter",
            "-t",
            str(machine.pid),
            "-n",
            "--",
            SSH,
            "-F",
            str(cfg),
            "homebox",
            "echo",
            "reached-home",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def sandbox(machine: Machine, unit: str) -> tuple[int, str]:
    """(uid, mountinfo) of the unit's main process, as the kernel reports them."""
    pid = machine.show(unit, "MainPID")
    status = machine.ok("cat", f"/proc/{pid}/status")
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    return uid, machine.ok("cat", f"/proc/{pid}/mountinfo")


def mount_at(mountinfo: str, target: str) -> tuple[str, str] | None:
    """(root within its filesystem, per-mount options) of the mount on top at ``target``."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if fields[4] == target:
            found = (fields[3], fields[5])
    return found


def test_units_run_the_init_layout_route_ssh_j_and_revoke_live(tmp_path: Path) -> None:
    require_openssh(server=True)
    work = tmp_path / "host"
    work.mkdir()
    client_key = work / "client_key"
    client_pub = keygen(client_key, "alice@laptop")
    with system_manager(tmp_path / "machine") as machine:
        # The bastion, as the README says.
        out = machine.ok(
            "sshtun",
            "init",
            "--role",
            "bastion",
            "--dir",
            "/etc/sshtun",
            "--systemd",
            "--listen",
            f"127.0.0.1:{BASTION_PORT}",
        )
        bastion_pub = out.split("pin this host key:\n")[1].splitlines()[0]
        out = machine.ok("sshtun", "systemd", "install", "--role", "bastion")
        assert "ExecStart=/opt/sshtun/bin/sshtun" in out or "/opt/sshtun/bin/sshtun" in (
            machine.ok("cat", f"/etc/systemd/system/{BASTION}")
        )
        # The agent on the same machine, publishing the home sshd.
        home = start_home_sshd(machine, work, client_pub)
        try:
            out = machine.ok(
                "sshtun",
                "init",
                "--role",
                "agent",
                "--dir",
                "/etc/sshtun",
                "--systemd",
                "--bastion",
                f"127.0.0.1:{BASTION_PORT}",
                "--bastion-key",
                bastion_pub,
                "--tunnel",
                f"homebox=127.0.0.1:{HOME_PORT}",
            )
            agent_line = next(line for line in out.splitlines() if line.startswith("permitlisten="))
            machine.ok("sshtun", "systemd", "install", "--role", "agent")
            unit = machine.ok("cat", f"/etc/systemd/system/{AGENT}")
            assert "ExecStart=/opt/sshtun/bin/sshtun up --config /etc/sshtun/agent.toml" in unit
            machine.ok("systemctl", "daemon-reload")

            machine.ok("systemctl", "start", BASTION)  # Type=notify: returns once READY
            # The agent's key is not in the access file yet: refused, exit 5, no retry.
            assert machine.systemctl("start", AGENT).returncode != 0
            machine.wait(
                "the agent failed",
                lambda: machine.show(AGENT, "ActiveState") == "failed",
            )
            status = machine.systemctl("status", AGENT).stdout
            assert "status=5" in status, status
            assert "refused key" in status and "permitlisten" in status, status  # + hint
            assert machine.show(AGENT, "NRestarts") == "0"  # RestartPreventExitStatus=5

            # The admin adds the printed line and the client's, then reloads.
            machine.ok(
                "sh",
                "-c",
                "cat >> /var/lib/sshtun/access",
                stdin=f'{agent_line}\npermitopen="homebox:22" {client_pub}\n',
            )
            assert "reloaded" in machine.ok(
                "sshtun", "reload", "--config", "/etc/sshtun/bastion.toml"
            )
            bastion_pid = machine.show(BASTION, "MainPID")
            machine.ok("systemctl", "restart", AGENT)  # READY once homebox is registered

            cfg = ssh_config(work, client_key, bastion_pub)
            routed = ssh_j(machine, cfg)
            assert routed.returncode == 0 and routed.stdout.strip() == "reached-home", routed.stderr

            # Revoked live: the same bastion process refuses the key from now on.
            out = machine.ok(
                "sshtun",
                "keys",
                "revoke",
                fingerprint(work / "client_key.pub"),
                "--config",
                "/etc/sshtun/bastion.toml",
            )
            assert "bastion reloaded" in out, out
            refused = ssh_j(machine, cfg)
            assert refused.returncode != 0 and "reached-home" not in refused.stdout
            assert "Permission denied" in refused.stderr, refused.stderr
            # The agent's key rotated by root with the agent running (the bastion rewrites
            # its own access file, after root's revoke above locked it); restarted, the
            # unit's credential is the new key: READY. Before the host key rotation: the
            # agent pins the host key inline, so after it a restart rightly exits 4.
            out = machine.ok(
                "sshtun",
                "keys",
                "rotate",
                "--config",
                "/etc/sshtun/agent.toml",
                "--key",
                "/etc/sshtun/agent_key",
            )
            assert "rotated: /etc/sshtun/agent_key is now" in out, out
            restarted = machine.systemctl("restart", AGENT)
            assert restarted.returncode == 0, machine.systemctl("status", AGENT).stdout
            # A host key rotation by root, served live: the new key file in the state
            # directory gets the service's owner, or the reload could not read it.
            out = machine.ok(
                "sshtun", "keys", "rotate", "--host-key", "--config", "/etc/sshtun/bastion.toml"
            )
            assert out.count("SHA256:") >= 2, out  # the bastion now serves both
            machine.ok(
                "sshtun",
                "keys",
                "rotate",
                "--host-key",
                "--finish",
                "--config",
                "/etc/sshtun/bastion.toml",
            )
            assert machine.show(BASTION, "MainPID") == bastion_pid
            assert machine.show(BASTION, "NRestarts") == "0"

            # The sandbox applied: dynamic users, read-only /etc, private /tmp, no /root.
            for unit_name in (BASTION, AGENT):
                uid, mounts = sandbox(machine, unit_name)
                assert uid >= 61184, f"{unit_name} runs as uid {uid}, not a dynamic user"
                etc = mount_at(mounts, "/etc") or mount_at(mounts, "/")
                assert etc is not None and "ro" in etc[1].split(","), etc  # ProtectSystem=
                tmp = mount_at(mounts, "/tmp")  # PrivateTmp=: systemd's own directory
                assert tmp is not None and "systemd-private-" in tmp[0], tmp
                assert mount_at(mounts, "/root") is not None  # ProtectHome=
            files = machine.ok("ls", "-ln", "/var/lib/private/sshtun")
            assert re.search(r"-rw------- 1 6\d+ 6\d+ .* host_key\n", files), files
        finally:
            home.terminate()
            home.wait(timeout=10)


def test_install_refuses_a_layout_the_unit_cannot_read(tmp_path: Path) -> None:
    """`sshtun init` without --systemd keeps the host key beside the config (root's, 0600):
    the install says so instead of writing a unit that fails with Permission denied."""
    sshtun = [sys.executable, "-m", "sshtunnel_mgr"]
    etc = tmp_path / "etc"
    init = [*sshtun, "init", "--role", "bastion", "--dir", str(etc)]
    subprocess.run(init, check=True, capture_output=True, timeout=60)
    units = tmp_path / "units"
    install = [*sshtun, "systemd", "install", "--role", "bastion", "--config"]
    result = subprocess.run(
        [*install, str(etc / "bastion.toml"), "--unit-dir", str(units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result
    assert "/var/lib/sshtun" in result.stderr and "--systemd" in result.stderr
    assert not units.exists()
