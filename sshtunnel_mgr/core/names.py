"""Rules for route names and name patterns (pure, no I/O).

A route name is a DNS-like host name: labels of letters, digits and hyphens, separated by
dots, compared case-insensitively. IP addresses, wildcards and local names such as
``localhost`` are never route names: a bastion routes by names it was given, nothing else.
A pattern (in ``permitlisten``/``permitopen``) may use ``*`` and ``?`` inside a label;
``*`` never crosses a dot, so ``*.home.example.com`` matches ``a.home.example.com`` but not
``a.b.home.example.com``. A lone ``*`` matches any single name of any depth (it is the
explicit "everything" an administrator writes on purpose).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass

from sshtunnel_mgr.core.errors import SshtunError
from sshtunnel_mgr.core.hostport import InvalidAddress, split_name_port

MAX_NAME_LEN = 253
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_PATTERN_LABEL_RE = re.compile(r"[a-z0-9*?-]{1,63}")
RESERVED_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "broadcasthost"})


class InvalidName(SshtunError, ValueError):
    """A string is not a valid route name or pattern (the reason is the message)."""


def is_ip_address(text: str) -> bool:
    """True for anything that parses as an IPv4/IPv6 address (with or without brackets)."""
    candidate = text.strip("[]")
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        # Shorthand IPv4 forms that resolvers still accept, e.g. "127.1", "10.0".
        return bool(re.fullmatch(r"[0-9]+(\.[0-9]+){0,3}", candidate))
    return True


def normalize_name(text: str) -> str:
    """Return the canonical (lower-case) form of a route name, or raise InvalidName."""
    if not text:
        raise InvalidName("name is empty")
    if not text.isascii():
        raise InvalidName(f"{text!r} is not ASCII (write international names in punycode)")
    name = text.lower()
    if name.endswith(".") and len(name) > 1:
        name = name[:-1]  # one trailing dot: the fully qualified spelling
    if len(name) > MAX_NAME_LEN:
        raise InvalidName(f"name is longer than {MAX_NAME_LEN} characters")
    if is_ip_address(name) or ":" in name:
        raise InvalidName(f"{text!r} is an IP address, not a name")
    if any(ch in name for ch in "*?"):
        raise InvalidName(f"{text!r} is a wildcard, not a name")
    if name in RESERVED_NAMES or name.endswith(".localhost"):
        raise InvalidName(f"{text!r} is a local name and cannot be routed")
    for label in name.split("."):
        if not _LABEL_RE.fullmatch(label):
            raise InvalidName(
                f"{text!r} is not a valid name (labels are letters, digits and inner hyphens)"
            )
    return name


def is_valid_name(text: str) -> bool:
    try:
        normalize_name(text)
    except InvalidName:
        return False
    return True


@dataclass(frozen=True)
class HostPortPattern:
    """A ``name:port`` pattern from ``permitlisten``/``permitopen``; port ``None`` means any."""

    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> HostPortPattern:
        try:
            host, port = split_name_port(text)
        except InvalidAddress as exc:
            raise InvalidName(exc.message) from None
        host = host.lower()
        if host != "*":
            for label in host.split("."):
                if not _PATTERN_LABEL_RE.fullmatch(label):
                    raise InvalidName(f"{text!r}: label {label!r} is not a valid name pattern")
        return cls(host, port)

    def matches(self, name: str, port: int) -> bool:
        """Whether an already-normalized ``name`` and ``port`` fall under this pattern."""
        if self.port is not None and self.port != port:
            return False
        return match_name(self.host, name)

    @property
    def is_catch_all(self) -> bool:
        return self.host == "*"

    def __str__(self) -> str:
        return f"{self.host}:{'*' if self.port is None else self.port}"


def match_name(pattern: str, name: str) -> bool:
    """Match a normalized name against a pattern, label by label."""
    if pattern == "*":
        return True
    p_labels = pattern.split(".")
    n_labels = name.split(".")
    if len(p_labels) != len(n_labels):
        return False
    return all(fnmatch.fnmatchcase(n, p) for p, n in zip(p_labels, n_labels, strict=True))
