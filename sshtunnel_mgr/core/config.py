"""Config: one TOML file, validated once at start-up into typed, frozen models.

``parse_config(text, source, base_dir)`` is pure; ``load_config(path)`` reads the file.
Relative paths in the file are relative to the file's own directory, never the cwd.
Errors are ``ConfigError`` naming the file and the field path (``agent.tunnels[0].port``).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sshtunnel_mgr.core import configerrors, tlsconfig
from sshtunnel_mgr.core.access import KEY_TYPES, decode_key
from sshtunnel_mgr.core.addrset import is_ip_literal
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.hostport import join_host_port
from sshtunnel_mgr.core.hostport import split_host_port as split_host_port  # its old home
from sshtunnel_mgr.core.names import InvalidName, normalize_name
from sshtunnel_mgr.core.startups import MaxStartups, parse_max_startups
from sshtunnel_mgr.core.webconfig import IDLE_TIMEOUT, IdleSeconds, WebConfig

Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
Seconds = Annotated[float, Field(gt=0, le=86400, strict=True)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = Path(os.path.expandvars(value)).expanduser()  # e.g. $CREDENTIALS_DIRECTORY/key
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


def _metrics_address(value: str) -> str:
    """``PORT`` (on 127.0.0.1) or ``IP:PORT`` for the Prometheus endpoint."""
    text = f"127.0.0.1:{value}" if value.isascii() and value.isdigit() else value
    host, _port = split_host_port(text, 0, allow_zero=True)
    if not is_ip_literal(host):
        raise ValueError(f"metrics_listen {value!r} must be PORT or IP:PORT")
    return text


class BackoffConfig(_Model):
    base: Seconds = 1.0
    cap: Seconds = 60.0
    healthy_after: Seconds = 30.0

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> BackoffConfig:
        if self.cap < self.base:
            raise ValueError("cap must be >= base")
        return self


class TunnelConfig(_Model):
    name: str
    port: Port = 22
    target: str = "127.0.0.1:22"
    # Web (issue 11, agent/web/): end TLS here ("files": cert + key; "acme": a certificate
    # from an ACME CA, core/tlsconfig.py), or pass it on; and tell the target the client's
    # address with a PROXY header.
    tls: Literal["passthrough", "files", "acme", "acme-http01"] | None = None
    cert: Path | None = None
    key: Path | None = None
    acme_directory: str | None = None  # Let's Encrypt's production directory unless set
    acme_email: str | None = None
    acme_ca_bundle: Path | None = None  # CAs to trust for the directory's own HTTPS
    proxy_protocol: Literal["v1", "v2"] | None = None
    idle_timeout: IdleSeconds = IDLE_TIMEOUT  # a web session idle this long closes; 0: never

    @field_validator("cert", "key", "acme_ca_bundle")
    @classmethod
    def _tls_paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _tls(self) -> TunnelConfig:
        tlsconfig.check_tls(self)
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return normalize_name(value)
        except InvalidName as exc:
            raise ValueError(exc.message) from None

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        host, port = split_host_port(value, 0)
        if port == 0:
            raise ValueError(f"target {value!r} needs a port, like 127.0.0.1:22")
        return join_host_port(host, port)

    @property
    def target_host(self) -> str:
        return split_host_port(self.target, 0)[0]

    @property
    def target_port(self) -> int:
        return split_host_port(self.target, 0)[1]


class BastionEndpoint(_Model):
    address: str
    user: str = "sshtun"
    host_key: str | None = None  # a pinned public key line: "ssh-ed25519 AAAA..."
    known_hosts: Path | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        split_host_port(value, 22)
        return value

    @field_validator("known_hosts")
    @classmethod
    def _kh(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = value.split()
        if len(parts) < 2 or parts[0] not in KEY_TYPES:
            raise ValueError("host_key must be a public key line like 'ssh-ed25519 AAAA...'")
        try:
            decode_key(parts[0], parts[1])
        except ValueError as exc:
            raise ValueError(f"host_key: {exc}") from None
        return value

    @model_validator(mode="after")
    def _pinned(self) -> BastionEndpoint:
        if (self.host_key is None) == (self.known_hosts is None):
            raise ValueError(
                "set exactly one of host_key (the pinned key) or known_hosts (a file); "
                "sshtun never trusts a bastion on first use"
            )
        return self

    @property
    def host(self) -> str:
        return split_host_port(self.address, 22)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.address, 22)[1]


class AgentConfig(_Model):
    key: Path
    bastions: list[BastionEndpoint] = Field(min_length=1)
    tunnels: list[TunnelConfig] = Field(min_length=1)
    keepalive_interval: Seconds = 15.0
    keepalive_count_max: Annotated[int, Field(ge=1, le=100, strict=True)] = 3
    connect_timeout: Seconds = 15.0
    probe_interval: Seconds = 30.0
    # A bastion given by name gets one link per address it resolves to (A and AAAA),
    # resolved again this often; links follow the records (agent/resolve.py).
    resolve_interval: Seconds = 60.0
    backoff: BackoffConfig = BackoffConfig()
    admin_socket: Path | None = None
    metrics_listen: str | None = None
    # Where tls = "acme" keeps its account key and certificates (0700; under systemd
    # "$STATE_DIRECTORY"); needed only by acme tunnels.
    state_dir: Path | None = None

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, value: str | None) -> str | None:
        return None if value is None else _metrics_address(value)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return (
            None
            if self.metrics_listen is None
            else split_host_port(self.metrics_listen, 0, allow_zero=True)
        )

    @field_validator("key")
    @classmethod
    def _key(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @model_validator(mode="before")
    @classmethod
    def _acme_http01(cls, data: object) -> object:
        return tlsconfig.add_challenge_tunnels(data)  # an acme tunnel's name:80

    @field_validator("admin_socket", "state_dir")
    @classmethod
    def _admin(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _unique(self) -> AgentConfig:
        tlsconfig.check_agent(self.tunnels, self.state_dir)
        seen: set[tuple[str, int]] = set()
        for t in self.tunnels:
            if (t.name, t.port) in seen:
                raise ValueError(f"tunnel {t.name}:{t.port} is listed twice")
            seen.add((t.name, t.port))
        return self


class LimitsConfig(_Model):
    login_timeout: Seconds = 20.0
    max_auth_tries: Annotated[int, Field(ge=1, le=100, strict=True)] = 6
    max_channels_per_connection: Annotated[int, Field(ge=1, le=10000, strict=True)] = 64
    max_connections: Annotated[int, Field(ge=1, le=1_000_000, strict=True)] = 10000
    # Abuse resistance: per-source cool-down after failed logins (0 = off), per-key caps.
    max_auth_failures_per_source: Annotated[int, Field(ge=0, le=10000, strict=True)] = 10
    penalty_seconds: Seconds = 300.0
    penalty_exempt: list[str] = Field(default_factory=list)
    max_connections_per_key: Annotated[int, Field(ge=1, le=1_000_000, strict=True)] = 128
    max_channels_per_key: Annotated[int, Field(ge=1, le=1_000_000, strict=True)] = 256
    # Seconds the agent has to answer the forwarded-tcpip open for a client's channel;
    # then the client is refused and the agent's channel is closed if it ever opens.
    open_timeout: Seconds = 20.0
    # Channel opens one agent connection may leave unanswered per name (clients that gave up
    # included); beyond that, opens to it are refused until it answers some.
    max_unanswered_opens: Annotated[int, Field(ge=1, le=100_000, strict=True)] = 256
    # Connections one source may have open before logging in (like OpenSSH's MaxStartups,
    # per address): a flood of key exchanges (DHEat) costs the bastion little. 0 = off.
    max_startups_per_source: Annotated[int, Field(ge=0, le=100_000, strict=True)] = 10
    # Beyond it a connection waits (no banner, nothing read) for one of its source's slots,
    # up to login_timeout, in bounded queues; beyond those it is dropped. In total, OpenSSH's
    # MaxStartups start:rate:full random early drop (bastion/admission.py).
    startup_queue_per_source: Annotated[int, Field(ge=0, le=100_000, strict=True)] = 100
    startup_queue_total: Annotated[int, Field(ge=0, le=1_000_000, strict=True)] = 1000
    max_startups: str = "50:30:200"
    # Session channels one connection may hold at once (the only session a bastion serves
    # is a key request: sshtun-enrol/-unenrol/-finish/-hostkey), and how long one may take.
    max_sessions_per_connection: Annotated[int, Field(ge=1, le=1000, strict=True)] = 4
    key_request_timeout: Seconds = 30.0

    @field_validator("max_startups")
    @classmethod
    def _max_startups(cls, value: str) -> str:
        parse_max_startups(value)  # ValueError: start:rate:full, with what is wrong
        return value

    @property
    def max_startups_spec(self) -> MaxStartups:
        return parse_max_startups(self.max_startups)

    @field_validator("penalty_exempt")
    @classmethod
    def _exempt(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network like 192.0.2.0/24") from None
            if ipaddress.ip_interface(item).ip != net.network_address:
                raise ValueError(f"{item!r} has host bits set; write {net}")
        return value


class BastionConfig(_Model):
    listen: list[str] = Field(default_factory=lambda: ["0.0.0.0:2222"], min_length=1)
    host_key: Path
    access_file: Path
    keepalive_interval: Seconds = 15.0
    keepalive_count_max: Annotated[int, Field(ge=1, le=100, strict=True)] = 3
    limits: LimitsConfig = LimitsConfig()
    admin_socket: Path | None = None
    # JSON-lines audit log (publish, routed connections, refusals); off unless set.
    audit_log: Path | None = None
    shutdown_grace: Annotated[float, Field(ge=0, le=3600, strict=True)] = 20.0
    metrics_listen: str | None = None
    # Key rotation: may an agent enrol its own successor key (sshtun keys rotate)? The old
    # key then expires after rotation_grace seconds unless the agent retires it sooner.
    allow_key_rotation: Annotated[bool, Field(strict=True)] = True
    rotation_grace: Annotated[float, Field(ge=60, le=90 * 86400, strict=True)] = 86400.0
    # [bastion.web]: HTTPS by SNI and HTTP by Host, off unless a listener is set.
    web: WebConfig = WebConfig()
    # Worker processes behind the listening addresses (bastion/workers); 1: one process.
    workers: Annotated[int, Field(ge=1, le=256, strict=True)] | Literal["auto"] = 1

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, value: str | None) -> str | None:
        return None if value is None else _metrics_address(value)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return (
            None
            if self.metrics_listen is None
            else split_host_port(self.metrics_listen, 0, allow_zero=True)
        )

    @field_validator("host_key", "access_file")
    @classmethod
    def _paths(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @field_validator("admin_socket", "audit_log")
    @classmethod
    def _admin(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        for item in value:
            host, _port = split_host_port(item, 22, allow_zero=True)
            if not is_ip_literal(host) and host != "localhost":
                raise ValueError(f"listen address {item!r} must be an IP address and port")
        return value

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        return [split_host_port(item, 22, allow_zero=True) for item in self.listen]

    @property
    def worker_count(self) -> int:
        """``workers`` as a number ("auto": the cores this process may run on)."""
        return len(os.sched_getaffinity(0)) if self.workers == "auto" else self.workers


class Config(_Model):
    agent: AgentConfig | None = None
    bastion: BastionConfig | None = None
    source: str = Field(default="<config>", exclude=True)

    def require_agent(self) -> AgentConfig:
        if self.agent is None:
            raise ConfigError(
                f"{self.source}: no [agent] section",
                hint="see config.example.toml for the [agent] keys",
            )
        return self.agent

    def require_bastion(self) -> BastionConfig:
        if self.bastion is None:
            raise ConfigError(
                f"{self.source}: no [bastion] section",
                hint="see config.example.toml for the [bastion] keys",
            )
        return self.bastion


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    if "source" in raw:
        raise ConfigError(
            f"{source}: source: unknown key (not one sshtun knows; check the spelling)"
        )
    try:
        return Config.model_validate({**raw, "source": source}, context={"base_dir": base_dir})
    except ValidationError as exc:
        found = configerrors.problems(exc.errors(), text, source, Config)
        message = found[0] if len(found) == 1 else "\n  ".join([f"{len(found)} problems:", *found])
        raise ConfigError(
            message, hint="`sshtun example-config` prints every key, documented"
        ) from None


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist", hint="start from config.example.toml"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return parse_config(text, str(path), path.resolve().parent)
