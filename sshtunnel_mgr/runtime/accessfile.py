"""Reading the access file from disk: trusted only when its owner and modes say so
(``strictmodes``), parsed by ``core.access``, with one warning per key the login policy
refuses."""

from __future__ import annotations

import logging
from pathlib import Path

from sshtunnel_mgr.core.access import AccessPolicy, parse_access, refused_keys
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.runtime.logsetup import event
from sshtunnel_mgr.runtime.strictmodes import read_trusted, service_owners

log = logging.getLogger(__name__)


def load_access(path: Path, *, any_owner: bool = False, strict: bool = True) -> AccessPolicy:
    """Read and parse the access file, refusing it (``ConfigError``) when someone other
    than root or this process's user owns it or can write it or a directory above it
    (``strictmodes``). ``any_owner``: skip the owner check (an admin's views as root);
    ``strict`` False: no check at all (``doctor``, which reports modes itself)."""
    try:
        text = read_trusted(path, None if any_owner else service_owners(), strict=strict)
    except FileNotFoundError:
        raise ConfigError(
            f"access file {path} does not exist",
            hint="create it with one authorized_keys line per agent or client key",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read access file {path}: {exc}") from None
    policy_ = parse_access(text, str(path))
    warn_refused_keys(policy_)
    return policy_


def warn_refused_keys(access: AccessPolicy) -> None:
    """One warning per access-file line whose key can never log in (``load_access``)."""
    for entry, why in refused_keys(access):
        event(
            log,
            logging.WARNING,
            "access key refused by policy",
            file=access.source,
            line=entry.line,
            key=entry.fingerprint,
            comment=entry.comment,
            reason=why,
        )
