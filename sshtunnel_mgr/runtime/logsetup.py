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

The text form, exactly: ``NAME WORDS key=VALUE key=VALUE``, where VALUE is either a bare
token (``_PLAIN``) or a JSON string (it starts with ``"``), so a strict reader can always
tell a field from a value. A record that did not come from ``event`` (asyncssh's, say) is
rendered as ``log msg="…"`` and a traceback's lines are indented with ``  | ``: no record can
make a line that reads as one of our events. Text that is not valid Unicode (bytes, or a
``str`` with lone surrogates from ``surrogateescape``) is shown with ``\\xNN`` escapes, in
the text and the JSON form alike; a text value longer than ``MAX_VALUE`` is cut. In JSON, a
field named like one of the record's own keys (``event``, ``level``, ...) is kept as
``event_``. ``tests/unit/test_log_calls.py`` checks that nothing else in the package logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import TextIO

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

FIELDS = "sshtun_fields"  # LogRecord attribute holding the event's fields
EVENT = "sshtun_event"  # LogRecord attribute holding the event's name

# A value made only of these characters is written bare; anything else is quoted.
_PLAIN = re.compile(r"[A-Za-z0-9._:/@+,\-\[\]*%#~()]+")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_]")
FOREIGN = "log"  # the event name of a record that did not come from ``event``
# A longer text value is cut (a peer may send a 30 KB destination; the log stays bounded).
MAX_VALUE = 1024


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
    """Any value as valid Unicode: undecodable bytes and lone surrogates become ``\\xNN``."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:  # surrogateescape'd bytes (file names, os.environ): show the bytes
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")
    return text


def _clip(value: object) -> object:
    if isinstance(value, str | bytes | bytearray) and len(value) > MAX_VALUE:
        return f"{_as_text(value[:MAX_VALUE])}...(+{len(value) - MAX_VALUE} more)"
    return value


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return _as_text(value)


def _field_name(key: str) -> str:
    """Field names are ours, but never let one carry a space, ``=`` or a newline."""
    return key if _KEY.fullmatch(key) else _KEY_BAD.sub("_", key) or "_"


def render_event(name: str, fields: Mapping[str, object]) -> str:
    """``name k=v k=v`` with every value rendered by ``render_value``."""
    parts = [escape_line(name)]
    parts += [f"{_field_name(key)}={render_value(value)}" for key, value in fields.items()]
    return " ".join(parts)


def event(
    logger: logging.Logger,
    level: int,
    name: str,
    /,
    *,
    exc_info: BaseException | bool | None = None,
    **fields: object,
) -> None:
    """Log one event with its fields (the only way the package logs what peers chose).
    A trailing underscore is dropped from a field name: ``from_=`` logs ``from=``.
    ``exc_info`` adds a traceback (an exception, or True for the one being handled)."""
    if logger.isEnabledFor(level):
        fields = {_field_name(k.removesuffix("_")): _clip(v) for k, v in fields.items()}
        logger.log(
            level,
            "%s",
            render_event(name, fields),
            exc_info=exc_info,
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
            "event": getattr(record, EVENT, None) or FOREIGN,
        }
        for key, value in fields.items():  # a field never hides ts, level, event, msg, ...
            name = f"{key}_" if key in data or key in ("msg", "exc") else key
            data[name] = _json_value(value)
        data["msg"] = _as_text(message)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """The text form. A message that did not come from ``event`` (a library's) becomes
    ``log msg="…"``, and traceback lines are indented, so no record can write a line that
    reads as one of our events."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if getattr(record, FIELDS, None) is None:
            record.message = render_event(FOREIGN, {"msg": record.message})
        return super().formatMessage(record)

    def formatException(self, ei: _ExcInfo) -> str:
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "\n".join("  | " + escape_line(line) for line in text.splitlines())


def escape_line(text: str) -> str:
    """``text`` kept on one printable line: control and other non-printable characters
    (newlines, escape sequences, U+2028, bidi controls) and invalid Unicode become backslash
    escapes; printable text (non-ASCII letters included) is returned unchanged."""
    text = _as_text(text)
    return text if text.isprintable() else text.translate(_UNPRINTABLE)


class _Unprintable(dict[int, str]):
    """``str.translate`` table for ``escape_line``, filled on demand."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if char.isprintable():
            value = char
        elif char in "\n\r\t":
            value = repr(char)[1:-1]
        elif code < 0x100:
            value = f"\\x{code:02x}"
        elif code < 0x10000:
            value = f"\\u{code:04x}"
        else:
            value = f"\\U{code:08x}"
        self[code] = value
        return value


_UNPRINTABLE = _Unprintable()


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to ``sys.stderr`` as it is when a record is emitted, not as it was when
    logging was set up (as ``logging.lastResort`` does). The CLI may be run in-process
    while ``sys.stderr`` is a capture stream that is closed afterwards (a test runner's);
    a record logged later goes to the stderr of that moment instead of printing a
    "--- Logging error ---" traceback about the closed one. A record emitted while stderr
    itself is closed (interpreter shutdown, a closed capture) has nowhere to go: dropped."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]  # as logging._StderrHandler
        return sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        if _usable(sys.stderr):
            super().emit(record)

    def flush(self) -> None:
        if _usable(sys.stderr):
            super().flush()


def _usable(stream: TextIO | None) -> bool:
    return stream is not None and not getattr(stream, "closed", False)


def setup_logging(verbose: int = 0, quiet: bool = False, fmt: str = "text") -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    handler = StderrHandler()
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
