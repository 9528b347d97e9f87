"""The HTTPS listener's reader: route by the SNI of the ClientHello, never decrypting.

Everything but a complete ClientHello that names a public, published name ends in a
fatal ``unrecognized_name`` alert (when the bytes were TLS at all) or a plain close, the
same for every reason: a client learns nothing about which names exist.
"""

from __future__ import annotations

from sshtunnel_mgr.bastion.web.conn import Decision, Forward, Front, Reply
from sshtunnel_mgr.bastion.web.decide import Refused, pick, public_name, serving
from sshtunnel_mgr.core.tlshello import (
    ALERT_UNRECOGNIZED_NAME,
    NEED_MORE,
    Bad,
    Hello,
    next_boundary,
    read_hello,
)

HTTPS_PORT = 443  # the published port an HTTPS name is routed to


class HelloReader:
    via = "https"

    def __init__(self, front: Front) -> None:
        self.front = front
        self.timeout = front.config.hello_timeout
        self.max_bytes = front.config.hello_max_bytes
        self._ready_at = 1  # the buffer's length at which a parse can tell more

    def feed(self, buffer: bytes, source_ip: str) -> Decision | None:
        if len(buffer) < self._ready_at:
            return None  # inside a record: a hello sent a byte a segment costs no reparse
        found = read_hello(buffer, self.max_bytes)
        if found is NEED_MORE:
            self._ready_at = next_boundary(buffer)
            return None
        if isinstance(found, Bad):
            tls = buffer[:1] == b"\x16"
            return Reply(
                ALERT_UNRECOGNIZED_NAME if tls else b"",
                found.reason,
                "bad_hello",
                note="alert" if tls else "close",
            )
        if not isinstance(found, Hello):
            return None
        public = public_name(self.front.policy, self.front.rate, found.sni, source_ip)
        if isinstance(public, Refused):
            return self._unrecognized(public, found.sni)
        routes = serving(self.front.state, public.name, HTTPS_PORT)
        if not routes:
            return self._unrecognized(
                Refused(f"{public.name}:{HTTPS_PORT} is not published", "unpublished"),
                public.name,
            )
        return Forward(pick(self.front.state, routes), public.name)

    @staticmethod
    def _unrecognized(refused: Refused, name: str | None) -> Reply:
        return Reply(
            ALERT_UNRECOGNIZED_NAME, refused.reason, refused.counter, name or "", note="alert"
        )

    def busy(self, reason: str, name: str) -> Reply:
        """The publishing key is at its cap: the same alert as every other refusal."""
        return Reply(ALERT_UNRECOGNIZED_NAME, reason, "key_cap", name, note="alert")

    def timed_out(self) -> Reply:
        return Reply(b"", f"no ClientHello in {self.timeout:g} s", "slow", note="close")

    def closed_early(self) -> Reply:
        return Reply(b"", "closed before its ClientHello was complete", "early", note="close")
