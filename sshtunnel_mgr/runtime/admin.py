"""The local admin socket: one JSON request line in, one JSON response line out.

A unix socket of mode 0600 in a directory of mode 0700, so only its owner (and root) can
ask. ``sshtun status`` and ``sshtun reload`` talk to a running agent or bastion through it.

Neither end takes the other on trust (the rules, as pure decisions, are in
``adminpolicy``): the server binds only into a directory it owns, mode 0700, not a
symlink (it creates a missing one 0700), and answers only clients of its own uid or root
(``SO_PEERCRED``); the client checks the socket's directory the same way and the uid of the
process that serves it before it sends a request (``keys rotate`` sends a private key) or
believes an answer. A check that fails raises ``UnsafeAdminSocket`` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sshtunnel_mgr.core import adminpolicy
from sshtunnel_mgr.core.errors import SshtunError, UnsafeAdminSocket
from sshtunnel_mgr.runtime.asyncutil import TaskSet
from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger("sshtunnel_mgr.runtime.admin")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024
# At the stop, how long a request being answered may still take, then once cancelled.
STOP_GRACE = 5.0
CANCEL_TIMEOUT = 5.0
_STOPPED = {"ok": False, "error": "the service stopped before it answered"}
_CLIENT_HINT = (
    "if you did not make that directory, someone else did: remove it and restart the "
    "service, or set admin_socket in the config to a path in a directory only you own"
)


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


def peer_uid(sock: Any) -> int | None:
    """The uid of the process at the other end of a connected unix socket, as the kernel
    reports it (``SO_PEERCRED``); None where the platform cannot tell."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("iII"))
    _pid, uid, _gid = struct.unpack("iII", creds)
    return int(uid)


def path_facts(directory: Path) -> adminpolicy.PathFacts:
    """``lstat`` facts about a directory and its parent (OSError if it is not there)."""
    directory = Path(os.path.abspath(directory))
    st = os.lstat(directory)
    parent = os.stat(directory.parent)
    return adminpolicy.PathFacts(
        is_symlink=stat.S_ISLNK(st.st_mode),
        is_dir=stat.S_ISDIR(st.st_mode),
        uid=st.st_uid,
        mode=st.st_mode,
        parent_uid=parent.st_uid,
        parent_mode=parent.st_mode,
    )


def own_directory(directory: Path) -> int:
    """Create the socket's directory 0700 if missing, verify it is ours (mode, owner, not a
    symlink) and return it opened (O_NOFOLLOW), so the caller can check it did not change.
    UnsafeAdminSocket if it is not ours to bind into."""
    directory = Path(os.path.abspath(directory))
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    problem = adminpolicy.server_dir_problem(str(directory), path_facts(directory), os.geteuid())
    if problem:
        raise UnsafeAdminSocket(problem)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    if not _same(fd, directory):
        os.close(fd)
        raise UnsafeAdminSocket(f"{directory} changed while it was checked")
    return fd


def _same(fd: int, directory: Path) -> bool:
    opened, named = os.fstat(fd), os.lstat(directory)
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


class AdminServer:
    """Serves ``handler`` on the socket at ``path``; each request is a task of its own,
    kept until it ends, so ``stop()`` can let it finish or cancel it (asyncio's
    ``wait_closed()`` waits for none of them on Python 3.11)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._requests = TaskSet(_request_failed)

    async def start(self) -> bool:
        """Bind the socket; False (with a warning saying why) if it cannot be created or its
        directory is not this process's own (the service runs on without it)."""
        try:
            fd = own_directory(self.path.parent)
        except (OSError, UnsafeAdminSocket) as exc:
            reason = exc.message if isinstance(exc, SshtunError) else str(exc)
            event(log, logging.WARNING, "admin socket disabled", path=self.path, reason=reason)
            return False
        try:
            if await _answers(self.path):
                event(
                    log,
                    logging.WARNING,
                    "admin socket disabled",
                    path=self.path,
                    reason="another sshtun process is serving it",
                )
                return False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # stale, from a process that is gone
            old = os.umask(0o177)
            try:
                self._server = await asyncio.start_unix_server(self._accept, str(self.path))
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            if not _same(fd, self.path.parent):  # swapped under us: unlink nothing in it
                self._server.close()
                self._server = None
                raise UnsafeAdminSocket(f"{self.path.parent} was replaced while binding")
        except (OSError, UnsafeAdminSocket) as exc:
            reason = exc.message if isinstance(exc, SshtunError) else str(exc)
            event(log, logging.WARNING, "admin socket disabled", path=self.path, reason=reason)
            return False
        finally:
            os.close(fd)
        event(log, logging.INFO, "admin socket", path=self.path)
        return True

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._requests.spawn(self._serve(reader, writer), "admin request")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = peer_uid(writer.get_extra_info("socket"))
            line = await asyncio.wait_for(reader.readline(), 10)
            refused = adminpolicy.server_peer_problem(peer, os.geteuid())
            if refused:  # read first, so the client reads the reason, not a broken pipe
                event(log, logging.WARNING, "admin refused", peer_uid=peer, reason=refused)
                writer.write(json.dumps({"ok": False, "error": f"refused: {refused}"}).encode())
                writer.write(b"\n")
                await writer.drain()
                return
            try:
                request = json.loads(line[:MAX_REQUEST] or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("request must be a JSON object")
                response = await self._handler(request)
            except (ValueError, KeyError) as exc:
                response = {"ok": False, "error": f"bad request: {exc}"}
            except asyncio.CancelledError:  # stop(): the answer goes out as the socket closes
                writer.write(json.dumps(_STOPPED).encode() + b"\n")
                raise
            writer.write(json.dumps(response).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError, ValueError):  # ValueError: a line over the limit
            pass
        finally:
            writer.close()

    def close(self) -> None:
        """Stop listening and remove the socket file (requests being answered go on;
        ``stop()`` ends them)."""
        if self._server is not None and self._server.is_serving():
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def stop(self) -> None:
        """Stop listening, give the requests being answered ``STOP_GRACE`` seconds to
        finish, then cancel the rest (each is told the service stopped) and wait for them,
        at most ``CANCEL_TIMEOUT`` seconds: none outlives the service."""
        if self._server is not None:
            self.close()
            await self._server.wait_closed()
            self._server = None
        grace = STOP_GRACE
        if len(self._requests) and grace > 0:
            with contextlib.suppress(TimeoutError):  # cancelling the wait leaves them running
                await asyncio.wait_for(self._requests.wait(), grace)
        left = await self._requests.cancel_all(CANCEL_TIMEOUT)
        if left:
            event(log, logging.ERROR, "tasks did not end", tasks=",".join(left))


def _request_failed(name: str, exc: BaseException) -> None:
    event(log, logging.ERROR, "admin request failed", error=repr(exc), exc_info=exc)


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


# An answer is one JSON line: a bastion's status with 10,000 names is a few MB (asyncio's
# default 64 KiB limit failed at ~300 names). The server was checked (check_server) first.
ANSWER_LIMIT = 64 * 1024 * 1024


async def query(path: Path, request: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """Ask a running agent or bastion; SshtunError if nobody answers, UnsafeAdminSocket
    (before anything is sent) if the socket's directory or the process serving it is not
    one this user can trust."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path), limit=ANSWER_LIMIT), timeout
        )
    except FileNotFoundError:
        raise SshtunError(
            f"no admin socket at {path}",
            hint="is the service running? (systemctl status sshtun-agent / sshtun-bastion)",
        ) from None
    except (OSError, TimeoutError) as exc:
        raise SshtunError(f"cannot reach the admin socket {path}: {exc}") from None
    try:
        check_server(path, writer.get_extra_info("socket"))
    except BaseException:
        writer.close()
        raise
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError) as exc:
        raise SshtunError(f"admin socket {path} did not answer: {exc}") from None
    except ValueError:  # a line over ANSWER_LIMIT
        raise SshtunError(f"admin socket {path} sent an answer over {ANSWER_LIMIT} bytes") from None
    finally:
        writer.close()
    try:
        answer = json.loads(line)
    except ValueError:
        raise SshtunError(f"admin socket {path} sent an invalid answer") from None
    if not isinstance(answer, dict):
        raise SshtunError(f"admin socket {path} sent an invalid answer")
    return answer


def check_server(path: Path, sock: Any) -> None:
    """Raise UnsafeAdminSocket unless the socket's directory and the uid serving it are ones
    this process trusts (``adminpolicy``)."""
    me = os.geteuid()
    directory = Path(os.path.abspath(path)).parent
    try:
        facts = path_facts(directory)
    except OSError as exc:
        raise UnsafeAdminSocket(f"cannot check the admin socket's directory: {exc}") from None
    problem = adminpolicy.client_dir_problem(str(directory), facts, me)
    if problem:
        raise UnsafeAdminSocket(f"refusing the admin socket {path}: {problem}", hint=_CLIENT_HINT)
    peer = peer_uid(sock)
    if peer is not None and peer not in adminpolicy.trusted_peers(facts, me):
        raise UnsafeAdminSocket(
            f"refusing the admin socket {path}: the process serving it runs as uid {peer}, "
            f"not as uid {me}, root or the directory's owner",
            hint="another local user may be impersonating the service: stop it, remove the "
            "socket and restart the service",
        )
