"""Whether sshtun's asyncssh shims (``sshtunnel_mgr/sshcompat``) work on the asyncssh that
is installed (pure: the shims' states in, one finding out)."""

from __future__ import annotations

from collections.abc import Sequence

from sshtunnel_mgr.doctor.findings import Finding, ok, warn
from sshtunnel_mgr.sshcompat import ShimState


def check_shims(
    role: str, version: str, tested: bool, supported: str, states: Sequence[ShimState]
) -> Finding:
    """``<role>.asyncssh-shims``: ok when every shim the role uses is active on a release
    they were tested on; warn (with what happens instead) when one stepped aside or the
    release is outside the tested range. Nothing fails: each shim has a stock fallback."""
    check = f"{role}.asyncssh-shims"
    fix = f"install a supported asyncssh: pip install 'asyncssh[bcrypt]{supported}'"
    aside = [s for s in states if not s.active]
    active = ", ".join(s.name for s in states if s.active) or "none"
    if aside:
        told = "; ".join(f"{s.name} ({s.reason}; instead: {s.fallback})" for s in aside)
        return warn(check, f"asyncssh {version}: shims stepped aside: {told}", fix)
    if not tested:
        return warn(
            check,
            f"asyncssh {version} is outside the range sshtun's shims were tested on "
            f"({supported}); they still found what they need: {active}",
            fix,
        )
    return ok(check, f"asyncssh {version}: shims active: {active}")
