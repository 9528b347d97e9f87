"""HTTP/1.1 from a client whose TLS the agent ended, to the tunnel's local target.

Both sides are parsed with h11 (never by hand). Every request of a keep-alive connection
is forwarded with the client's own ``X-Forwarded-For``/``X-Forwarded-Proto``/``Forwarded``/
``X-Real-IP`` removed (the client is not trusted to say who it is) and ours added: the
address the bastion gave as the channel's originator, and ``https``. A request head must
be complete within ``head_timeout`` seconds (counted from the end of the previous
response) and ``MAX_HEAD`` bytes, or the client gets 408/431/400 and the connection is
closed. When the target answers an Upgrade with 101 (websockets), the bytes are spliced
raw from then on. The target connection is re-opened for a request when the target has
closed it between requests. ``count`` (if given) hears each forwarded request
("requests"), each upgrade ("websockets") and each answer the agent gave itself
("refused_408", ...): the tunnel's web counters (stats.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import h11

from sshtunnel_mgr.agent.web.tlsstream import ByteStream

MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0
READ = 65536
DROPPED = {b"x-forwarded-for", b"x-forwarded-proto", b"forwarded", b"x-real-ip"}

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[[], Awaitable[Streams]]
Headers = list[tuple[bytes, bytes]]


def forwarded_headers(raw: Headers, client_ip: str | None, proto: str = "https") -> Headers:
    """The request's headers as the target gets them (pure)."""
    out = [(name, value) for name, value in raw if name.lower() not in DROPPED]
    if client_ip:
        out.append((b"X-Forwarded-For", client_ip.encode("ascii")))
    out.append((b"X-Forwarded-Proto", proto.encode("ascii")))
    return out


async def splice(
    client: ByteStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    to_target: bytes = b"",
    to_client: bytes = b"",
) -> None:
    """Raw bytes both ways until both directions have ended (or one fails)."""

    async def up() -> None:
        if to_target:
            writer.write(to_target)
        while data := await client.recv(READ):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def down() -> None:
        if to_client:
            await client.send(to_client)
        while data := await reader.read(READ):
            await client.send(data)
        await client.send_eof()

    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class HttpForwarder:
    """One client connection's requests, forwarded one cycle at a time."""

    def __init__(
        self,
        client: ByteStream,
        target: Streams,
        connect: Connect,
        client_ip: str | None,
        *,
        head_timeout: float | None = None,
        idle_timeout: float | None = None,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.connect = connect
        self.client_ip = client_ip
        self.head_timeout = HEAD_TIMEOUT if head_timeout is None else head_timeout
        self.idle_timeout = IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        self.c = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.reader: asyncio.StreamReader | None = target[0]
        self.writer: asyncio.StreamWriter | None = target[1]
        self.t = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.requests = 0
        self._received = 0  # bytes read from the client so far
        self._count = count or (lambda kind: None)

    async def run(self) -> None:
        try:
            while True:
                request = await self._next_request()
                if request is None:
                    return
                self.requests += 1
                self._count("requests")
                if not await self._ensure_target():
                    await self._reply(502, "the local service is not reachable")
                    return
                outcome = await self._exchange(request)
                if outcome == "switched":
                    self._count("websockets")
                    await self._switch()
                    return
                if outcome != "done" or not self._both_done():
                    return
                self.c.start_next_cycle()
                self.t.start_next_cycle()
        finally:
            self._close_target()

    # The client side --------------------------------------------------------------------
    async def _client_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.c.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            data = await self.client.recv(READ)
            self._received += len(data)
            self.c.receive_data(data)

    async def _next_request(self) -> h11.Request | None:
        timeout = self.head_timeout if self.requests == 0 else self.idle_timeout
        # h11 caps only a head still incomplete: one that completes in the read that
        # crosses MAX_HEAD is measured here (the bytes it took, less what follows it).
        start = len(self.c.trailing_data[0]) - self._received
        try:
            async with asyncio.timeout(timeout):
                event = await self._client_event()
            if start + self._received - len(self.c.trailing_data[0]) > MAX_HEAD:
                await self._reply(431, "request head too large")
                return None
        except TimeoutError:
            await self._reply(408, "request head not received in time")
            return None
        except h11.RemoteProtocolError as exc:
            await self._reply(exc.error_status_hint, "bad request")
            return None
        return event if isinstance(event, h11.Request) else None

    async def _to_client(self, event: h11.Event) -> None:
        data = self.c.send(event)
        if data:
            await self.client.send(data)

    async def _reply(self, status: int, text: str) -> None:
        """A short error answer, if HTTP still allows one here; then the connection ends."""
        if self.c.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        self._count(f"refused_{status}")
        body = (text + "\n").encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            await self._to_client(h11.Response(status_code=status, headers=headers))
            await self._to_client(h11.Data(data=body))
            await self._to_client(h11.EndOfMessage())
        except (h11.LocalProtocolError, ConnectionError):
            return

    # The target side --------------------------------------------------------------------
    async def _ensure_target(self) -> bool:
        if self.reader is not None and not self.reader.at_eof() and self.t.our_state is h11.IDLE:
            return True
        self._close_target()
        try:
            self.reader, self.writer = await self.connect()
        except (OSError, TimeoutError):
            return False
        self.t = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        return True

    def _close_target(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def _to_target(self, event: h11.Event) -> None:
        assert self.writer is not None
        data = self.t.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _target_event(self) -> h11.Event | type[h11.PAUSED]:
        assert self.reader is not None
        while True:
            event = self.t.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            self.t.receive_data(await self.reader.read(READ))

    # One request and its response --------------------------------------------------------
    async def _exchange(self, request: h11.Request) -> str:
        """Forward one request and its response: "done", "switched" or "closed"."""
        headers = forwarded_headers(list(request.headers.raw_items()), self.client_ip)
        try:
            await self._to_target(
                h11.Request(method=request.method, target=request.target, headers=headers)
            )
        except h11.LocalProtocolError:
            await self._reply(400, "bad request")
            return "closed"
        except OSError:
            await self._reply(502, "the local service closed the connection")
            return "closed"
        upload = asyncio.ensure_future(self._upload())
        try:
            outcome = await self._download(upload)
        finally:
            if not upload.done():
                upload.cancel()  # answered before the body ended: the connection closes
                outcome = "closed"
            await asyncio.gather(upload, return_exceptions=True)
        return outcome

    async def _upload(self) -> None:
        """The request body, client to target."""
        while True:
            event = await self._client_event()
            if isinstance(event, h11.Data):
                await self._to_target(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self._to_target(h11.EndOfMessage(headers=event.headers))
                return
            else:
                raise ConnectionResetError("the client left during the request body")

    async def _download(self, upload: asyncio.Future[None]) -> str:
        """The response, target to client."""
        try:
            while True:
                event = await self._target_event()
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        await upload  # the client's h11 must have seen the whole request
                        await self._to_client(event)
                        return "switched"
                    await self._to_client(event)
                elif isinstance(event, h11.Response):
                    await self._to_client(
                        h11.Response(
                            status_code=event.status_code,
                            headers=list(event.headers.raw_items()),
                            reason=event.reason,
                        )
                    )
                elif isinstance(event, h11.Data):
                    await self._to_client(h11.Data(data=event.data))
                elif isinstance(event, h11.EndOfMessage):
                    await self._to_client(h11.EndOfMessage(headers=event.headers))
                    return "done"
                else:
                    await self._reply(502, "the local service closed the connection")
                    return "closed"
        except (h11.RemoteProtocolError, OSError):
            await self._reply(502, "the local service sent a broken response")
            return "closed"

    def _both_done(self) -> bool:
        return self.c.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE} and (
            self.t.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}
        )

    async def _switch(self) -> None:
        """After 101: whatever either side sent past the heads, then raw bytes."""
        assert self.reader is not None and self.writer is not None
        await splice(
            self.client,
            self.reader,
            self.writer,
            to_target=self.c.trailing_data[0],
            to_client=self.t.trailing_data[0],
        )
