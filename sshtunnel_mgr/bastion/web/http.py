"""The HTTP listener's reader: route by ``Host``, parsed with h11, bounded and slowloris-proof.

The request head must be complete within ``head_max_bytes`` and ``head_timeout`` (one
deadline for the whole head, however slowly it trickles in). Then, for a public name:

- published on port 443 (HTTPS wins): ``/.well-known/acme-challenge/*`` passes through to
  the agent's ``name:80`` publication (an agent publishes ``name:80`` beside ``name:443``
  to answer ACME HTTP-01 challenges: on such a name port 80 carries the challenges only),
  or 404 when there is none; every other request is redirected to https (308). A challenge
  passes alone: its head is re-sent with ``Connection: close`` (no body allowed), the agent
  gets EOF after it, and whatever the client sends next on that connection is dropped, so a
  keep-alive second request can never reach the agent unchecked;
- published on port 80 only: the connection passes through (plain HTTP to the home box);
- anything else: 404, no details. A malformed or oversized head: 400. A source over its
  cap of new connections to the name: 429. The head read is replayed to the agent as is.
"""

from __future__ import annotations

import h11

from sshtunnel_mgr.bastion.web.conn import Decision, Forward, Front, Reply
from sshtunnel_mgr.bastion.web.decide import Refused, pick, public_name, serving
from sshtunnel_mgr.core.hostport import InvalidAddress, split_host_port

HTTP_PORT = 80
HTTPS_PORT = 443
ACME_PREFIX = b"/.well-known/acme-challenge/"
_STATUS = {
    308: "Permanent Redirect",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests",
    503: "Service Unavailable",
}
HOP_BY_HOP = {b"connection", b"keep-alive", b"upgrade", b"proxy-connection"}


def response(status: int, *headers: tuple[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_STATUS[status]}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines += ["Content-Length: 0", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("ascii")


def one_request_head(request: h11.Request) -> bytes:
    """``request``'s head as the agent gets it when only this request may pass: its own
    headers (their spelling kept) without hop-by-hop ones, and ``Connection: close``."""
    lines = [b"%s %s HTTP/%s" % (request.method, request.target, request.http_version)]
    lines += [
        name + b": " + value
        for name, value in request.headers.raw_items()
        if name.lower() not in HOP_BY_HOP
    ]
    return b"\r\n".join([*lines, b"Connection: close", b"", b""])


def host_name(value: bytes) -> str:
    """The name in a ``Host`` header, without its port (``[v6]`` stays, and is refused; so
    is anything whose port is not one: it is returned whole, never a name)."""
    text = value.decode("ascii", "replace").strip()
    if text.startswith("["):
        return text.partition("]")[0] + "]"
    try:
        return split_host_port(text, 0, allow_zero=True)[0]
    except InvalidAddress:
        return text


class HttpReader:
    via = "http"

    def __init__(self, front: Front) -> None:
        self.front = front
        self.timeout = front.config.head_timeout
        self.max_bytes = front.config.head_max_bytes
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_bytes)
        self._fed = 0

    def feed(self, buffer: bytes, source_ip: str) -> Decision | None:
        self._h11.receive_data(buffer[self._fed :])
        self._fed = len(buffer)
        try:
            found = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            if len(buffer) > self.max_bytes:
                reason = f"request head over {self.max_bytes} bytes"
                return Reply(response(400), reason, "big_head", note="400")
            return Reply(response(400), f"bad request head: {exc}", "bad_head", note="400")
        if found is h11.NEED_DATA:
            if len(buffer) > self.max_bytes:
                reason = f"request head over {self.max_bytes} bytes"
                return Reply(response(400), reason, "big_head", note="400")
            return None
        if not isinstance(found, h11.Request):
            return Reply(response(400), "not a request", "bad_head", note="400")
        hosts = [v for k, v in found.headers if k == b"host"]
        if len(hosts) != 1:
            return Reply(response(400), "no Host header (or several)", "bad_head", note="400")
        return self._route(host_name(hosts[0]), found, source_ip)

    def _challenge(self, request: h11.Request, name: str) -> Reply | None:
        """Why this ACME challenge request may not pass alone (None: it may)."""
        try:
            after = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            return Reply(response(400), f"bad request head: {exc}", "bad_head", name, "400")
        if not isinstance(after, h11.EndOfMessage):
            reason = f"ACME challenge for {name} with a request body"
            return Reply(response(400), reason, "bad_head", name, note="400")
        return None

    def _route(self, host: str, request: h11.Request, source_ip: str) -> Decision:
        target = request.target
        front = self.front
        public = public_name(front.policy, front.rate, host, source_ip)
        if isinstance(public, Refused):
            status = 429 if public.counter == "rate" else 404
            return Reply(response(status), public.reason, public.counter, host, note=str(status))
        name, state = public.name, front.state
        plain, tls = serving(state, name, HTTP_PORT), serving(state, name, HTTPS_PORT)
        if tls:
            if target.startswith(ACME_PREFIX):
                if plain:
                    bad = self._challenge(request, name)
                    if bad is not None:
                        return bad
                    head = one_request_head(request)
                    return Forward(pick(state, plain), name, head, one_request=True)
                reason = f"ACME challenge for {name} and no {name}:{HTTP_PORT} publication"
                return Reply(response(404), reason, "unpublished", name, note="404")
            port = front.https_port
            where = name if port == HTTPS_PORT else f"{name}:{port}"
            path = target.decode("ascii") if target.startswith(b"/") else "/"
            return Reply(
                response(308, ("Location", f"https://{where}{path}")), name=name, note="308"
            )
        if plain:
            return Forward(pick(state, plain), name)
        reason = f"{name} is not published on {HTTP_PORT} or {HTTPS_PORT}"
        return Reply(response(404), reason, "unpublished", name, note="404")

    def busy(self, reason: str, name: str) -> Reply:
        """The publishing key is at its cap: 503."""
        return Reply(response(503), reason, "key_cap", name, note="503")

    def timed_out(self) -> Reply:
        return Reply(b"", f"no request head in {self.timeout:g} s", "slow", note="close")

    def closed_early(self) -> Reply:
        return Reply(b"", "closed before its request head was complete", "early", note="close")
