"""The I/O half of ``sshtun doctor``: run ``sshd -T``, stat files, read keys and configs,
and hand plain data to the pure checks. Nothing here decides a level."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sshtunnel_mgr import sshcompat
from sshtunnel_mgr.agent.web.certs import read_cert_info
from sshtunnel_mgr.core import keyformat
from sshtunnel_mgr.core.access import decode_key
from sshtunnel_mgr.core.config import AgentConfig, BastionConfig
from sshtunnel_mgr.core.errors import ConfigError, SshtunError
from sshtunnel_mgr.doctor import accesscheck, acmecheck, certcheck, files, keycheck, sshd
from sshtunnel_mgr.doctor.algorithms import check_policy
from sshtunnel_mgr.doctor.compat import check_shims
from sshtunnel_mgr.doctor.findings import Finding, Level, fail, ok, warn
from sshtunnel_mgr.keys import rotation
from sshtunnel_mgr.keys.inventory import key_bits
from sshtunnel_mgr.runtime import strictmodes
from sshtunnel_mgr.runtime.accessfile import load_access

SSHD_TIMEOUT = 30.0
_PLAIN_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")


@dataclass
class Section:
    title: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, finding: Finding | None) -> None:
        if finding is not None:
            self.findings.append(finding)


def find_sshd() -> str | None:
    found = shutil.which("sshd")
    for candidate in (found, "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class SshdRunError(Exception):
    pass


def run_sshd_t(binary: str, config: Path | None = None, match: str | None = None) -> str:
    """``sshd -T [-f FILE] [-C SPEC]``: the effective config as text (needs root)."""
    argv = [binary, "-T"]
    if config is not None:
        argv += ["-f", str(config)]
    if match is not None:
        argv += ["-C", match]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=SSHD_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SshdRunError(f"{' '.join(argv)}: {exc}") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        raise SshdRunError(f"{' '.join(argv)} failed: {detail[-1] if detail else proc.returncode}")
    return proc.stdout


def stat_path(path: Path) -> files.FileStat:
    try:
        st = path.stat()
    except FileNotFoundError:
        return files.FileStat(str(path), exists=False)
    except OSError as exc:
        return files.FileStat(str(path), exists=False, error=exc.strerror or str(exc))
    return files.FileStat(str(path), True, st.st_mode & 0o7777, st.st_uid, is_dir=path.is_dir())


def access_dir_finding(path: Path, owners: set[int]) -> Finding:
    """The directories above the access file, checked as the bastion checks them on load
    (``strictmodes``); as root, any owner (e.g. systemd's dynamic user) is accepted."""
    found = strictmodes.directory_problem(path, None if strictmodes.running_as_root() else owners)
    if found is None:
        return ok("bastion.access-dir", f"nobody else can change the directories above {path}")
    return fail("bastion.access-dir", f"{found.reason}; the bastion refuses it", found.fix)


def _public_of(path: Path) -> tuple[str, bytes]:
    """A key's type and public blob: from PATH.pub, else from the OpenSSH private key."""
    pub = path.with_name(path.name + ".pub")
    if pub.exists():
        parts = pub.read_text(encoding="utf-8").split()
        if len(parts) < 2:
            raise ValueError(f"{pub} is not a public key line")
        return parts[0], decode_key(parts[0], parts[1])
    return keyformat.public_from_private(path.read_text(encoding="utf-8"))


def host_key_facts(path: Path) -> sshd.HostKeyFacts:
    try:
        key_type, blob = _public_of(path)
        return sshd.HostKeyFacts(str(path), key_type, key_bits(key_type, blob))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return sshd.HostKeyFacts(str(path), "", 0, error=f"cannot read it: {exc}")


def agent_key_facts(path: Path, now: datetime) -> keycheck.KeyFileFacts:
    try:
        key_type, blob = _public_of(path)
        age = (now.timestamp() - path.stat().st_mtime) / 86400
    except FileNotFoundError:
        return keycheck.KeyFileFacts(str(path), error="does not exist")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return keycheck.KeyFileFacts(str(path), error=f"cannot read it: {exc}")
    return keycheck.KeyFileFacts(str(path), key_type, key_bits(key_type, blob), age)


# The home box -----------------------------------------------------------------------------
def _login_users(settings: sshd.SshdSettings) -> list[pwd.struct_passwd]:
    """Whose ``~/.ssh`` to check: the plain names in AllowUsers that exist, else the user
    running doctor."""
    users = []
    for word in settings.words("allowusers"):
        if _PLAIN_USER.fullmatch(word):
            try:
                users.append(pwd.getpwnam(word))
            except KeyError:
                continue
    return users or [pwd.getpwuid(os.geteuid())]


def _authorized_files(settings: sshd.SshdSettings, user: pwd.struct_passwd) -> list[Path]:
    out = []
    for word in settings.words("authorizedkeysfile") or [".ssh/authorized_keys"]:
        if word == "none":
            continue
        text = (
            word.replace("%%", "\0").replace("%h", user.pw_dir).replace("%u", user.pw_name)
        ).replace("\0", "%")
        path = Path(text)
        out.append(path if path.is_absolute() else Path(user.pw_dir) / path)
    return out


def _private_keys(ssh_dir: Path) -> list[Path]:
    """Private keys in ``~/.ssh``: NAME beside NAME.pub, and id_* files."""
    if not ssh_dir.is_dir():
        return []
    found = {p.with_suffix("") for p in ssh_dir.glob("*.pub")}
    found |= {p for p in ssh_dir.glob("id_*") if p.suffix != ".pub"}
    return sorted(p for p in found if p.is_file())


def sshd_section(
    sshd_config: Path | None, binary: str | None, tunnel_port: int | None
) -> tuple[Section, sshd.SshdSettings | None]:
    shown = f"sshd -T{f' -f {sshd_config}' if sshd_config else ''}"
    section = Section(f"sshd ({shown})")
    if binary is None:
        section.add(
            warn(
                "sshd.effective-config",
                "no sshd found: the sshd checks were skipped",
                "install openssh-server, or run doctor where the tunnel's sshd runs",
            )
        )
        return section, None
    try:
        settings = sshd.parse_sshd_t(run_sshd_t(binary, sshd_config))
    except SshdRunError as exc:
        section.add(
            fail(
                "sshd.effective-config",
                str(exc),
                "run doctor as root (sshd -T reads the host keys); check the file with sshd -t",
            )
        )
        return section, None
    section.findings.extend(sshd.check_sshd(settings))
    # A connection through the tunnel comes from 127.0.0.1: what do Match blocks say to it?
    user = _login_users(settings)[0].pw_name
    port = tunnel_port or int(settings.get("port", "22") or 22)
    spec = f"user={user},host=localhost,addr=127.0.0.1,laddr=127.0.0.1,lport={port}"
    try:
        matched = sshd.parse_sshd_t(run_sshd_t(binary, sshd_config, spec))
    except SshdRunError as exc:
        section.add(warn("sshd.match", str(exc), "check the Match blocks with sshd -T -C"))
    else:
        section.findings.extend(sshd.check_match(settings, matched, spec))
    for raw in settings.all("hostkey"):
        path = Path(raw)
        section.add(sshd.check_host_key(host_key_facts(path)))
        section.add(
            files.check_private_key_file(stat_path(path), "sshd.host-key-mode", "host key", {0})
        )
    if not settings.all("hostkey"):
        section.findings.extend(sshd.check_host_keys([]))
    return section, settings


def user_files_section(settings: sshd.SshdSettings | None) -> Section:
    section = Section("login files")
    users = _login_users(settings) if settings is not None else [pwd.getpwuid(os.geteuid())]
    plain = settings or sshd.SshdSettings({})
    for user in users:
        owners = {user.pw_uid, 0}
        home = Path(user.pw_dir)
        section.add(files.check_home_dir(stat_path(home), owners))
        ssh_dir = home / ".ssh"
        section.add(files.check_ssh_dir(stat_path(ssh_dir), owners))
        for path in _authorized_files(plain, user):
            section.add(files.check_authorized_keys(stat_path(path), owners))
        for key in _private_keys(ssh_dir):
            section.add(
                files.check_private_key_file(
                    stat_path(key), "files.private-key", f"{user.pw_name}'s private key", owners
                )
            )
    return section


def agent_section(agent: AgentConfig, config_path: Path | None, now: datetime) -> Section:
    section = Section("sshtun agent")
    owners = {os.geteuid(), 0}
    if config_path is not None:
        section.add(files.check_config_file(stat_path(config_path), "agent.config-mode", "config"))
    # Under systemd the config names the unit's copy of the key: check its source.
    key = rotation.rotated_key(agent.key, config_path) if config_path else agent.key
    label = "agent key" if key == agent.key else "agent key (the unit's credential source)"
    section.add(files.check_private_key_file(stat_path(key), "agent.key-mode", label, owners))
    facts = agent_key_facts(key, now)
    section.add(keycheck.check_key_strength(facts))
    section.add(keycheck.check_key_age(facts))
    section.add(rotation_finding(key, config_path, key != agent.key))
    section.add(shims_finding("agent"))
    for tunnel in agent.tunnels:  # tls = "files": the certificate's expiry, the key's mode
        if tunnel.cert is not None and tunnel.key is not None:
            label = f"{tunnel.name}:{tunnel.port}"
            section.add(
                certcheck.check_certificate(cert_facts(label, tunnel.cert), now.timestamp())
            )
            section.add(
                files.check_private_key_file(
                    stat_path(tunnel.key), "agent.tls-key-mode", f"{label} TLS key", owners
                )
            )
        if tunnel.tls == "acme" and agent.state_dir is not None:  # saved by the agent
            found = acmecheck.findings(tunnel, agent.state_dir, now.timestamp(), stat_path, owners)
            section.findings.extend(found)
    for endpoint in agent.bastions:
        if endpoint.host_key is not None:
            section.add(keycheck.check_pin_inline(endpoint.address, endpoint.host_key))
            continue
        assert endpoint.known_hosts is not None
        path = endpoint.known_hosts
        try:
            text: str | None = path.read_text(encoding="utf-8")
            error = ""
        except FileNotFoundError:
            text, error = None, "does not exist"
        except (OSError, UnicodeDecodeError) as exc:
            text, error = None, f"cannot read it: {exc}"
        section.findings.extend(
            keycheck.check_pin_known_hosts(
                endpoint.address, endpoint.host, endpoint.port, str(path), text, error
            )
        )
        section.add(
            files.check_config_file(stat_path(path), "agent.known-hosts-mode", "known_hosts")
        )
    return section


def cert_facts(label: str, path: Path) -> certcheck.CertFacts:
    try:
        info = read_cert_info(path)
    except (OSError, ValueError) as exc:
        return certcheck.CertFacts(label, str(path), error=str(exc))
    return certcheck.CertFacts(label, str(path), info.not_after)


def shims_finding(role: str) -> Finding:
    """The asyncssh shims ``role`` uses, checked on the asyncssh installed here."""
    version = sshcompat.asyncssh_version()
    tested = sshcompat.in_tested_range(version)
    states = sshcompat.active_shims(role)
    return check_shims(role, version, tested, sshcompat.ASYNCSSH_RANGE, states)


def rotation_finding(key: Path, config_path: Path | None, credential: bool = False) -> Finding:
    """A half-finished ``sshtun keys rotate``, read from its record beside the key (for a
    systemd ``credential``, beside its source, which the command is given with --key)."""
    try:
        state = rotation.load_state(key)
        where = rotation.phase(state, rotation.file_fingerprint(key)) if state else ""
    except SshtunError as exc:
        return fail("agent.key-rotation", exc.message, exc.hint or "see sshtun keys rotate")
    command = rotation.finish_command(
        config_path or Path("AGENT.toml"), key if credential else None
    )
    described = rotation.describe(state) if state else None
    looked = f" (no record beside {key}, the unit's credential source)" if credential else ""
    return keycheck.check_rotation(described, command, where == "before-swap", looked)


def _tunnel_sshd_port(agent: AgentConfig | None) -> int | None:
    """The local port a tunnel reaches sshd on (the first loopback target), if any."""
    if agent is None:
        return None
    for tunnel in agent.tunnels:
        if sshd.is_loopback(tunnel.target_host):
            return tunnel.target_port
    return None


def home_checks(
    agent: AgentConfig | None,
    config_path: Path | None,
    sshd_config: Path | None,
    now: datetime,
    sshd_binary: str | None = None,
) -> list[Section]:
    binary = sshd_binary or find_sshd()
    section, settings = sshd_section(sshd_config, binary, _tunnel_sshd_port(agent))
    sections = [section, user_files_section(settings)]
    if agent is not None:
        sections.append(agent_section(agent, config_path, now))
    return sections


# The bastion ------------------------------------------------------------------------------
def bastion_checks(
    bastion: BastionConfig, config_path: Path | None, now: datetime
) -> list[Section]:
    section = Section("sshtun bastion")
    owners = {os.geteuid(), 0}
    if config_path is not None:
        section.add(
            files.check_config_file(stat_path(config_path), "bastion.config-mode", "config")
        )
    section.add(files.check_access_file_mode(stat_path(bastion.access_file), owners))
    section.add(access_dir_finding(bastion.access_file, owners))
    access = Section(f"access file {bastion.access_file}")
    try:
        policy = load_access(bastion.access_file, strict=False)  # modes: reported above
    except ConfigError as exc:
        access.add(fail("bastion.access-file", exc.message, exc.hint or "fix the access file"))
    else:
        access.findings.extend(accesscheck.check_entries(policy.entries, now, policy.source))
    host_key = bastion.host_key
    stat = stat_path(host_key)
    if not stat.exists and not stat.error:
        section.add(
            fail(
                "bastion.host-key",
                f"host key {host_key} does not exist: the bastion will not start",
                f"create it (then pin its .pub in agents): sshtun keys gen {host_key}",
            )
        )
    else:
        section.add(files.check_private_key_file(stat, "bastion.host-key-mode", "host key", owners))
        facts = host_key_facts(host_key)
        finding = sshd.check_host_key(facts, "bastion.host-key")
        if finding.level is Level.OK and facts.key_type != "ssh-ed25519":
            finding = fail(
                "bastion.host-key",
                f"{finding.message}: agents accept only ssh-ed25519 host keys",
                f"make an ed25519 host key (sshtun keys gen {host_key}) and pin its "
                "public key in every agent",
            )
        section.add(finding)
    section.add(shims_finding("bastion"))
    algorithms = Section("algorithm policy (sshtunnel_mgr/core/policy.py)", check_policy())
    return [section, access, algorithms]
