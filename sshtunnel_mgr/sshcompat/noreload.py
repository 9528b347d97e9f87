"""Keep a server connection's options through login (shim ``noreload``).

At the start of user authentication asyncssh re-evaluates its OpenSSH-style server config
(``SSHServerConnection.reload_config``) so that ``Match`` blocks can see the user and the
client's address: it builds a whole new ``SSHServerConnectionOptions`` in an executor
thread (host keys wrapped anew, every algorithm list validated again, a config object
chained to the last one) and keeps it for the connection's life. The bastion loads no
config file and looks up no client names, so the new options equal the old ones: every
login paid a thread hop for nothing, and every idle agent kept a second options object
(about 4 KiB each: measured with tracemalloc over 1,000 idle agents). On a connection whose
options loaded no config file, with reverse lookups off, ``reload_config`` becomes a no-op
(an instance attribute; the class and other asyncssh users are untouched).

asyncssh internals used: ``SSHServerConnection.reload_config()`` (awaited by the userauth
code), the connection's ``_options.config.loaded`` and ``_rdns_lookup``. If they are not
as expected the connection keeps asyncssh's stock behaviour (options re-derived at login)
and ``sshcompat.stepped_aside`` logs it once.
"""

from __future__ import annotations

import inspect

import asyncssh

from sshtunnel_mgr.sshcompat import Shim, checked, missing, parameters, stepped_aside

_ATTR = "reload_config"


def check() -> str:
    found = getattr(asyncssh.SSHServerConnection, _ATTR, None)
    if found is None or not inspect.iscoroutinefunction(found):
        return f"asyncssh's SSHServerConnection has no coroutine {_ATTR}"
    if parameters(found) != ["self"]:
        return f"asyncssh's {_ATTR} takes arguments"
    return missing(asyncssh.SSHServerConnection, "_options", "_rdns_lookup")


SHIM = Shim(
    "noreload",
    internals="SSHServerConnection.reload_config(), _options.config.loaded, _rdns_lookup",
    fallback="each login re-derives the server options in a thread and keeps a second copy "
    "(about 4 KiB per connection)",
    check=check,
    roles=("bastion",),
)


async def _same_options() -> None:
    """What ``reload_config`` would make equals what the connection has: nothing to do."""


def install(conn: object) -> bool:
    """Whether ``conn`` now keeps its options through login."""
    reason = checked(SHIM)
    if not reason:
        config = getattr(getattr(conn, "_options", None), "config", None)
        loaded = getattr(config, "loaded", None)
        rdns = getattr(conn, "_rdns_lookup", None)
        if loaded is not False or rdns is not False:
            reason = "this connection's options load a config file or look up client names"
    if reason:
        stepped_aside(SHIM.name, reason)
        return False
    setattr(conn, _ATTR, _same_options)
    return True
