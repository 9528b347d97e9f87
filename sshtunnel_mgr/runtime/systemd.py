"""sd_notify in one tiny module that never raises (systemd may not be there at all)."""

from __future__ import annotations

import os
import socket


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings systemd expects (half its timeout), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if (
        not (usec.isascii() and usec.isdigit())
        or int(usec) == 0
        or (pid and pid != str(os.getpid()))
    ):
        return None
    return int(usec) / 2_000_000


def notify(message: str) -> bool:
    """Send ``message`` (e.g. "READY=1") to $NOTIFY_SOCKET; False if there is none or it fails."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True
