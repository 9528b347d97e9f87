"""Read the host key of every hop a laptop's ``ssh -J bastion NAME`` crosses, each one
verified: the bastion's against the key (or fingerprint) its admin gave the user, the home
boxes' read from their own SSH servers *through* the bastion connection so pinned. Used by
``sshtun ssh-config`` on the laptop; never trusts a key on first use, never prints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from sshtunnel_mgr.core import policy
from sshtunnel_mgr.core.errors import HostKeyError, KeyFileError
from sshtunnel_mgr.keys.store import key_fingerprint
from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.setup.sshconfig import Unpinned

log = logging.getLogger(__name__)


@dataclass
class Pins:
    bastion_keys: list[str] = field(default_factory=list)  # "type base64"
    bastion_verified: bool = False  # it proved it holds the key in a key exchange just now
    home_keys: dict[tuple[str, int], str] = field(default_factory=dict)
    unpinned: list[Unpinned] = field(default_factory=list)


def _line(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(getattr(exc, "reason", "") or exc) or type(exc).__name__


@dataclass(frozen=True)
class Bastion:
    host: str
    port: int
    user: str
    keys: Sequence[str] = ()  # pinned "type base64" keys, or
    fingerprint: str | None = None  # a SHA256:... fingerprint to check the served key against

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _load_identity(identity: Path | None) -> Sequence[asyncssh.SSHKey] | tuple[()]:
    if identity is None:
        return ()  # asyncssh's defaults: ssh-agent, then ~/.ssh/id_*
    try:
        return [asyncssh.read_private_key(identity)]
    except (OSError, asyncssh.KeyImportError) as exc:
        raise KeyFileError(
            f"cannot use the key {identity}: {exc}",
            hint="a key with a passphrase: load it with ssh-add and leave out --identity",
        ) from None


async def pin_hops(
    bastion: Bastion,
    names: Sequence[tuple[str, int]],
    identity: Path | None = None,
    timeout: float = 10.0,
) -> Pins:
    """Pins for the bastion and each name. Raises ``HostKeyError`` when the bastion serves
    another key than the one given; any hop that cannot be read is in ``Pins.unpinned``."""
    pins = Pins(bastion_keys=[" ".join(k.split()[:2]) for k in bastion.keys])
    client_keys = _load_identity(identity)
    down = f"the bastion {bastion.address}"
    fix_down = f"check that the bastion runs and {bastion.address} is its address; rerun"
    if not pins.bastion_keys:
        try:
            served = await asyncio.wait_for(
                asyncssh.get_server_host_key(
                    bastion.host,
                    bastion.port,
                    config=None,
                    kex_algs=list(policy.KEX_ALGS),
                    server_host_key_algs=list(policy.HOST_KEY_ALGS),
                ),
                timeout,
            )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            pins.unpinned.append(Unpinned(down, f"unreachable ({_why(exc)})", fix_down))
            return _all_unpinned(pins, names, "the bastion is unreachable", fix_down)
        if served is None or key_fingerprint(served) != bastion.fingerprint:
            got = key_fingerprint(served) if served is not None else "no key"
            raise HostKeyError(
                f"the bastion {bastion.address} serves the host key {got}, "
                f"not {bastion.fingerprint}: not pinned, nothing written",
                hint="ask the bastion's admin for its key; this may be someone else's server",
            )
        pins.bastion_keys = [_line(served)]
    trusted = [asyncssh.import_public_key(k) for k in pins.bastion_keys]
    try:
        conn = await asyncssh.connect(
            bastion.host,
            bastion.port,
            username=bastion.user,
            known_hosts=(trusted, [], []),
            client_keys=client_keys,
            connect_timeout=timeout,
            login_timeout=timeout,
            **policy.key_only_login(),
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyError(
            f"the bastion {bastion.address} does not hold the pinned host key ({exc.reason})",
            hint="ask the bastion's admin for its current key; this may be someone else's server",
        ) from None
    except asyncssh.PermissionDenied as exc:
        pins.bastion_verified = True  # the key exchange ran before authentication
        fix = "ask the bastion's admin to add your public key to its access file"
        return _all_unpinned(pins, names, f"the bastion refused your key ({exc.reason})", fix)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        pins.unpinned.append(Unpinned(down, f"unreachable ({_why(exc)})", fix_down))
        return _all_unpinned(pins, names, "the bastion is unreachable", fix_down)
    async with conn:
        pins.bastion_verified = True
        served = conn.get_server_host_key()
        if served is not None:
            pins.bastion_keys = [_line(served)]
        results = await asyncio.gather(*(_home_key(conn, n, p, timeout) for n, p in names))
    for (name, port), result in zip(names, results, strict=True):
        if isinstance(result, Unpinned):
            pins.unpinned.append(result)
        else:
            pins.home_keys[(name, port)] = result
    return pins


def _all_unpinned(pins: Pins, names: Sequence[tuple[str, int]], reason: str, fix: str) -> Pins:
    pins.unpinned += [Unpinned(f"{n}:{p}", reason, fix) for n, p in names]
    return pins


async def _home_key(
    conn: asyncssh.SSHClientConnection, name: str, port: int, timeout: float
) -> str | Unpinned:
    """The host key of NAME:PORT, read from the home box's SSH server through the bastion."""
    hop = f"{name}:{port}"
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(
                name,
                port,
                tunnel=conn,
                config=None,
                kex_algs=list(policy.KEX_ALGS),
                server_host_key_algs=list(policy.PROBE_HOST_KEY_ALGS),
            ),
            timeout,
        )
    except asyncssh.ChannelOpenError as exc:
        event(log, logging.DEBUG, "hop not pinned", hop=hop, error=exc.reason)
        return Unpinned(
            hop,
            f"the bastion does not route it ({exc.reason})",
            "check the name, that its agent is up (sshtun status on the home box), and "
            "that your key may reach it; rerun",
        )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        event(log, logging.DEBUG, "hop not pinned", hop=hop, error=_why(exc))
        return Unpinned(
            hop,
            f"routed, but no SSH host key came back ({_why(exc)})",
            "check that the home box's SSH server is up behind its agent; rerun",
        )
    if key is None:
        return Unpinned(hop, "its SSH server showed no host key", "use a host key; rerun")
    event(log, logging.DEBUG, "hop pinned", hop=hop, key=key_fingerprint(key))
    return _line(key)
