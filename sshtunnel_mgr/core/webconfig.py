"""``[bastion.web]``: which names the bastion serves to browsers, and to whom (pure).

``WebConfig`` is the validated TOML section; ``WebPolicy`` answers the questions the web
front asks from plain data: is this name public (``public_rule``), may this source reach it
(``allowed``), and ``SourceRate`` counts new connections per source and name. A name is
served on the web listeners only if it is public here *and* the agent that published it
may publish it (the access file): nothing is public by default.

```toml
[bastion.web]
https_listen = "0.0.0.0:443"
http_listen = "0.0.0.0:80"
public = ["*.example.com", "admin.example.org"]
[bastion.web.rules."admin.example.org"]
allow_from = ["192.0.2.0/24", "2001:db8::/32"]
max_new_per_source = 10
```

``idle_timeout`` (default 300 s, 0: off) closes a routed connection that moved no byte
either way for that long.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sshtunnel_mgr.core.addrmatch import match_from, parse_pattern
from sshtunnel_mgr.core.addrset import is_ip_literal
from sshtunnel_mgr.core.hostport import split_host_port
from sshtunnel_mgr.core.names import HostPortPattern, InvalidName, match_name

Count = Annotated[int, Field(ge=0, le=1_000_000, strict=True)]
Seconds = Annotated[float, Field(gt=0, le=3600, strict=True)]
IdleSeconds = Annotated[float, Field(ge=0, le=86400, strict=True)]  # 0: off
IDLE_TIMEOUT = 300.0  # seconds (five minutes), 0: off
RATE_WINDOW = 60.0  # max_new_per_source counts new connections in this many seconds


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _listen(value: str | None) -> str | None:
    if value is None:
        return None
    host, _port = split_host_port(value, 0, allow_zero=True)
    if not is_ip_literal(host) and host != "localhost":
        raise ValueError(f"{value!r} must be IP:PORT, like 0.0.0.0:443")
    if ":" not in value.rsplit("]", 1)[-1]:
        raise ValueError(f"{value!r} needs a port, like 0.0.0.0:443")
    return value


def _pattern(value: str) -> str:
    text = value.strip().lower()
    try:
        HostPortPattern.parse(f"{text}:443")
    except InvalidName as exc:
        raise ValueError(f"public name {value!r}: {exc.message}") from None
    return text


class NameRule(_Model):
    """Who may reach one public name or pattern, and how often."""

    allow_from: list[str] | None = None  # address, CIDR or wildcard patterns; None: anyone
    max_new_per_source: Count | None = None  # per minute; None: the section's default

    @field_validator("allow_from")
    @classmethod
    def _from(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            parse_pattern(item)  # ValueError naming it
        return value


class WebConfig(_Model):
    https_listen: str | None = None  # e.g. "0.0.0.0:443"; off unless set
    http_listen: str | None = None  # e.g. "0.0.0.0:80"; off unless set
    public: list[str] = Field(default_factory=list)  # names or patterns; none by default
    rules: dict[str, NameRule] = Field(default_factory=dict)  # keyed by a `public` entry
    # New connections one source may open to one public name (or pattern) per minute.
    max_new_per_source: Count = 120
    # Connections one source may have still sending their ClientHello or request head.
    max_pending_per_source: Annotated[int, Field(ge=1, le=100_000, strict=True)] = 16
    hello_max_bytes: Annotated[int, Field(ge=512, le=65536, strict=True)] = 16384
    hello_timeout: Seconds = 10.0
    head_max_bytes: Annotated[int, Field(ge=256, le=65536, strict=True)] = 16384
    head_timeout: Seconds = 10.0
    # A routed connection (websockets too) that moves no byte either way this long is
    # closed; 0 turns it off.
    idle_timeout: IdleSeconds = IDLE_TIMEOUT

    @field_validator("https_listen", "http_listen")
    @classmethod
    def _listens(cls, value: str | None) -> str | None:
        return _listen(value)

    @field_validator("public")
    @classmethod
    def _public(cls, value: list[str]) -> list[str]:
        return [_pattern(v) for v in value]

    @model_validator(mode="after")
    def _rules_named(self) -> WebConfig:
        for key in self.rules:
            if key.strip().lower() not in self.public:
                raise ValueError(f"rules.{key!r}: not in public (a rule is for a public entry)")
        return self

    @property
    def https_address(self) -> tuple[str, int] | None:
        return None if self.https_listen is None else _address(self.https_listen)

    @property
    def http_address(self) -> tuple[str, int] | None:
        return None if self.http_listen is None else _address(self.http_listen)


def _address(text: str) -> tuple[str, int]:
    return split_host_port(text, 0, allow_zero=True)


@dataclass(frozen=True)
class PublicRule:
    """A ``public`` entry, compiled: what a name that matches it gets."""

    pattern: str
    allow_from: tuple[str, ...] | None
    max_new_per_source: int


class WebPolicy:
    """The compiled ``[bastion.web]`` decisions: plain data in, plain answers out."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        rules = {k.strip().lower(): v for k, v in config.rules.items()}
        compiled = []
        for pattern in config.public:
            rule = rules.get(pattern, NameRule())
            compiled.append(
                PublicRule(
                    pattern,
                    None if rule.allow_from is None else tuple(rule.allow_from),
                    config.max_new_per_source
                    if rule.max_new_per_source is None
                    else rule.max_new_per_source,
                )
            )
        # An exact name wins over a pattern; patterns in the order written.
        exact = [r for r in compiled if "*" not in r.pattern and "?" not in r.pattern]
        self._rules = exact + [r for r in compiled if r not in exact]

    def public_rule(self, name: str) -> PublicRule | None:
        """The rule that makes ``name`` (normalized) public, or None: not public."""
        for rule in self._rules:
            if match_name(rule.pattern, name):
                return rule
        return None

    @staticmethod
    def allowed(rule: PublicRule, source_ip: str) -> bool:
        return rule.allow_from is None or match_from(rule.allow_from, source_ip)


class SourceRate:
    """New connections per (source, rule) in fixed windows; bounded memory."""

    def __init__(
        self,
        window: float = RATE_WINDOW,
        max_keys: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window, self.max_keys, self.clock = window, max_keys, clock
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def admit(self, source_ip: str, rule: PublicRule) -> bool:
        """Count one new connection; False once ``rule.max_new_per_source`` is reached
        (0: no cap)."""
        if rule.max_new_per_source == 0:
            return True
        key = (source_ip, rule.pattern)
        now = self.clock()
        start, count = self._seen.pop(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        while len(self._seen) >= self.max_keys:
            self._seen.popitem(last=False)
        if count >= rule.max_new_per_source:
            self._seen[key] = (start, count)
            return False
        self._seen[key] = (start, count + 1)
        return True
