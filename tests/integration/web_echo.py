"""A plain HTTP/1.1 server for the agent's TLS tests, run as its own process:
``python web_echo.py PORT_FILE [--proxy]``. It writes its port to PORT_FILE, then answers
every request with JSON: the request's headers, path, the PROXY header it read (with
``--proxy``, which it requires), and a per-connection number and request count (so a test
can tell keep-alive from new connections). ``Upgrade: websocket`` gets a real 101
(Sec-WebSocket-Accept) and then echoes each client text frame back, unmasked."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import sys
from pathlib import Path

import h11

from sshtunnel_mgr.core import proxyproto

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
connections = 0


async def read_proxy(reader: asyncio.StreamReader) -> dict[str, object]:
    data = b""
    while True:
        chunk = await reader.read(1)
        if not chunk:
            raise ConnectionError("no PROXY header")
        data += chunk
        found, size = proxyproto.parse(data)
        if size:
            assert size == len(data)
            if found is None:
                return {"src": None}
            return {"src": list(found.src), "dst": list(found.dst), "raw": data.hex()}
        if len(data) > 232:
            raise ConnectionError("PROXY header too long")


async def websocket(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes
) -> None:
    buf = rest
    while True:
        while len(buf) < 2:
            more = await reader.read(65536)
            if not more:
                return
            buf += more
        length = buf[1] & 0x7F
        head = 2
        if length == 126:
            length, head = struct.unpack("!H", buf[2:4])[0], 4
        need = head + 4 + length
        while len(buf) < need:
            more = await reader.read(65536)
            if not more:
                return
            buf += more
        mask, payload = buf[head : head + 4], buf[head + 4 : need]
        buf = buf[need:]
        text = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        reply = b"echo:" + text
        writer.write(bytes([0x81, len(reply)]) + reply)
        await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: bool) -> None:
    global connections
    connections += 1
    number = connections
    try:
        seen = await read_proxy(reader) if proxy else None
        conn = h11.Connection(h11.SERVER)
        count = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Request):
                count += 1
                headers = [[k.decode(), v.decode()] for k, v in event.headers.raw_items()]
                request = event
                body = b""
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                        continue
                    if isinstance(ev, h11.Data):
                        body += ev.data
                        continue
                    break  # EndOfMessage
                upgrade = dict(event.headers).get(b"upgrade", b"").lower()
                if upgrade == b"websocket":
                    key = dict(request.headers)[b"sec-websocket-key"]
                    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
                    writer.write(
                        conn.send(
                            h11.InformationalResponse(
                                status_code=101,
                                headers=[
                                    (b"Upgrade", b"websocket"),
                                    (b"Connection", b"Upgrade"),
                                    (b"Sec-WebSocket-Accept", accept),
                                ],
                            )
                        )
                    )
                    await writer.drain()
                    await websocket(reader, writer, conn.trailing_data[0])
                    return
                answer = json.dumps(
                    {
                        "path": request.target.decode(),
                        "headers": headers,
                        "proxy": seen,
                        "connection": number,
                        "request": count,
                        "body": len(body),
                    }
                ).encode()
                writer.write(
                    conn.send(
                        h11.Response(
                            status_code=200,
                            headers=[
                                (b"Content-Type", b"application/json"),
                                (b"Content-Length", str(len(answer)).encode()),
                            ],
                        )
                    )
                )
                writer.write(conn.send(h11.Data(data=answer)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                continue
            return
    except (ConnectionError, h11.ProtocolError):
        return
    finally:
        writer.close()


async def main() -> None:
    port_file, proxy = Path(sys.argv[1]), "--proxy" in sys.argv[2:]
    server = await asyncio.start_server(lambda r, w: handle(r, w, proxy), "127.0.0.1", 0)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
