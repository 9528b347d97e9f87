"""The local admin socket: one JSON request line in, one JSON response line out.

A unix socket of mode 0600 in a directory of mode 0700, so only its owner (and root) can
ask. ``sshtun status`` and ``sshtun reload`` talk to a running agent or bastion through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sshtunnel_mgr.errors import SshtunError

log = logging.getLogger("sshtunnel_mgr.admin")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024


def default_socket_path(role: str) -> Path:
    """Where a role's admin socket lives unless the config names one."""
    for env in ("RUNTIME_DIRECTORY",):
        if os.environ.get(env):
            return Path(os.environ[env].split(":")[0]) / f"{role}.sock"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "sshtun" / f"{role}.sock"
    if os.geteuid() == 0:
        return Path(f"/run/sshtun-{role}") / f"{role}.sock"  # the unit's RuntimeDirectory
    return Path(f"/tmp/sshtun-{os.geteuid()}") / f"{role}.sock"


class AdminServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> bool:
        """Bind the socket; False (with a warning) if it cannot be created."""
        if await _answers(self.path):
            log.warning(
                "admin socket disabled path=%s error=another sshtun process is serving it",
                self.path,
            )
            return False
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # stale, from a process that is gone
            old = os.umask(0o177)
            try:
                self._server = await asyncio.start_unix_server(self._serve, str(self.path))
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
        except OSError as exc:
            log.warning("admin socket disabled path=%s error=%s", self.path, exc)
            return False
        log.info("admin socket path=%s", self.path)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                request = json.loads(line[:MAX_REQUEST] or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("request must be a JSON object")
                response = await self._handler(request)
            except (ValueError, KeyError) as exc:
                response = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(response).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def query(path: Path, request: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """Ask a running agent or bastion; SshtunError if nobody answers."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except FileNotFoundError:
        raise SshtunError(
            f"no admin socket at {path}",
            hint="is the service running? (systemctl status sshtun-agent / sshtun-bastion)",
        ) from None
    except (OSError, TimeoutError) as exc:
        raise SshtunError(f"cannot reach the admin socket {path}: {exc}") from None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError) as exc:
        raise SshtunError(f"admin socket {path} did not answer: {exc}") from None
    finally:
        writer.close()
    try:
        answer = json.loads(line)
    except ValueError:
        raise SshtunError(f"admin socket {path} sent an invalid answer") from None
    if not isinstance(answer, dict):
        raise SshtunError(f"admin socket {path} sent an invalid answer")
    return answer
