"""Logging: one event per line on stderr (journald captures it), as fields, never re-parsed.

Code logs an *event* with typed fields::

    event(log, logging.INFO, "publish", conn=3, key=label, name=name, port=22)

The text form is ``publish conn=3 key=SHA256:… name=homebox port=22``; ``--log-format json``
gives one JSON object with the same fields. Field names are ours; field *values* may come
from a peer (names, user names, destinations, reasons quoting them), so the text form
quotes and escapes every value that is not a plain token: a value can never end the line,
start a new ``key=value`` pair, or smuggle control or non-ASCII characters into the log.
Under systemd (``$JOURNAL_STREAM``) the text form drops its timestamp: the journal has its
own. Keys' fingerprints are logged, never keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping

FIELDS = "sshtun_fields"  # LogRecord attribute holding the event's fields
EVENT = "sshtun_event"  # LogRecord attribute holding the event's name

# A value made only of these characters is written bare; anything else is quoted.
_PLAIN = re.compile(r"[A-Za-z0-9._:/@+,\-\[\]*%#~()]+")


def render_value(value: object) -> str:
    """One field value for the text form: bare if it is a plain token, else a JSON string
    (quotes, backslashes, control and non-ASCII characters escaped)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    text = _as_text(value)
    if _PLAIN.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=True)


def _as_text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return _as_text(value)


def render_event(name: str, fields: Mapping[str, object]) -> str:
    """``name k=v k=v`` with every value rendered by ``render_value``."""
    parts = [name]
    parts += [f"{key}={render_value(value)}" for key, value in fields.items()]
    return " ".join(parts)


def event(logger: logging.Logger, level: int, name: str, /, **fields: object) -> None:
    """Log one event with its fields (the only way the package logs what peers chose).
    A trailing underscore is dropped from a field name: ``from_=`` logs ``from=``."""
    if logger.isEnabledFor(level):
        fields = {key.removesuffix("_"): value for key, value in fields.items()}
        logger.log(
            level,
            "%s",
            render_event(name, fields),
            extra={EVENT: name, FIELDS: fields},
            stacklevel=2,
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, the event's fields, msg."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields: Mapping[str, object] = getattr(record, FIELDS, None) or {}
        data: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, EVENT, None) or message,
        }
        for key, value in fields.items():
            data.setdefault(key, _json_value(value))
        data["msg"] = message
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """The text form; a message that did not come from ``event`` (a library's) is escaped
    too, so no record can write a second line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if getattr(record, FIELDS, None) is None:
            record.message = _one_line(record.message)
        return super().formatMessage(record)


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=True)[1:-1]


def setup_logging(verbose: int = 0, quiet: bool = False, fmt: str = "text") -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # asyncssh is chatty at INFO (every channel open); keep it to warnings unless -vv.
    logging.getLogger("asyncssh").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
