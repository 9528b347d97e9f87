"""The one room for asyncssh's internals (STYLE rule 13).

Every private asyncssh name the package relies on lives in this package and nowhere else
(``tests/unit/test_sshcompat_boundary.py`` greps the rest of the package for them). The
rules each shim here follows:

- **Nothing at import.** Importing ``sshtunnel_mgr`` (or this package) touches no asyncssh
  internal: a shim looks its internals up when it is first used (``install``), on the
  object it patches, so a renamed internal can break at most that one shim, never an
  unrelated command such as ``sshtun keys gen``.
- **Checked, then installed.** Each shim has a ``check()`` that says whether the internals
  it needs look as expected on the asyncssh that is installed ("" when they do, else why
  not); ``install`` runs it first and checks the object it patches again.
- **Stock fallback.** A shim that finds something different steps aside: the connection
  keeps asyncssh's own behaviour (each shim's ``fallback`` says what that means), one log
  line per process says which shim and why (``stepped_aside``), and nothing raises.
- **Per connection** where possible (from ``connection_made``, instance attributes only),
  so other asyncssh users in the process are untouched. ``authlog`` is the one exception:
  asyncssh looks its server auth methods up through a module function, which is wrapped
  once, when a bastion starts.
- **One line at start.** ``announce`` logs which shims are active on this asyncssh (the
  bastion and the agent call it as they start); ``summary()`` is what ``sshtun status``
  shows and ``active_shims()`` what ``sshtun doctor`` judges.

Supported asyncssh: ``ASYNCSSH_RANGE`` (kept equal to pyproject's pin by a test). Its
floor and its ceiling are the same release, 2.24.1: 2.24.1 is the only asyncssh release in
``>=2.24.1,<2.25`` on the package index (checked with ``pip index versions asyncssh`` in
December 2026; the next older is 2.24.0, below the floor). The tests run every shim
installed on that version and stepped aside with its internal removed
(``tests/unit/test_sshcompat*.py``); widening the range means adding the new floor or
ceiling to ``TESTED_VERSIONS`` and running them there.

The shims (name: module):

- ``authlog`` (``authlog``): log password/keyboard-interactive attempts asyncssh refuses.
- ``cork``, ``skip_ignore`` (``sendpath``): fewer send() calls; no empty ``MSG_IGNORE``
  before each packet with AEAD/CTR ciphers.
- ``recv_feed``, ``aead_glue`` (``datapath``): asyncssh's receive parser fed one packet
  at a time (no copy of the whole unread buffer per packet); one ``AESGCM`` per key and
  one ChaCha20 stream per packet, the tag joined once.
- ``data_packets`` (``sendfast``): a channel data packet built in one join, not four
  concatenations.
- ``quiet_packet_log`` (``debuglevel``): no per-packet log text unless packet logging is on.
- ``kexguess`` (``kexguess``): judge a peer's guessed first key-exchange packet by RFC 4253
  §7, so Dropbear's ``dbclient`` connects whatever the server's algorithm order.
- ``sigpolicy`` (``sigpolicy``): refuse user signatures with algorithms the policy refuses.
- ``disconnects`` (``disconnects``): remember the reason of the DISCONNECT the bastion sent.
- ``forwardreq`` (``forwardreq``): keep a ``tcpip-forward`` bind address as the agent spelt it.
- ``hostkeys`` (``hostkeys``): send the host key list (hostkeys-00) after login and on rotation.
- ``keyerrors`` (``keyerrors``): tell "this key needs a passphrase" from other load errors.
- ``noreload`` (``noreload``): keep a server connection's options through login (no second
  options object built in a thread per login: the bastion has no config file to re-read).
- ``serverstart`` (``serverstart``): start an accepted connection on the listener's own
  options (``run_server`` builds a copy per connection, in a thread).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger(__name__)

ASYNCSSH_RANGE = ">=2.24.1,<2.25"  # pyproject.toml's pin
TESTED_VERSIONS = ("2.24.1",)  # floor and ceiling of the range: the only release in it


@dataclass(frozen=True)
class Shim:
    """One shim: its name, the asyncssh internals it relies on, what a connection gets
    without it, the check that those internals look as expected ("" when they do), and
    the roles that use it."""

    name: str
    internals: str
    fallback: str
    check: Callable[[], str]
    roles: tuple[str, ...] = ("agent", "bastion")


@dataclass(frozen=True)
class ShimState:
    """Whether a shim is in use in this process, and if not, why and what instead."""

    name: str
    active: bool
    reason: str = ""
    fallback: str = ""


# name -> (module in this package, attribute holding its Shim); imported at first use.
_REGISTRY: dict[str, tuple[str, str]] = {
    "authlog": ("authlog", "SHIM"),
    "cork": ("sendpath", "CORK"),
    "skip_ignore": ("sendpath", "SKIP_IGNORE"),
    "quiet_packet_log": ("debuglevel", "SHIM"),
    "recv_feed": ("datapath", "RECV_FEED"),
    "aead_glue": ("datapath", "AEAD_GLUE"),
    "data_packets": ("sendfast", "SHIM"),
    "kexguess": ("kexguess", "SHIM"),
    "sigpolicy": ("sigpolicy", "SHIM"),
    "disconnects": ("disconnects", "SHIM"),
    "forwardreq": ("forwardreq", "SHIM"),
    "hostkeys": ("hostkeys", "SHIM"),
    "keyerrors": ("keyerrors", "SHIM"),
    "noreload": ("noreload", "SHIM"),
    "serverstart": ("serverstart", "SHIM"),
}
NAMES = tuple(_REGISTRY)

_checked: dict[str, str] = {}  # shim -> its check's answer, for per-connection installs
_aside: dict[str, str] = {}  # shim -> why a connection found it could not install it
_told: set[tuple[str, str]] = set()  # (shim, reason) already logged


def shim(name: str) -> Shim:
    """The registered shim called ``name`` (its module is imported now, not before)."""
    module, attr = _REGISTRY[name]
    found: Shim = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    return found


def check(name: str) -> str:
    """Run one shim's check now: "" when its internals look as expected, else why not.
    Never raises: an internal that is not even there to be inspected is a reason too."""
    try:
        return shim(name).check()
    except (AttributeError, TypeError, ValueError, ImportError) as exc:
        return f"{type(exc).__name__}: {exc}"


def checked(found: Shim) -> str:
    """``found.check()``, run once per process: what each connection's install asks (the
    asyncssh loaded does not change while it runs, and a check costs a signature
    inspection). ``check``/``active_shims`` run the checks afresh."""
    reason = _checked.get(found.name)
    if reason is None:
        try:
            reason = found.check()
        except (AttributeError, TypeError, ValueError, ImportError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        _checked[found.name] = reason
    return reason


def stepped_aside(name: str, reason: str, *, logged: bool = False) -> None:
    """A shim could not be installed (on a connection, or at start): remember the first
    reason for ``summary()`` and log it once per process and reason (unless the shim has
    ``logged`` it in its own words)."""
    _aside.setdefault(name, reason)
    if logged or (name, reason) in _told:
        return
    _told.add((name, reason))
    event(
        log,
        logging.INFO,
        "asyncssh shim stepped aside",
        shim=name,
        reason=reason,
        fallback=_fallback(name),
    )


def _roles(name: str) -> tuple[str, ...]:
    try:
        return shim(name).roles
    except (AttributeError, ImportError):
        return ("agent", "bastion")


def _fallback(name: str) -> str:
    try:
        return shim(name).fallback
    except (AttributeError, ImportError, KeyError):
        return "asyncssh's stock behaviour"


def active_shims(role: str | None = None) -> list[ShimState]:
    """Each shim (of ``role``, or all), active or stepped aside (its check fails now, or a
    connection found it could not be installed earlier in this process), with the reason
    and the fallback."""
    states = []
    for name in NAMES:
        if role is not None and role not in _roles(name):
            continue
        reason = check(name) or _aside.get(name, "")
        fallback = _fallback(name) if reason else ""
        states.append(ShimState(name, not reason, reason, fallback))
    return states


def asyncssh_version() -> str:
    import asyncssh  # public: the installed release

    return str(getattr(asyncssh, "__version__", "unknown"))


def in_tested_range(version: str) -> bool:
    """Whether ``version`` is a release the shims were tested on."""
    return version in TESTED_VERSIONS


def summary(role: str | None = None) -> dict[str, Any]:
    """Plain data for ``sshtun status``: the asyncssh release, the supported range, the
    active shims (of ``role``, or all) and the ones stepped aside with their reasons."""
    states = active_shims(role)
    version = asyncssh_version()
    return {
        "asyncssh": version,
        "supported": ASYNCSSH_RANGE,
        "tested": in_tested_range(version),
        "active": [s.name for s in states if s.active],
        "stepped_aside": {s.name: s.reason for s in states if not s.active},
    }


def announce(logger: logging.Logger, role: str) -> dict[str, Any]:
    """Log one line naming the active shims (at bastion and agent start); its data."""
    info = summary(role)
    aside = info["stepped_aside"]
    level = logging.INFO if info["tested"] and not aside else logging.WARNING
    event(
        logger,
        level,
        "asyncssh shims",
        role=role,
        asyncssh=info["asyncssh"],
        tested=info["tested"],  # False: not a release the shims were tested on
        active=",".join(info["active"]) or "-",
        stepped_aside="; ".join(f"{n}: {r}" for n, r in aside.items()) or "-",
    )
    return info


# Helpers the shims share -------------------------------------------------------------------
def init_attributes(cls: type) -> frozenset[str]:
    """The attribute names the ``__init__`` methods of ``cls`` and its bases mention: how a
    shim checks, without a connection, that asyncssh still keeps an instance attribute."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if inspect.isfunction(init):
            names.update(init.__code__.co_names)
    return frozenset(names)


def parameters(func: object) -> list[str]:
    """The parameter names of ``func`` (bound ``self`` included for a plain function)."""
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")
    return list(inspect.signature(func).parameters)


def missing(cls: type, *attrs: str) -> str:
    """The reason an asyncssh class lacks one of ``attrs`` (instance attributes kept by
    ``__init__`` or class attributes), or "" when it has them all."""
    kept = init_attributes(cls)
    for attr in attrs:
        if attr not in kept and not hasattr(cls, attr):
            return f"asyncssh's {cls.__name__} has no {attr}"
    return ""
