"""``sshtun doctor`` on a ``tls = "acme"`` tunnel: the certificate the agent saved in its
state directory (chain and key in one file, 0600): there yet, not expired, not within
``certcheck.WARN_DAYS`` of its end, and readable by its owner only."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

from sshtunnel_mgr.agent.web.acme import AcmeFiles
from sshtunnel_mgr.agent.web.certs import read_cert_info
from sshtunnel_mgr.core.config import TunnelConfig
from sshtunnel_mgr.core.tlsconfig import LETSENCRYPT
from sshtunnel_mgr.doctor import certcheck, files
from sshtunnel_mgr.doctor.findings import Finding


def saved_facts(tunnel: TunnelConfig, state_dir: Path) -> certcheck.CertFacts:
    label = f"{tunnel.name}:{tunnel.port}"
    path = AcmeFiles(state_dir, tunnel.name, tunnel.acme_directory or LETSENCRYPT).cert
    if not path.exists():
        return certcheck.CertFacts(label, str(path), acme=True, missing=True)
    try:
        info = read_cert_info(path)
    except (OSError, ValueError) as exc:
        return certcheck.CertFacts(label, str(path), error=str(exc), acme=True)
    return certcheck.CertFacts(label, str(path), info.not_after, acme=True)


def findings(
    tunnel: TunnelConfig,
    state_dir: Path,
    now: float,
    stat: Callable[[Path], files.FileStat],
    owners: Collection[int],
) -> list[Finding]:
    facts = saved_facts(tunnel, state_dir)
    found = [certcheck.check_certificate(facts, now)]
    if not facts.missing:
        mode = files.check_private_key_file(
            stat(Path(facts.path)), "agent.tls-key-mode", f"{facts.label} ACME key", owners
        )
        if mode is not None:
            found.append(mode)
    return found
