"""An acme tunnel's port-80 side (``tls = "acme-http01"``): ``answer_http01``.

The bastion passes ``/.well-known/acme-challenge/*`` for a name published on 443 to the
agent's ``name:80`` publication. One request per connection, parsed with h11, its head
bounded in size and time: ``GET``/``HEAD /.well-known/acme-challenge/TOKEN`` gets the key
authorization of an order in progress (404 for any other token); anything else gets what
the bastion answers there, a 308 to https. The connection is closed after the answer.
"""

from __future__ import annotations

import asyncio
import re

import h11

from sshtunnel_mgr.agent.web.acme import Challenges
from sshtunnel_mgr.agent.web.tlsstream import ByteStream

PREFIX = b"/.well-known/acme-challenge/"
MAX_HEAD = 8 * 1024
HEAD_TIMEOUT = 10.0
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")  # base64url, as RFC 8555 section 8.3 says


def reply(request: h11.Request | None, challenges: Challenges, name: str) -> tuple[int, bytes]:
    """(status, body) for a request head (None: a bad one). Pure but for the lookup."""
    if request is None:
        return 400, b""
    target = request.target
    if target.startswith(PREFIX) and request.method in (b"GET", b"HEAD"):
        token = target[len(PREFIX) :].decode("ascii", "replace")
        answer = challenges.answer(token) if TOKEN.fullmatch(token) else None
        return (404, b"") if answer is None else (200, answer.encode("ascii"))
    return 308, b""


async def _head(stream: ByteStream, conn: h11.Connection) -> h11.Request | None:
    while True:
        found = conn.next_event()
        if isinstance(found, h11.Request):
            return found
        if found is not h11.NEED_DATA:
            return None
        data = await stream.recv(4096)
        if not data:
            return None
        conn.receive_data(data)


async def answer_http01(stream: ByteStream, challenges: Challenges, name: str) -> int:
    """Serve one request on ``stream``; returns the status sent (0: nothing sent)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        request = await asyncio.wait_for(_head(stream, conn), HEAD_TIMEOUT)
    except TimeoutError:
        return 0
    except h11.RemoteProtocolError:
        request = None
    status, body = reply(request, challenges, name)
    headers = [("Content-Length", str(len(body))), ("Connection", "close")]
    if status == 308:
        assert request is not None
        path = request.target.decode("ascii", "replace")
        headers.append(("Location", f"https://{name}{path if path.startswith('/') else '/'}"))
    if status == 200:
        headers.append(("Content-Type", "application/octet-stream"))
    head = [f"HTTP/1.1 {status} {_REASONS[status]}", *(f"{k}: {v}" for k, v in headers)]
    head_only = request is not None and request.method == b"HEAD"
    data = ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + (b"" if head_only else body)
    await stream.send(data)
    await stream.send_eof()
    return status


_REASONS = {200: "OK", 308: "Permanent Redirect", 400: "Bad Request", 404: "Not Found"}
