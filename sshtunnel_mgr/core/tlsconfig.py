"""A tunnel's TLS settings, checked (pure): ``check_tls``, ``check_agent``.

``tls = "files"`` needs ``cert`` and ``key``; ``tls = "acme"`` gets its certificate from an
ACME CA (``acme_directory``, Let's Encrypt's production directory unless set) for a name
published on port 443, answering HTTP-01 through the bastion's port 80: the agent then also
publishes ``name:80`` itself, as a tunnel with ``tls = "acme-http01"`` (it answers only
``/.well-known/acme-challenge/*`` and redirects the rest to https). ``add_challenge_tunnels``
adds those tunnels to the raw data; a config that already lists them (a dump read back)
stays as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from sshtunnel_mgr.core.names import InvalidName, normalize_name

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
CHALLENGE = "acme-http01"  # the tls value of an acme tunnel's own name:80 publication
ACME_PORT = 443
HTTP_PORT = 80


class TlsSettings(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def tls(self) -> str | None: ...
    @property
    def cert(self) -> Path | None: ...
    @property
    def key(self) -> Path | None: ...
    @property
    def acme_directory(self) -> str | None: ...
    @property
    def acme_email(self) -> str | None: ...
    @property
    def acme_ca_bundle(self) -> Path | None: ...


def check_tls(t: TlsSettings) -> None:
    """``ValueError`` naming what does not fit together."""
    if t.tls == "files" and (t.cert is None or t.key is None):
        raise ValueError('tls = "files" needs cert and key (PEM file paths)')
    if t.tls != "files" and (t.cert is not None or t.key is not None):
        raise ValueError('cert and key are only for tls = "files"')
    acme_keys = (t.acme_directory, t.acme_email, t.acme_ca_bundle)
    if t.tls != "acme" and any(v is not None for v in acme_keys):
        raise ValueError('acme_directory, acme_email and acme_ca_bundle are only for tls = "acme"')
    if t.tls == "acme" and t.port != ACME_PORT:
        raise ValueError(
            f'tls = "acme" needs port = {ACME_PORT}: the CA\'s HTTP-01 check reaches the agent '
            f"through the bastion's port {HTTP_PORT}, which passes challenges only for names "
            f"published on {ACME_PORT}"
        )
    if t.tls == CHALLENGE and t.port != HTTP_PORT:
        raise ValueError(f'tls = "{CHALLENGE}" is the port-{HTTP_PORT} side of an acme tunnel')
    if t.acme_directory is not None and not t.acme_directory.startswith("https://"):
        raise ValueError(f"acme_directory {t.acme_directory!r} must be an https:// URL")
    if t.acme_email is not None:
        local, at, domain = t.acme_email.partition("@")
        if not (local and at and "." in domain) or any(c.isspace() for c in t.acme_email):
            raise ValueError(f"acme_email {t.acme_email!r} is not an email address")


def add_challenge_tunnels(data: object) -> object:
    """Raw ``[agent]`` data with a ``name:80`` tunnel (``tls = "acme-http01"``, same target)
    added for each acme tunnel whose name has none; ``check_agent`` judges the result."""
    if not isinstance(data, dict) or not isinstance(data.get("tunnels"), list):
        return data
    raw = [_fields(t) for t in data["tunnels"]]
    taken = {(_name(t.get("name")), t.get("port", 22)) for t in raw}
    added = []
    for t in raw:
        name = _name(t.get("name"))
        if t.get("tls") == "acme" and name and (name, HTTP_PORT) not in taken:
            taken.add((name, HTTP_PORT))
            target = t.get("target", "127.0.0.1:22")
            added.append({"name": name, "port": HTTP_PORT, "target": target, "tls": CHALLENGE})
    return {**data, "tunnels": [*data["tunnels"], *added]} if added else data


def _fields(tunnel: object) -> dict[str, object]:
    """A tunnel as raw TOML data or an already built model (tests, reloads)."""
    if isinstance(tunnel, dict):
        return tunnel
    return {k: getattr(tunnel, k, None) for k in ("name", "port", "target", "tls")}


def _name(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return normalize_name(value)
    except InvalidName:
        return None  # the tunnel's own validation says what is wrong


def check_agent(tunnels: Sequence[TlsSettings], state_dir: Path | None) -> None:
    """``ValueError`` when a tunnel of the list uses an acme tunnel's name:80 for something
    else, an ``acme-http01`` tunnel has no acme tunnel of its name, or acme has no
    ``state_dir`` to keep its keys in."""
    by_key = {(t.name, t.port): t for t in tunnels}
    acme_names = {t.name for t in tunnels if t.tls == "acme"}
    for name in sorted(acme_names):
        other = by_key.get((name, HTTP_PORT))
        if other is not None and other.tls != CHALLENGE:
            raise ValueError(
                f'tunnel {name}:{HTTP_PORT}: the agent publishes it itself for tls = "acme" '
                f"on {name}:{ACME_PORT} (HTTP-01 challenges, https redirects); drop it"
            )
    for t in tunnels:
        if t.tls == CHALLENGE and t.name not in acme_names:
            raise ValueError(
                f'tunnel {t.name}:{t.port}: tls = "{CHALLENGE}" without an acme tunnel'
            )
    if acme_names and state_dir is None:
        raise ValueError(
            'tls = "acme" needs state_dir in [agent]: the directory that keeps the ACME '
            'account key and certificates (under systemd: state_dir = "$STATE_DIRECTORY")'
        )
