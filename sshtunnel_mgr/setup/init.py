"""Starter configs and service installation, planned as data and then applied.

``plan_*`` functions are pure: they return the files and directories to create. ``apply``
performs them (atomically, with the right modes) and never overwrites an existing config
or key unless told to; ``--dry-run`` just prints the plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tomli_w

from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.hostport import InvalidAddress, split_host_port
from sshtunnel_mgr.keys import store
from sshtunnel_mgr.keys.store import generate_key
from sshtunnel_mgr.runtime.fsutil import write_atomic

UNIT_NAMES = {"agent": "sshtun-agent.service", "bastion": "sshtun-bastion.service"}
UNIT_BINARY = "/usr/local/bin/sshtun"  # what the units in systemd/ name; replaced on install


@dataclass(frozen=True)
class Action:
    kind: str  # "mkdir" | "write" | "keygen"
    path: Path
    mode: int
    content: bytes = b""
    comment: str = ""
    overwrite: bool = False

    def describe(self) -> str:
        verb = {"mkdir": "create directory", "write": "write", "keygen": "generate key"}[self.kind]
        note = f"  ({self.comment})" if self.comment else ""
        return f"{verb} {self.path} mode {self.mode:04o}{note}"


def parse_tunnel(spec: str) -> dict[str, object]:
    """``name[:port]=host:port`` (the form `sshtun init --tunnel` takes)."""
    left, sep, target = spec.partition("=")
    if not sep or not left or not target:
        raise ConfigError(
            f"--tunnel {spec!r} must be name[:port]=host:port, e.g. homebox=127.0.0.1:22"
        )
    try:
        name, port = split_host_port(left, 22)
    except InvalidAddress as exc:
        raise ConfigError(f"--tunnel {spec!r}: {exc.message}") from None
    return {"name": name, "port": port, "target": target}


SYSTEMD_AGENT_STATE_DIR = Path("/var/lib/sshtun-agent")  # the agent unit's StateDirectory=


def plan_agent_init(
    directory: Path, bastion: str, bastion_key: str, tunnels: list[str], systemd: bool = False
) -> list[Action]:
    key_ref = "$CREDENTIALS_DIRECTORY/agent_key" if systemd else "agent_key"
    config = {
        "agent": {
            "key": key_ref,
            "bastions": [{"address": bastion, "host_key": " ".join(bastion_key.split()[:2])}],
            "tunnels": [parse_tunnel(t) for t in tunnels],
        }
    }
    if systemd:  # where an acme tunnel keeps its account key and certificates
        config["agent"]["state_dir"] = str(SYSTEMD_AGENT_STATE_DIR)
    return [
        Action("mkdir", directory, 0o755),
        Action("keygen", directory / "agent_key", 0o600, comment="the agent's ed25519 key"),
        Action(
            "write",
            directory / "agent.toml",
            0o644,
            tomli_w.dumps(config).encode(),
            "no secrets in it; the key is a separate file",
        ),
    ]


ACCESS_HEADER = """\
# sshtun access file: one key a line, in authorized_keys syntax.
#   permitlisten="homebox:22" ssh-ed25519 AAAA... agent@homebox   (may publish homebox:22)
#   permitopen="homebox:22" ssh-ed25519 AAAA... alice@laptop       (may reach homebox:22)
# Options: patterns (*.home.example.com:22), expiry-time="YYYYMMDD[Z]", from="CIDR,...".
# After editing: `sshtun reload --config bastion.toml` (or SIGHUP); nothing live is dropped.
"""


SYSTEMD_STATE_DIR = Path("/var/lib/sshtun")  # the bastion unit's StateDirectory=
SYSTEMD_AUDIT_LOG = Path("/var/log/sshtun/audit.log")  # in its LogsDirectory=


def plan_bastion_init(
    directory: Path, listen: str, state_dir: Path, audit_log: Path | None = None
) -> list[Action]:
    bastion: dict[str, object] = {
        "listen": [listen],
        "host_key": str(state_dir / "host_key"),
        # In the state directory: the bastion itself rewrites it when an agent rotates
        # its key (sshtun keys rotate), and under systemd only that one is writable.
        "access_file": str(state_dir / "access"),
    }
    if audit_log is not None:
        bastion["audit_log"] = str(audit_log)
    config = {"bastion": bastion}
    return [
        Action("mkdir", directory, 0o755),
        Action("mkdir", state_dir, 0o700, comment="the host key and access file live here"),
        Action("keygen", state_dir / "host_key", 0o600, comment="the bastion's host key"),
        Action("write", directory / "bastion.toml", 0o644, tomli_w.dumps(config).encode()),
        Action(
            "write",
            state_dir / "access",
            0o644,
            ACCESS_HEADER.encode(),
            "public keys only; add one line per agent and client key",
        ),
    ]


def unit_template(role: str) -> str:
    """The unit file shipped with the package (systemd/ in the repository links to it)."""
    return resources.files("sshtunnel_mgr").joinpath("units", UNIT_NAMES[role]).read_text()


DEFAULT_DIR = "/etc/sshtun"


def example_config() -> str:
    """The documented example config shipped with the package."""
    return resources.files("sshtunnel_mgr").joinpath("config.example.toml").read_text()


def render_unit(template: str, role: str, binary: str, config_path: Path) -> str:
    """The shipped unit with this installation's binary and config. The agent's key
    credential is read from beside the config (where ``sshtun init`` writes ``agent_key``),
    so a config outside /etc/sshtun does not leave the unit pointing at a missing key."""
    unit = template.replace(UNIT_BINARY, binary)
    unit = unit.replace(f"{DEFAULT_DIR}/{role}.toml", str(config_path))
    key = credential_source(config_path)
    credentials = f"LoadCredential=agent_key:{key}"
    passphrase = key.with_name(key.name + ".passphrase")
    if passphrase.exists():  # a missing credential file would fail the unit's start
        credentials += f"\nLoadCredential=agent_key.passphrase:{passphrase}"
    return unit.replace(f"LoadCredential=agent_key:{DEFAULT_DIR}/agent_key", credentials)


def credential_source(config_path: Path) -> Path:
    """The file the agent unit hands the service as its ``agent_key`` credential."""
    return store.credential_source(config_path)


def plan_systemd_install(
    role: str, template: str, binary: str, config_path: Path, unit_dir: Path
) -> list[Action]:
    if role not in UNIT_NAMES:
        raise ConfigError(f"--role must be agent or bastion, not {role!r}")
    unit = render_unit(template, role, binary, config_path)
    return [
        Action("mkdir", config_path.parent, 0o755, comment="only if missing; modes are kept"),
        Action(
            "write",
            unit_dir / UNIT_NAMES[role],
            0o644,
            unit.encode(),
            f"ExecStart={binary}",
            overwrite=True,
        ),
    ]


def apply(actions: list[Action]) -> list[str]:
    """Carry out a plan; returns what was done (existing configs and keys are kept)."""
    done = []
    for act in actions:
        if act.kind == "mkdir":
            if act.path.is_dir():  # never loosen (or tighten) a directory the owner set up
                done.append(f"kept existing directory {act.path}")
                continue
            act.path.mkdir(parents=True)
            os.chmod(act.path, act.mode)
            done.append(f"directory {act.path}")
        elif act.path.exists() and not act.overwrite:
            done.append(f"kept existing {act.path}")
        elif act.kind == "keygen":
            info = generate_key(act.path, comment=act.path.name)
            done.append(f"generated {act.path} ({info.fingerprint})")
        else:
            write_atomic(act.path, act.content, act.mode)
            done.append(f"wrote {act.path}")
    return done
