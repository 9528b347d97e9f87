"""Config errors a person can act on: every problem, each with its file, line and field,
and for a misspelt key the nearest valid one. Pure: pydantic's error list and the file's
text in, lines of text out.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

Loc = tuple[int | str, ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_BARE_OR_QUOTED = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY = re.compile(rf"^\s*({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*=")


def clean_loc(loc: Sequence[int | str]) -> Loc:
    """pydantic's location without its validator markers (``function-after[...]``)."""
    return tuple(
        part
        for part in loc
        if isinstance(part, int)
        or (part not in ("function-after", "function-before") and "[" not in part)
    )


def dotted(loc: Loc) -> str:
    """``("agent", "tunnels", 0, "port")`` → ``agent.tunnels[0].port``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out or "(top level)"


def _split_key(text: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def key_lines(text: str) -> dict[Loc, int]:
    """Where each table and key of a TOML text is, by location (1-based lines). Arrays
    of tables count their entries, so ``[[agent.tunnels]]`` number two is
    ``("agent", "tunnels", 1)``. Lines inside multi-line values are not keys; a rare
    miss only costs the line number, never the message."""
    where: dict[Loc, int] = {}
    counts: dict[Loc, int] = {}
    table: Loc = ()
    in_string = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.count('"""') % 2 or line.count("'''") % 2:
            in_string = not in_string
            if not in_string:
                continue
        if in_string:
            continue
        header = _HEADER.match(line)
        if header:
            path: Loc = _split_key(header.group(2))
            if header.group(1) == "[[":
                index = counts.get(path, -1) + 1
                counts[path] = index
                path = (*path, index)
            table = path
            where.setdefault(table, lineno)
            continue
        key = _KEY.match(line)
        if key:
            where.setdefault((*table, *_split_key(key.group(1))), lineno)
    return where


def line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    """The line of the deepest part of ``loc`` that the text has."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _model_at(root: type[BaseModel], path: Loc) -> type[BaseModel] | None:
    """The model class that holds the fields at ``path`` (None if it is not a model)."""
    model: Any = root
    for part in path:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return None
        model = _unwrap(fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """``list[X]``, ``X | None``, ``Annotated[X, ...]`` → ``X`` (the first model inside)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return annotation
    for arg in typing.get_args(annotation):
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        return None
    return annotation


def suggestion(root: type[BaseModel], loc: Loc) -> str:
    """For an unknown key, ``; did you mean 'address'?`` (or the valid keys), else ``""``."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    model = _model_at(root, loc[:-1])
    if model is None:
        return ""
    names = [n for n, f in model.model_fields.items() if not f.exclude]
    close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return "; valid keys here: " + ", ".join(sorted(names))


def problems(errors: Sequence[Any], text: str, source: str, root: type[BaseModel]) -> list[str]:
    """One line per problem, ``FILE:LINE: field: what is wrong``: unknown keys first (a
    misspelt key also causes the "field required" after it), then in file order."""
    lines = key_lines(text)
    out: list[tuple[int, int, str]] = []
    for err in errors:
        loc = clean_loc(err["loc"])
        line = line_of(loc, lines)
        message = _message(err)
        if err["type"] == "extra_forbidden":
            message += suggestion(root, loc)
        where = f"{source}:{line}" if line is not None else source
        rank = 0 if err["type"] == "extra_forbidden" else 1
        order = line if line is not None else 1 << 30
        out.append((rank, order, f"{where}: {dotted(loc)}: {message}"))
    return [problem for _, _, problem in sorted(out, key=lambda item: (item[0], item[1]))]


def _message(err: Any) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if err["type"] == "extra_forbidden":
        return "unknown key (not one sshtun knows; check the spelling)"
    return msg
