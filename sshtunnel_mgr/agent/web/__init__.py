"""The agent's web path: routed sessions of tunnels with ``tls`` or ``proxy_protocol``.

``WebFront`` (one per agent) answers the bastion's ``forwarded-tcpip`` opens for such
tunnels. Each open connects to the local target first (a refusal there refuses the open,
as for plain tunnels), sends the PROXY header when asked (the client address is the
channel's originator, which the bastion fills with the real client's), then:

- ``tls = "passthrough"`` (or no ``tls``): the bytes are spliced as they come;
- ``tls = "files"``: the agent ends TLS with the tunnel's certificate (re-read when its
  files change, and on reload) and forwards HTTP/1.1 (httpfwd.py);
- ``tls = "acme"``: the same with a certificate the agent orders and renews itself
  (acme.py, acmerenew.py); its ``name:80`` side (``tls = "acme-http01"``) answers the
  CA's HTTP-01 challenges and opens no local connection (acmehttp.py).

Sessions run as tasks the front keeps; ``close()`` cancels and awaits what is left.
Tunnels with neither option never come here (forward.py splices them, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncssh
import h11

from sshtunnel_mgr.agent.forward import ChannelCount, SessionFactory
from sshtunnel_mgr.agent.web.acmehttp import answer_http01
from sshtunnel_mgr.agent.web.acmerenew import AcmeCertStore, AcmeService
from sshtunnel_mgr.agent.web.certs import CertStore
from sshtunnel_mgr.agent.web.httpfwd import HttpForwarder, Streams, splice
from sshtunnel_mgr.agent.web.pipe import ChannelPipe
from sshtunnel_mgr.agent.web.stats import WebStats
from sshtunnel_mgr.agent.web.tlsstream import TlsStream
from sshtunnel_mgr.core import proxyproto
from sshtunnel_mgr.core.config import TunnelConfig
from sshtunnel_mgr.core.errors import SshtunError
from sshtunnel_mgr.core.tlsconfig import CHALLENGE
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.agent")

CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 20.0


def uses_web(tunnel: TunnelConfig) -> bool:
    """Whether a tunnel's sessions need the web path (else forward.py splices them)."""
    return tunnel.tls in ("files", "acme", CHALLENGE) or tunnel.proxy_protocol is not None


def _label(tunnel: TunnelConfig) -> str:
    return f"{tunnel.name}:{tunnel.port}"


def proxy_endpoints(
    orig_host: str, orig_port: int, published_port: int
) -> tuple[tuple[str, int] | None, tuple[str, int]]:
    """The PROXY header's source (the channel's originator, if it is an IP address) and
    destination (the unspecified address of its family, the published port: the agent
    does not know which bastion address the client reached)."""
    ip = proxyproto.ip_of(orig_host)
    if ip is None:
        return None, ("0.0.0.0", published_port)
    return (str(ip), orig_port), ("::" if ip.version == 6 else "0.0.0.0", published_port)


class WebFront:
    def __init__(self) -> None:
        self.stores: dict[str, CertStore] = {}
        self.acme = AcmeService()
        self.stats = WebStats()  # per tunnel: handshakes, requests, bytes, idle closes
        self._tasks: set[asyncio.Task[None]] = set()

    # Certificates ---------------------------------------------------------------------
    @staticmethod
    def prepare(tunnels: list[TunnelConfig], state_dir: Path | None = None) -> dict[str, CertStore]:
        """Load every ``tls = "files"`` tunnel's files now (blocking: start-up, or a
        reload's worker thread); ``ConfigError`` names the first that fails. An acme
        tunnel serves the certificate an earlier run saved in ``state_dir``, if valid."""
        stores: dict[str, CertStore] = {}
        for tunnel in tunnels:
            if tunnel.tls == "files":
                assert tunnel.cert is not None and tunnel.key is not None
                store = CertStore(_label(tunnel), tunnel.cert, tunnel.key)
                store.load()
                stores[store.label] = store
            elif tunnel.tls == "acme":
                assert state_dir is not None  # the config requires it
                acme_store = AcmeCertStore(_label(tunnel), tunnel, state_dir)
                acme_store.load_saved()
                stores[acme_store.label] = acme_store
        return stores

    def use(self, stores: dict[str, CertStore]) -> None:
        """Serve new connections with these; live ones keep the context they have. An
        acme tunnel whose settings stayed keeps its certificate and its renewer."""
        self.stores = self.acme.adopt(stores)
        if self.acme.started:
            self.acme.sync(self.stores)

    def start(self) -> None:
        """Start ordering and renewing the acme tunnels' certificates (in the loop)."""
        self.acme.started = True
        self.acme.sync(self.stores)

    async def refresh(self) -> None:
        """Re-read changed certificate files (the agent's periodic check calls it)."""
        for store in list(self.stores.values()):
            await store.refresh()

    def snapshot(self, tunnels: list[TunnelConfig]) -> list[dict[str, Any]]:
        rows = []
        for tunnel in tunnels:
            store = self.stores.get(_label(tunnel))
            rows.append(
                {
                    "name": _label(tunnel),
                    "target": tunnel.target,
                    "tls": tunnel.tls or "",
                    "proxy_protocol": tunnel.proxy_protocol or "",
                    "cert_not_after": store.info.not_after if store and store.info else None,
                    "cert_subject": store.info.subject if store and store.info else "",
                    "cert_error": store.error if store else "",
                    **self.acme.snapshot(_label(tunnel)),
                    **(self.stats.row(_label(tunnel)) if uses_web(tunnel) else {}),
                }
            )
        return rows

    # Sessions ---------------------------------------------------------------------------
    def factory(
        self, conn: asyncssh.SSHClientConnection, count: ChannelCount, tunnel: TunnelConfig
    ) -> SessionFactory:
        host, port = tunnel.target_host, tunnel.target_port
        if tunnel.tls == CHALLENGE:
            return self._challenge_factory(count, tunnel)

        async def connect(orig_host: str, orig_port: int) -> Streams:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), CONNECT_TIMEOUT
            )
            if tunnel.proxy_protocol is not None:
                src, dst = proxy_endpoints(orig_host, orig_port, tunnel.port)
                writer.write(proxyproto.header(tunnel.proxy_protocol, src, dst))
            return reader, writer

        async def open_session(orig_host: str, orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
            count.opened()
            try:
                try:
                    streams = await connect(orig_host, orig_port)
                except (OSError, TimeoutError) as exc:
                    raise asyncssh.ChannelOpenError(
                        asyncssh.OPEN_CONNECT_FAILED, f"{tunnel.target}: {exc or 'timed out'}"
                    ) from None
                if conn.is_closed():  # asyncssh would drop the session unclosed
                    streams[1].close()
                    raise asyncssh.ChannelOpenError(
                        asyncssh.OPEN_CONNECT_FAILED, "SSH connection closed"
                    )
            except BaseException:
                count.closed()
                raise

            def started(pipe: ChannelPipe) -> None:
                session = self._session(
                    pipe, tunnel, streams, lambda: connect(orig_host, orig_port), orig_host
                )
                close = streams[1].close
                watched = self.stats.watched(
                    session, _label(tunnel), pipe, tunnel.idle_timeout, close
                )
                self._spawn(watched, _label(tunnel))

            return ChannelPipe(count, started)

        return open_session

    def _challenge_factory(self, count: ChannelCount, tunnel: TunnelConfig) -> SessionFactory:
        """``name:80`` of an acme tunnel: HTTP-01 answers, no local connection."""

        async def open_session(orig_host: str, orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
            count.opened()

            def started(pipe: ChannelPipe) -> None:
                self._spawn(self._challenge(pipe, tunnel), _label(tunnel))

            return ChannelPipe(count, started)

        return open_session

    async def _challenge(self, pipe: ChannelPipe, tunnel: TunnelConfig) -> None:
        try:
            status = await answer_http01(pipe, self.acme.challenges, tunnel.name)
            event(log, logging.DEBUG, "acme http-01 answered", name=_label(tunnel), status=status)
        except (OSError, TimeoutError) as exc:
            event(log, logging.DEBUG, "web session ended", name=_label(tunnel), reason=repr(exc))
        finally:
            pipe.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], label: str) -> None:
        task = asyncio.create_task(coro, name=f"web session {label}")
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                event(
                    log,
                    logging.ERROR,
                    "web session failed",
                    name=label,
                    error=repr(task.exception()),
                )

        task.add_done_callback(done)

    async def _session(
        self,
        pipe: ChannelPipe,
        tunnel: TunnelConfig,
        streams: Streams,
        connect: Callable[[], Awaitable[Streams]],
        orig_host: str,
    ) -> None:
        label = _label(tunnel)
        reader, writer = streams
        try:
            if tunnel.tls not in ("files", "acme"):
                await splice(pipe, reader, writer)
                return
            store = self.stores.get(label)
            if store is None:
                raise SshtunError(f"no TLS certificate loaded for {label}")
            tls = TlsStream(pipe, await store.current())
            try:
                await tls.handshake(HANDSHAKE_TIMEOUT)
            except BaseException:
                self.stats.count(label, "tls_failed")
                raise
            self.stats.count(label, "tls_ok")
            ip = proxyproto.ip_of(orig_host)
            forwarder = HttpForwarder(
                tls,
                streams,
                connect,
                None if ip is None else str(ip),
                count=lambda kind: self.stats.count(label, kind),
            )
            await forwarder.run()
            if not pipe.closed:
                await tls.send_eof()  # close_notify: a clean end for the client
            event(log, logging.DEBUG, "web session done", name=label, requests=forwarder.requests)
        except (ssl.SSLError, h11.ProtocolError, SshtunError) as exc:
            event(log, logging.INFO, "web session refused", name=label, reason=repr(exc))
        except (OSError, TimeoutError) as exc:  # a client or target that left; a probe
            event(log, logging.DEBUG, "web session ended", name=label, reason=repr(exc))
        finally:
            pipe.close()
            writer.close()

    async def close(self) -> None:
        await self.acme.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
