"""``tls = "acme"`` over time: ``AcmeCertStore``, ``AcmeRenewer``, ``AcmeService``.

An acme tunnel's certificate store serves the chain and key its orders saved (acme.py);
a valid certificate kept from an earlier run is served at once. One ``AcmeRenewer`` per
acme tunnel orders a certificate when there is none (or it expired), and renews it at two
thirds of its lifetime; the blocking order runs in a worker thread, never on the event
loop. A failed order is logged with what went wrong (the CA unreachable, the order
refused, the challenge failed with the CA's reason, the name not allowed) and retried
with capped, jittered backoff. A new certificate is swapped in for new connections; live
ones keep the one they started with (as with ``tls = "files"``). The clock, the sleep and
the order itself are injected, so tests run the schedule without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sshtunnel_mgr.agent.web.acme import (
    AcmeError,
    AcmeFiles,
    AcmeRequest,
    Challenges,
    lifetime,
    obtain,
)
from sshtunnel_mgr.agent.web.certs import CertStore
from sshtunnel_mgr.core.backoff import Backoff
from sshtunnel_mgr.core.config import TunnelConfig
from sshtunnel_mgr.core.errors import ConfigError
from sshtunnel_mgr.core.tlsconfig import LETSENCRYPT
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.agent")

RENEW_AT = 2 / 3  # of a certificate's lifetime
RETRY_BASE = 60.0  # seconds before the first retry of a failed order ...
RETRY_CAP = 6 * 3600.0  # ... doubling up to this (CAs rate-limit failed validations)
MAX_NAP = 3600.0  # the schedule is looked at again at least this often (clock changes)
PENDING = "no certificate yet: the ACME order is in progress"
RETRY_HINT = "retried with backoff; `sshtun status` shows the next attempt"

Obtain = Callable[[AcmeRequest, AcmeFiles, Challenges], None]
Sleep = Callable[[float], Awaitable[None]]


def renew_at(not_before: float, not_after: float) -> float:
    """When a certificate valid from ``not_before`` to ``not_after`` is renewed."""
    return not_before + (not_after - not_before) * RENEW_AT


class AcmeCertStore(CertStore):
    """An acme tunnel's live TLS context: chain and key in one file the renewer writes and
    loads itself (it is not watched for changes)."""

    def __init__(self, label: str, tunnel: TunnelConfig, state_dir: Path) -> None:
        self.tunnel = tunnel
        self.request = AcmeRequest(
            tunnel.name,
            tunnel.acme_directory or LETSENCRYPT,
            tunnel.acme_email,
            tunnel.acme_ca_bundle,
        )
        self.files = AcmeFiles(state_dir, tunnel.name, self.request.directory)
        super().__init__(label, self.files.cert, self.files.cert)
        self.error = PENDING
        self.span: tuple[float, float] | None = None  # the served certificate's lifetime

    def load(self) -> None:
        super().load()
        self.span = lifetime(self.files.cert)

    def load_saved(self) -> None:
        """Serve a certificate saved by an earlier run, if there is a readable one
        (blocking); an unreadable one is replaced by the next order."""
        span = lifetime(self.files.cert)
        if span is None or span[1] <= time.time():
            return
        try:
            self.load()
        except ConfigError as exc:
            self.error = f"saved certificate not usable ({exc.message}); ordering a new one"

    async def refresh(self) -> None:
        return  # the renewer loads what it saved


class AcmeRenewer:
    """One acme tunnel's order-and-renew loop."""

    def __init__(
        self,
        store: AcmeCertStore,
        challenges: Challenges,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        order: Obtain = obtain,
        backoff: Backoff | None = None,
    ) -> None:
        self.store = store
        self.challenges = challenges
        self.clock = clock
        self.sleep = sleep
        self.order = order
        self.backoff = backoff or Backoff(base=RETRY_BASE, cap=RETRY_CAP)
        self.next_at: float | None = None  # the next order, when one is scheduled
        self.last_error = ""
        self.failures = 0  # in a row

    def due(self) -> float:
        """When the next order is due: now without a valid certificate, else at two
        thirds of its lifetime."""
        span = self.store.span if self.store.context is not None else None
        return self.clock() if span is None else renew_at(*span)

    async def run(self) -> None:
        while True:
            now, due = self.clock(), self.due()
            if due > now:
                self.next_at = due
                await self.sleep(min(due - now, MAX_NAP))
                continue
            self.next_at = now
            delay = await self.attempt()
            if delay is not None:
                self.next_at = self.clock() + delay
                await self.sleep(delay)

    async def attempt(self) -> float | None:
        """One order; the retry delay after a failure, None after a success."""
        label = self.store.label
        try:
            await in_daemon_thread(
                self.order, self.store.request, self.store.files, self.challenges
            )
            await asyncio.to_thread(self.store.load)
        except (AcmeError, ConfigError) as exc:
            kind = exc.kind if isinstance(exc, AcmeError) else "saved"
            return self._failed(label, kind, exc.message, exc.hint)
        except Exception as exc:  # a bug or a library surprise: logged, retried
            return self._failed(label, "unexpected", repr(exc), "")
        self.backoff.reset()
        self.failures, self.last_error = 0, ""
        span = self.store.span
        assert span is not None and self.store.info is not None
        event(
            log,
            logging.INFO,
            "acme certificate issued",
            name=label,
            subject=self.store.info.subject,
            not_after=_stamp(span[1]),
            renew_at=_stamp(renew_at(*span)),
        )
        return None

    def _failed(self, label: str, kind: str, message: str, hint: str) -> float:
        delay = self.backoff.next_delay()
        self.failures += 1
        self.last_error = f"{kind}: {message}"
        if self.store.context is None:
            self.store.error = f"no certificate yet: {self.last_error}"
        event(
            log,
            logging.ERROR,
            "acme order failed",
            name=label,
            kind=kind,
            reason=message,
            retry_in=f"{delay:.0f}s",
            failures=self.failures,
            hint=hint or RETRY_HINT,
        )
        return delay

    def snapshot(self) -> dict[str, Any]:
        return {
            "acme_next": self.next_at,
            "acme_error": self.last_error,
            "acme_failures": self.failures,
        }


async def in_daemon_thread(fn: Callable[..., None], *args: Any) -> None:
    """Run a blocking order in a thread of its own, never on the event loop. Unlike
    ``asyncio.to_thread`` the thread is a daemon: an agent that stops mid-order does not
    wait for the CA (up to the order's timeouts); what the order writes is atomic."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if done.cancelled():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # handed to the awaiting task, which judges it
            outcome: BaseException | None = exc
        else:
            outcome = None
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="acme order", daemon=True).start()
    await done


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


class AcmeService:
    """The renewers of one agent, kept across reloads while a tunnel's settings stay."""

    def __init__(self) -> None:
        self.challenges = Challenges()
        self.renewers: dict[str, tuple[AcmeRenewer, asyncio.Task[None]]] = {}
        self.started = False

    def adopt(self, stores: dict[str, CertStore]) -> dict[str, CertStore]:
        """``stores`` with the live store of each acme tunnel whose settings did not change
        (a reload keeps its certificate and its renewer)."""
        out = dict(stores)
        for label, store in stores.items():
            running = self.renewers.get(label)
            if not isinstance(store, AcmeCertStore) or running is None:
                continue
            old = running[0].store
            if old.tunnel == store.tunnel and old.files.cert == store.files.cert:
                out[label] = old
        return out

    def sync(self, stores: dict[str, CertStore]) -> None:
        """Start a renewer per acme store that has none; stop those whose store left."""
        for label, (renewer, task) in list(self.renewers.items()):
            if stores.get(label) is not renewer.store:
                task.cancel()
                del self.renewers[label]
        for label, store in stores.items():
            if isinstance(store, AcmeCertStore) and label not in self.renewers:
                renewer = AcmeRenewer(store, self.challenges)
                task = asyncio.create_task(renewer.run(), name=f"acme {label}")
                task.add_done_callback(_report)
                self.renewers[label] = (renewer, task)

    def snapshot(self, label: str) -> dict[str, Any]:
        running = self.renewers.get(label)
        return running[0].snapshot() if running else {}

    async def close(self) -> None:
        tasks = [task for _, task in self.renewers.values()]
        self.renewers = {}
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        event(
            log,
            logging.ERROR,
            "acme renewer failed",
            task=task.get_name(),
            error=repr(task.exception()),
        )
