"""``host:port``, parsed in one place (pure).

Two spellings, because two kinds of thing have ports:

- an **address** (a bastion, a listen address, a tunnel's target, the metrics endpoint):
  ``host``, ``host:port``, ``[v6]:port``, ``[v6]`` or a bare IPv6 address (``::1``: more
  than one colon and no brackets is all host), the port optional with a default;
  ``split_host_port``, written back by ``join_host_port``;
- a **name with a port** (``permitopen="homebox:22"``, the agent's ``name:port`` labels): a
  route name never holds a colon or brackets, so the last colon splits and the port is
  required (``*``, any port, where the caller allows it); ``split_name_port``.

A port is ASCII decimal digits in 1-65535 (0 where a caller binds "any free port").
Errors are ``InvalidAddress`` (a ``ValueError``) that quote the text whole.
"""

from __future__ import annotations

from sshtunnel_mgr.core.errors import SshtunError


class InvalidAddress(SshtunError, ValueError):
    """A ``host:port`` (or a port) that does not parse; the message says why."""


def parse_port(text: str, *, allow_zero: bool = False, allow_any: bool = False) -> int | None:
    """``22`` to 22; ``*`` to None when ``allow_any``. Only ASCII digits (no sign, no
    space, no other script's digits), in range."""
    if allow_any and text == "*":
        return None
    low = 0 if allow_zero else 1
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= 65535:
        raise InvalidAddress(f"port must be {low}-65535" + (" or *" if allow_any else ""))
    return int(text)


def _split(text: str) -> tuple[str, str]:
    """(host, port text or "") of an address, brackets taken off."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return host, port_text
    return text, ""  # no colon, or a bare IPv6 address


def split_host_port(text: str, default_port: int, allow_zero: bool = False) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port``, ``[v6]`` or ``v6`` to (host, port)."""
    text = text.strip()
    host, port_text = _split(text)
    if not host:
        raise InvalidAddress(f"{text!r} has no host")
    if not port_text:
        return host, default_port
    try:
        port = parse_port(port_text, allow_zero=allow_zero)
    except InvalidAddress as exc:
        raise InvalidAddress(f"{text!r}: {exc.message}") from None
    assert port is not None
    return host, port


def split_name_port(text: str, allow_any: bool = True) -> tuple[str, int | None]:
    """``name:port`` (port required; ``*`` is None, any port, when ``allow_any``). The name
    is returned as written: the caller checks it is a name."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        any_ = " (port may be *)" if allow_any else ""
        raise InvalidAddress(f"{text!r} must be name:port{any_}")
    try:
        port = parse_port(port_text, allow_any=allow_any)
    except InvalidAddress as exc:
        raise InvalidAddress(f"{text!r}: {exc.message}") from None
    return host, port


def join_host_port(host: str, port: int) -> str:
    """The address back as text: ``host:port``, or ``[v6]:port`` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
