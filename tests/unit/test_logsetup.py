"""The log renderer as tables: every value a peer may choose stays inside its own field."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from sshtunnel_mgr.runtime.logsetup import (
    JsonFormatter,
    TextFormatter,
    escape_line,
    event,
    render_event,
    render_value,
    setup_logging,
)


@pytest.mark.parametrize(
    ("name", "fields", "text"),
    [
        (
            "publish",
            {"conn": 1, "name": "homebox", "port": 22},
            "publish conn=1 name=homebox port=22",
        ),
        ("stopping", {}, "stopping"),
        (
            "auth refused",
            {"conn": 3, "from": "::1", "reason": "unknown key (user 'a')"},
            "auth refused conn=3 from=::1 reason=\"unknown key (user 'a')\"",
        ),
        ("x", {"ok": True, "none": None, "ratio": 0.5}, "x ok=true none=null ratio=0.5"),
        ("x", {"names": "a:22,b:80", "empty": ""}, 'x names=a:22,b:80 empty=""'),
        # A field name is ours, but even a bad one cannot start a second pair.
        ("x", {"a b=c": 1}, "x a_b_c=1"),
    ],
)
def test_render_event(name: str, fields: dict[str, object], text: str) -> None:
    assert render_event(name, fields) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("homebox", "homebox"),
        ("SHA256:abc+/x", "SHA256:abc+/x"),
        ("x key=SHA256:FORGED", '"x key=SHA256:FORGED"'),
        ("a\nb", '"a\\nb"'),
        ('q"uote', '"q\\"uote"'),
        ("back\\slash", '"back\\\\slash"'),
        ("\x1b[2J\r\x00", '"\\u001b[2J\\r\\u0000"'),
        ("nel\x85ls\u2028rtl\u202e", '"nel\\u0085ls\\u2028rtl\\u202e"'),
        ("caf\u00e9", '"caf\\u00e9"'),
        (b"\xff\xfe=", '"\\\\xff\\\\xfe="'),  # bytes that are not UTF-8: shown as \xNN
        ("x\udcff", '"x\\\\xff"'),  # surrogateescape'd byte
        ("x\ud800", '"x\\\\ud800"'),  # a lone surrogate
        (7, "7"),
        (-1, "-1"),
        (False, "false"),
    ],
)
def test_render_value(value: object, text: str) -> None:
    assert render_value(value) == text


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "plain text, with (punctuation) and caf\u00e9",
            "plain text, with (punctuation) and caf\u00e9",
        ),
        ("two\nlines", "two\\nlines"),
        ("cr\rtab\tesc\x1b", "cr\\rtab\\tesc\\x1b"),
        ("ls\u2028nbsp\u00a0", "ls\\u2028nbsp\\xa0"),
        ("astral\U000e0001", "astral\\U000e0001"),
        ("x\udcff", "x\\xff"),
    ],
)
def test_escape_line(text: str, line: str) -> None:
    assert escape_line(text) == line
    assert escape_line(text).isprintable()


def _capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logsetup.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


HOSTILE = "x\n2026-12-02 07:00:00,000 INFO sshtunnel_mgr.bastion: auth ok key=SHA256:FORGED"


def test_text_form_keeps_every_record_on_its_own_line() -> None:
    logger, stream = _capture(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    event(logger, logging.WARNING, "refused open", conn=1, dest=HOSTILE, from_="::1")
    logger.warning("library says %s", HOSTILE)  # not an event: quoted whole
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        logger.exception("boom")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(
        'refused open conn=1 dest="x\\n2026-12-02 07:00:00,000 INFO sshtunnel_mgr.bastion: '
        'auth ok key=SHA256:FORGED" from=::1'
    )
    assert lines[1] == f"WARNING {logger.name}: log msg={json.dumps('library says ' + HOSTILE)}"
    assert lines[2].endswith("log msg=boom")
    # The traceback: every line indented, a newline in its message included.
    assert lines[3] == "  | Traceback (most recent call last):"
    assert all(line.startswith("  | ") for line in lines[3:])
    assert lines[-2:] == ["  | ValueError: x", "  | " + HOSTILE.split("\n")[1]]
    assert not any(re.match(r"\S+ \S+: auth ok", line) for line in lines)


def test_json_form_is_built_from_the_fields() -> None:
    logger, stream = _capture(JsonFormatter())
    event(logger, logging.INFO, "auth refused", conn=2, from_="::1", user="a from=198.51.100.7")
    logger.info("asyncssh line %s", "key=SHA256:FORGED")
    event(logger, logging.INFO, "odd", raw=b"\xff", sur="\udcfe", inf=float("inf"))
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "auth refused"
    assert (first["conn"], first["from"], first["user"]) == (2, "::1", "a from=198.51.100.7")
    assert second["event"] == "log" and second["msg"] == "asyncssh line key=SHA256:FORGED"
    assert "key" not in second
    assert (third["raw"], third["sur"], third["inf"]) == ("\\xff", "\\xfe", "inf")


def test_an_event_can_carry_a_traceback() -> None:
    text_logger, text = _capture(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    json_logger, data = _capture(JsonFormatter())
    try:
        raise RuntimeError("bug\nINFO x: auth ok key=SHA256:FORGED")
    except RuntimeError as exc:
        event(text_logger, logging.ERROR, "task failed", task="serve", exc_info=exc)
        event(json_logger, logging.ERROR, "task failed", task="serve", exc_info=True)
    lines = text.getvalue().splitlines()
    assert lines[0] == f"ERROR {text_logger.name}: task failed task=serve"
    assert all(line.startswith("  | ") for line in lines[1:])
    assert lines[-1] == "  | INFO x: auth ok key=SHA256:FORGED"
    [record] = [json.loads(line) for line in data.getvalue().splitlines()]
    assert record["event"] == "task failed" and record["task"] == "serve"
    assert record["exc"].endswith("RuntimeError: bug\nINFO x: auth ok key=SHA256:FORGED")
    assert "exc_info" not in record


def test_a_long_value_is_cut() -> None:
    logger, stream = _capture(JsonFormatter())
    event(logger, logging.INFO, "refused open", dest="a" * 30000 + ":22", raw=b"\xff" * 2000)
    [record] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert record["dest"] == "a" * 1024 + "...(+28979 more)"
    assert record["raw"] == "\\xff" * 1024 + "...(+976 more)"
    assert len(stream.getvalue()) < 16000  # uncut: over 80000


def test_a_field_cannot_replace_the_record_s_own_keys() -> None:
    logger, stream = _capture(JsonFormatter())
    event(logger, logging.INFO, "x", event="auth ok", level="debug", msg="m", conn=1)
    [record] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (record["event"], record["level"], record["conn"]) == ("x", "info", 1)
    assert (record["event_"], record["level_"], record["msg_"]) == ("auth ok", "debug", "m")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """``setup_logging`` replaces the root logger's handlers and level: put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    asyncssh_level = logging.getLogger("asyncssh").level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("asyncssh").setLevel(asyncssh_level)


def test_the_handler_follows_stderr_and_skips_a_closed_stream(
    root_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI sets logging up in-process (a test's CliRunner does too) while sys.stderr is
    a capture stream that is closed afterwards. A record logged later (a connection_lost
    at loop close, another test's in-process agent) must go to the stderr of that moment,
    not print a '--- Logging error ---' traceback about the closed one."""
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    setup_logging()
    log = logging.getLogger("sshtunnel_mgr.test")
    event(log, logging.INFO, "first", n=1)
    assert "first n=1" in captured.getvalue()
    captured.close()  # the capture ends (CliRunner.invoke returns, pytest's capture stops)

    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    event(log, logging.WARNING, "second", n=2)
    assert "second n=2" in later.getvalue()
    assert "Logging error" not in later.getvalue()

    later.close()  # stderr itself closed: the record has nowhere to go, and nothing raises
    event(log, logging.WARNING, "third", n=3)
    logging.getLogger().handlers[0].flush()
