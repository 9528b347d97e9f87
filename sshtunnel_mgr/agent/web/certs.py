"""A ``tls = "files"`` tunnel's certificate and key: ``CertStore``.

``load()`` checks the key file's mode (refused when group or others may read it, as the
agent key is), builds the TLS context (TLS 1.2 or newer, forward-secret AEAD ciphers only,
ALPN http/1.1) and reads the certificate's expiry. ``current()`` gives the context for a
new connection, re-reading the files first when either changed on disk (size, mtime,
inode): new connections get the new certificate, live ones keep theirs. A file that
fails to load later is logged and the last good context stays in service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import stat
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from cryptography import x509

from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.agent")

CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20"  # TLS 1.3's suites are all fine already
ALPN = ["http/1.1"]


@dataclass(frozen=True)
class CertInfo:
    not_after: float  # seconds since the epoch
    subject: str


def read_cert_info(path: Path) -> CertInfo:
    """The first certificate of a PEM file: expiry and subject (``ValueError``/``OSError``)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return CertInfo(
        cert.not_valid_after_utc.astimezone(UTC).timestamp(), cert.subject.rfc4514_string()
    )


def check_key_mode(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"TLS key file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS key file {path}: {exc}") from None
    if mode & 0o077:
        raise ConfigError(
            f"permissions {stat.S_IMODE(mode):04o} for TLS key {path} are too open: "
            f"it must not be accessible by others; fix: chmod 600 {path}",
            hint=f"chmod 600 {path}",
        )


def make_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server context for one certificate; ``ConfigError`` naming what is wrong."""
    check_key_mode(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS_TLS12)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS certificate or key file missing: {exc.filename}") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate {cert} with key {key}: {exc}",
            hint="both PEM; the key must belong to the certificate",
        ) from None
    return context


def _signature(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((-1, -1, -1))
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class CertStore:
    """The live TLS context of one tunnel, re-read when its files change."""

    def __init__(self, label: str, cert: Path, key: Path) -> None:
        self.label = label
        self.cert = cert
        self.key = key
        self.context: ssl.SSLContext | None = None
        self.info: CertInfo | None = None
        self.error = ""
        self._loaded: tuple[tuple[int, int, int], ...] = ()
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read both files now (blocking); raises ``ConfigError``, keeping the old context."""
        seen = _signature(self.cert, self.key)
        context = make_context(self.cert, self.key)
        try:
            info = read_cert_info(self.cert)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read TLS certificate {self.cert}: {exc}") from None
        self.context, self.info, self.error, self._loaded = context, info, "", seen

    def changed(self) -> bool:
        return _signature(self.cert, self.key) != self._loaded

    async def refresh(self) -> None:
        """Re-read the files if they changed (in a worker thread); a failure is logged and
        recorded, and the last good context stays."""
        if not self.changed():
            return
        async with self._lock:
            if not self.changed():
                return
            try:
                await asyncio.to_thread(self.load)
            except ConfigError as exc:
                if exc.message != self.error:
                    event(
                        log,
                        logging.ERROR,
                        "tls files refused",
                        name=self.label,
                        reason=exc.message,
                        hint=exc.hint or "-",
                    )
                self.error = exc.message
                return
            assert self.info is not None
            event(
                log,
                logging.INFO,
                "tls certificate loaded",
                name=self.label,
                subject=self.info.subject,
            )

    async def current(self) -> ssl.SSLContext:
        await self.refresh()
        if self.context is None:
            raise ConfigError(self.error or f"no TLS certificate loaded for {self.label}")
        return self.context
