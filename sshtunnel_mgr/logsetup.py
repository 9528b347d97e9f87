"""Logging for the CLI: one line per event on stderr (journald captures it).

Messages are ``event key=value ...``. ``--log-format json`` turns each into one JSON
object with those fields parsed out. Under systemd (``$JOURNAL_STREAM``) the text form
drops its timestamp: the journal has its own. Keys' fingerprints are logged, never keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys

_FIELD = re.compile(r"(?:^|\s)([a-z_]+)=(.*?)(?=\s[a-z_]+=|$)")


def parse_event(message: str) -> dict[str, str]:
    """``"publish conn=1 name=homebox"`` → ``{"event": "publish", "conn": "1", ...}``."""
    first = _FIELD.search(message)
    event = (message[: first.start()] if first else message).strip()
    fields = {"event": event}
    for key, value in _FIELD.findall(message):
        fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            **parse_event(message),
            "msg": message,
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(verbose: int = 0, quiet: bool = False, fmt: str = "text") -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # asyncssh is chatty at INFO (every channel open); keep it to warnings unless -vv.
    logging.getLogger("asyncssh").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
