"""The agent's side of one SSH connection to a bastion.

``LinkClient`` is the asyncssh client object of every connection a link makes: it tunes
the connection (sshcompat), hears the bastion's drain notice, reports how the connection
ended, and owns the connection's ``ChannelCount`` of routed sessions (``channels_of``).
``known_hosts_arg`` turns the pinned host key into asyncssh's argument; ``describe``
words a connection error for the log and the status.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncssh

from sshtunnel_mgr.agent.forward import ChannelCount
from sshtunnel_mgr.core.config import BastionEndpoint
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.protocol import DRAIN_NOTICE
from sshtunnel_mgr.sshcompat import kexguess
from sshtunnel_mgr.sshcompat.sendpath import tune_connection

ConnCallback = Callable[[asyncssh.SSHClientConnection], None]
LostCallback = Callable[[asyncssh.SSHClientConnection, Exception | None], None]


class LinkClient(asyncssh.SSHClient):
    """One agent connection's callbacks and its routed-session count."""

    def __init__(self, on_drain_notice: ConnCallback, on_lost: LostCallback) -> None:
        self.channels = ChannelCount()
        self._on_drain_notice = on_drain_notice
        self._on_lost = on_lost
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        tune_connection(conn)  # cheaper packets, same wire (sshcompat)
        kexguess.install(conn)  # a guessing server judged by RFC 4253 (sshcompat)

    def debug_msg_received(self, msg: str, lang: str, always_display: bool) -> None:
        if msg == DRAIN_NOTICE and self._conn is not None:
            self._on_drain_notice(self._conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._on_lost(self._conn, exc)


def channels_of(conn: asyncssh.SSHClientConnection) -> ChannelCount:
    """The routed-session count of a connection a link made."""
    owner = conn.get_owner()
    if not isinstance(owner, LinkClient):
        raise TypeError(f"not an agent link's connection: {type(owner).__name__}")
    return owner.channels


def known_hosts_arg(endpoint: BastionEndpoint) -> object:
    """asyncssh's known_hosts argument: the pinned key, or the named known_hosts file."""
    if endpoint.host_key is not None:
        try:
            key = asyncssh.import_public_key(endpoint.host_key)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise ConfigError(
                f"agent.bastions: host_key for {endpoint.address} is not a valid public key: {exc}"
            ) from None
        return ([key], [], [])
    assert endpoint.known_hosts is not None
    if not endpoint.known_hosts.exists():
        raise ConfigError(
            f"known_hosts file {endpoint.known_hosts} does not exist",
            hint="pin the bastion's host key there (ssh-keyscan output, checked)",
        )
    return str(endpoint.known_hosts)


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.DisconnectError):
        return f"{exc.reason} (code {exc.code})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
