"""Checks on the home box's sshd, from its effective config as ``sshd -T`` prints it (pure).

``sshd -T`` prints one ``keyword value`` a line, keywords in lower case; a keyword given
several times (``listenaddress``, ``hostkey``, ``allowusers``) appears once per value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from sshtunnel_mgr.core.hostport import InvalidAddress, split_host_port
from sshtunnel_mgr.doctor.algorithms import Category, check_algorithms
from sshtunnel_mgr.doctor.findings import Finding, Level, fail, ok, warn

MAX_AUTH_TRIES = 4
CONFIG = "in sshd_config (then `systemctl reload ssh`)"


@dataclass(frozen=True)
class SshdSettings:
    """The effective sshd config: keyword (lower case) to its values, in order."""

    values: dict[str, tuple[str, ...]]

    def get(self, key: str, default: str = "") -> str:
        found = self.values.get(key)
        return found[0] if found else default

    def all(self, key: str) -> tuple[str, ...]:
        return self.values.get(key, ())

    def words(self, key: str) -> list[str]:
        return [w for value in self.all(key) for w in value.split()]


def parse_sshd_t(text: str) -> SshdSettings:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        values.setdefault(key.lower(), []).append(value.strip())
    return SshdSettings({k: tuple(v) for k, v in values.items()})


def _flag(
    settings: SshdSettings, key: str, directive: str, want: str, check: str, why: str
) -> Finding:
    value = settings.get(key, "?")
    if value == want:
        return ok(check, f"{directive} {value}")
    return fail(check, f"{directive} is {value}: {why}", f"set {directive} {want} {CONFIG}")


def check_root_login(settings: SshdSettings) -> Finding:
    value = settings.get("permitrootlogin", "?")
    if value == "no":
        return ok("sshd.root-login", "PermitRootLogin no")
    fix = f"set PermitRootLogin no {CONFIG}; log in as a user and use sudo"
    if value in ("prohibit-password", "without-password", "forced-commands-only"):
        return warn(
            "sshd.root-login",
            f"PermitRootLogin {value}: root may still log in with a key",
            fix,
        )
    return fail("sshd.root-login", f"PermitRootLogin {value}: root may log in", fix)


def check_max_auth_tries(settings: SshdSettings) -> Finding:
    raw = settings.get("maxauthtries", "6")
    try:
        tries = int(raw)
    except ValueError:
        return warn(
            "sshd.max-auth-tries", f"MaxAuthTries {raw!r} is not a number", "set MaxAuthTries 3"
        )
    if tries <= MAX_AUTH_TRIES:
        return ok("sshd.max-auth-tries", f"MaxAuthTries {tries}")
    return warn(
        "sshd.max-auth-tries",
        f"MaxAuthTries {tries}: more than {MAX_AUTH_TRIES} guesses per connection",
        f"set MaxAuthTries 3 {CONFIG}",
    )


def check_allow_users(settings: SshdSettings) -> Finding:
    users = settings.words("allowusers")
    groups = settings.words("allowgroups")
    if users or groups:
        parts = []
        if users:
            parts.append(f"AllowUsers {' '.join(users)}")
        if groups:
            parts.append(f"AllowGroups {' '.join(groups)}")
        return ok("sshd.allow-users", "; ".join(parts))
    return warn(
        "sshd.allow-users",
        "neither AllowUsers nor AllowGroups is set: every account with a key may log in",
        f"list who may log in, e.g. AllowUsers alice {CONFIG}",
    )


def listen_host(address: str) -> str:
    """The host part of ``127.0.0.1:22``, ``[::1]:22`` or ``::1`` (as ``sshd -T`` lists)."""
    try:
        return split_host_port(address, 22)[0]
    except InvalidAddress:
        return address


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def check_listen(settings: SshdSettings) -> Finding:
    addresses = list(settings.all("listenaddress")) or ["0.0.0.0:22", "[::]:22"]
    exposed = [a for a in addresses if not is_loopback(listen_host(a))]
    if not exposed:
        return ok("sshd.listen", f"sshd listens on loopback only ({', '.join(addresses)})")
    return warn(
        "sshd.listen",
        f"sshd listens on {', '.join(exposed)}: with a tunnel sshd can listen on 127.0.0.1 only",
        f"set ListenAddress 127.0.0.1 (and ::1) {CONFIG}, unless you also log in "
        "from the local network",
    )


def check_strict_modes(settings: SshdSettings) -> Finding:
    if settings.get("strictmodes", "yes") == "yes":
        return ok("sshd.strict-modes", "StrictModes yes")
    return warn(
        "sshd.strict-modes",
        "StrictModes no: sshd accepts authorized_keys files that others can write",
        f"set StrictModes yes {CONFIG}",
    )


_ALGORITHM_LISTS: tuple[tuple[str, str, Category, str], ...] = (
    ("ciphers", "sshd.ciphers", "cipher", "Ciphers"),
    ("macs", "sshd.macs", "mac", "MACs"),
    ("kexalgorithms", "sshd.kex", "kex", "KexAlgorithms"),
    ("hostkeyalgorithms", "sshd.host-key-algs", "key", "HostKeyAlgorithms"),
    ("pubkeyacceptedalgorithms", "sshd.pubkey-algs", "key", "PubkeyAcceptedAlgorithms"),
)


def check_sshd_algorithms(settings: SshdSettings) -> list[Finding]:
    findings = []
    for key, check, category, directive in _ALGORITHM_LISTS:
        raw = settings.get(key)
        if not raw:
            continue
        algorithms = [a for a in raw.split(",") if a]
        findings.append(
            check_algorithms(check, category, algorithms, f"sshd {directive}", directive)
        )
    return findings


def check_auth(settings: SshdSettings) -> list[Finding]:
    """The checks that a ``Match`` block can change for one kind of connection."""
    findings = [
        _flag(
            settings,
            "passwordauthentication",
            "PasswordAuthentication",
            "no",
            "sshd.password-auth",
            "passwords can be guessed",
        ),
        _flag(
            settings,
            "kbdinteractiveauthentication",
            "KbdInteractiveAuthentication",
            "no",
            "sshd.kbd-interactive",
            "keyboard-interactive (PAM) asks for passwords too",
        ),
        _flag(
            settings,
            "pubkeyauthentication",
            "PubkeyAuthentication",
            "yes",
            "sshd.pubkey-auth",
            "key-only login needs public-key authentication",
        ),
        _flag(
            settings,
            "permitemptypasswords",
            "PermitEmptyPasswords",
            "no",
            "sshd.empty-passwords",
            "accounts without a password could log in",
        ),
        check_root_login(settings),
        check_max_auth_tries(settings),
        _flag(
            settings,
            "x11forwarding",
            "X11Forwarding",
            "no",
            "sshd.x11-forwarding",
            "X11 forwarding lets the server reach your display",
        ),
    ]
    if findings[-1].level is Level.FAIL:  # X11 forwarding on is a warning, not a failure
        x11 = findings[-1]
        findings[-1] = warn(x11.check, x11.message, x11.fix)
    return findings


SHARED_STARTUPS = 50  # a MaxStartups start below this drops parallel tunnel logins


def check_shared_source(settings: SshdSettings) -> Finding:
    """Every routed client reaches this sshd from the agent's local address, so sshd's
    per-address limits treat all tunnel users as one source: a MaxStartups of 10:30:100,
    a PerSourceMaxStartups or PerSourcePenalties (OpenSSH 9.8+) then refuse or penalise
    everyone together (an `ansible -f 20` run already loses forks)."""
    check = "sshd.tunnel-shared-source"
    problems, fixes = [], []
    start_text = settings.get("maxstartups", "10:30:100").split(":")[0]
    start = int(start_text) if start_text.isascii() and start_text.isdigit() else 0
    if start < SHARED_STARTUPS:
        problems.append(
            f"MaxStartups {settings.get('maxstartups', '10:30:100')} starts dropping logins early"
        )
        fixes.append("MaxStartups 100:30:200")
    per_source = settings.get("persourcemaxstartups", "none")
    if per_source != "none":
        problems.append(f"PerSourceMaxStartups {per_source} counts every tunnel user as one")
        fixes.append("PerSourceMaxStartups none")
    penalties = settings.get("persourcepenalties", "no")
    exempt = settings.get("persourcepenaltyexemptlist", "")
    if penalties not in ("no", "") and not any(
        net.startswith(("127.", "::1")) for net in exempt.split(",")
    ):
        problems.append("PerSourcePenalties would lock every tunnel user out together")
        fixes.append("PerSourcePenaltyExemptList 127.0.0.1,::1")
    if not problems:
        return ok(check, "tunnel users are not limited as one source")
    return warn(
        check,
        "tunnel users all arrive from the agent's local address: " + "; ".join(problems),
        f"set {', '.join(fixes)} {CONFIG}",
    )


def check_sshd(settings: SshdSettings) -> list[Finding]:
    """Everything about one effective sshd config."""
    return [
        *check_auth(settings),
        check_allow_users(settings),
        check_listen(settings),
        check_strict_modes(settings),
        check_shared_source(settings),
        *check_sshd_algorithms(settings),
    ]


def check_match(plain: SshdSettings, matched: SshdSettings, spec: str) -> list[Finding]:
    """Findings that a ``Match`` block makes worse for one connection (``spec`` is what was
    given to ``sshd -T -C``): those are reported again, naming the connection."""
    before = {f.check: f for f in check_auth(plain)}
    out = []
    for finding in check_auth(matched):
        base = before.get(finding.check)
        if base is not None and finding.level.rank > base.level.rank:
            out.append(
                Finding(
                    finding.level,
                    finding.check,
                    f"for connections matching {spec} (a Match block): {finding.message}",
                    finding.fix.replace("in sshd_config", "in that Match block of sshd_config"),
                )
            )
    return out


@dataclass(frozen=True)
class HostKeyFacts:
    path: str
    key_type: str  # "" when the key could not be read
    bits: int
    error: str = ""


def check_host_key(key: HostKeyFacts, check: str = "sshd.host-key") -> Finding:
    """A host key's type and size: ed25519 ok; RSA >= 3072 ok; ECDSA warn; DSA or small
    RSA fail."""
    if key.error:
        return fail(check, f"host key {key.path}: {key.error}", "check the HostKey lines")
    what = f"host key {key.path} is {key.key_type}"
    fix = (
        f"remove HostKey {key.path} from sshd_config and serve an ed25519 key "
        "(ssh-keygen -t ed25519 -f /etc/ssh/ssh_host_ed25519_key)"
    )
    if key.key_type == "ssh-ed25519":
        return ok(check, what)
    if key.key_type == "ssh-rsa":
        if key.bits >= 3072:
            return ok(check, f"{what} ({key.bits} bits)")
        level = Level.WARN if key.bits >= 2048 else Level.FAIL
        return Finding(level, check, f"{what} of only {key.bits} bits (want >= 3072)", fix)
    if key.key_type.startswith("ecdsa-sha2-nistp"):
        return warn(check, f"{what}: a NIST P-curve", fix)
    return fail(check, f"{what}: a weak or unknown host key type", fix)


def check_host_keys(keys: Sequence[HostKeyFacts]) -> list[Finding]:
    if not keys:
        return [fail("sshd.host-key", "sshd has no host key", "add a HostKey line")]
    return [check_host_key(k) for k in keys]
