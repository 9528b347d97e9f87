"""``sshtun status``: what a running agent or bastion is doing, over its admin socket."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sshtunnel_mgr.core.errors import ConfigError, SshtunError, UsageError
from sshtunnel_mgr.runtime.logsetup import escape_line

if TYPE_CHECKING:  # imported when a command runs: `sshtun --help` does not need pydantic
    from sshtunnel_mgr.core.config import Config

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The sshtun TOML config file.")]
RoleOpt = Annotated[
    str | None, typer.Option("--role", help="agent or bastion (when the file has both).")
]


def pick_role(config: Config, role: str | None) -> str:
    present = [r for r in ("agent", "bastion") if getattr(config, r) is not None]
    if role is not None:
        if role not in ("agent", "bastion"):
            raise UsageError(f"--role must be agent or bastion, not {role!r}")
        if role not in present:
            raise ConfigError(f"{config.source}: no [{role}] section")
        return role
    if len(present) == 1:
        return present[0]
    raise ConfigError(f"{config.source} has both [agent] and [bastion]; say which with --role")


def socket_for(config: Config, role: str) -> Path:
    from sshtunnel_mgr.runtime.admin import default_socket_path

    section = config.agent if role == "agent" else config.bastion
    assert section is not None
    return section.admin_socket or default_socket_path(role)


def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "-"
    secs = max(0, int(now - then))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h{(secs % 3600) // 60:02d}m"


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


def _table(header: list[str], rows: list[list[str]]) -> str:
    # Cells may hold what a peer chose (a bastion's disconnect reason): one printable line.
    rows = [[escape_line(str(c)) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def format_status(answer: dict[str, Any], now: float | None = None) -> str:
    """The human table for a status answer (pure: tested without sockets)."""
    now = time.time() if now is None else now
    if answer.get("role") == "bastion":
        head = (
            f"bastion listening on {', '.join(answer['listening'])}: "
            f"{len(answer['names'])} names, {answer['connections']} connections"
        )
        if web := answer.get("web"):
            head += (
                f"\nweb: https {', '.join(web['https']) or 'off'}, "
                f"http {', '.join(web['http']) or 'off'}; "
                f"public {', '.join(web['public']) or 'none'}; "
                f"{web['connections']} open, {web['routed_open']} routed"
            )
        if not answer["names"]:
            return head + "\n(no names published)"
        rows = [
            [
                f"{n['name']}:{n['port']}",
                f"{n['key']} {n['comment']}".strip(),
                n["source"],
                _ago(n["since"], now),
                f"{n['open_channels']}/{n['channels_total']}",
                f"{_bytes(n['bytes_to_home'])}/{_bytes(n['bytes_from_home'])}",
            ]
            for n in answer["names"]
        ]
        return (
            head
            + "\n"
            + _table(["NAME", "AGENT KEY", "FROM", "UP", "OPEN/TOTAL", "TO/FROM HOME"], rows)
        )
    rows = []
    for link in answer["links"]:
        state = link["state"]
        if state == "up":
            detail = f"up {_ago(link['up_since'], now)}"
        elif link.get("next_retry_at"):
            detail = f"retry in {max(0, int(link['next_retry_at'] - now))}s"
        else:
            detail = state
        names = ",".join(link["published"]) or "-"
        refused = ",".join(link.get("refused", {})) or ""
        error = link.get("probe_error") or link.get("last_error") or ""
        rows.append(
            [link["bastion"], state, detail, names, f"refused {refused}" if refused else "", error]
        )
    health = "healthy" if answer.get("healthy") else "not healthy"
    text = f"agent ({health})\n" + _table(
        ["BASTION", "STATE", "SINCE", "NAMES", "REFUSED", "LAST ERROR"], rows
    )
    text += format_tunnels(answer.get("tunnels"), now)
    text += format_names(answer.get("names"), now)
    return text + format_retiring(answer.get("rotation"))


def format_names(names: list[dict[str, Any]] | None, now: float) -> str:
    """A line per bastion given by name: what it resolved to last, and when."""
    lines = []
    for n in names or []:
        found = ", ".join(n["addresses"]) or "no address yet"
        when = f" ({_ago(n['resolved_at'], now)} ago)" if n.get("resolved_at") else ""
        line = f"{n['bastion']} resolves to {found}{when}"
        if n.get("last_error"):
            line += f"; the last resolution failed ({n['last_error']}), links kept"
        lines.append(line)
    return "".join(f"\n{line}" for line in lines)


def format_tunnels(tunnels: list[dict[str, Any]] | None, now: float) -> str:
    """The tunnels with a TLS mode or PROXY header: mode, and the served certificate's
    expiry (``tls = "files"``; ``"acme"`` also its next order and the last one's error)."""
    rows = []
    for t in tunnels or []:
        if not t.get("tls") and not t.get("proxy_protocol"):
            continue
        expiry = "-"
        if t.get("cert_not_after") is not None:
            days = (t["cert_not_after"] - now) / 86400
            stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t["cert_not_after"]))
            expiry = f"{stamp} ({'expired' if days <= 0 else f'in {days:.0f}d'})"
        if t.get("acme_next") is not None:  # tls = "acme": the next order
            stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t["acme_next"]))
            expiry += f"; {'renews' if t.get('cert_not_after') else 'orders'} {stamp}"
            if t.get("acme_error"):
                expiry += f" (retry {t.get('acme_failures', 1)}: {t['acme_error']})"
        elif t.get("cert_error"):
            expiry += f"; reload failed: {t['cert_error']}"
        rows.append(
            [t["name"], t["target"], t.get("tls") or "-", t.get("proxy_protocol") or "-", expiry]
        )
    if not rows:
        return ""
    table = _table(["TUNNEL", "TARGET", "TLS", "PROXY", "CERTIFICATE EXPIRES"], rows)
    return "\n" + table + "".join(f"\n{line}" for line in web_counts(tunnels or []))


def web_counts(tunnels: list[dict[str, Any]]) -> list[str]:
    """A line per web tunnel that served a session: what its sessions did (agent/web/stats)."""
    lines = []
    for t in tunnels:
        if not t.get("sessions"):
            continue
        answered = " ".join(
            f"{code}:{t[f'refused_{code}']}"
            for code in (400, 408, 431, 502)
            if t.get(f"refused_{code}")
        )
        lines.append(
            f"{t['name']}: {t['sessions']} sessions ({t.get('open', 0)} open), TLS "
            f"{t.get('tls_ok', 0)} ok/{t.get('tls_failed', 0)} failed, {t.get('requests', 0)} "
            f"requests, {t.get('websockets', 0)} websockets, {_bytes(t.get('bytes_in', 0))} in/"
            f"{_bytes(t.get('bytes_out', 0))} out, {t.get('idle_closed', 0)} idle closed"
            + (f", answered {answered}" if answered else "")
        )
    return lines


def format_shims(info: dict[str, Any] | None) -> str:
    """The asyncssh line: its release and which shims (sshcompat) are active or stepped
    aside, and why; "" for an answer without it (an older sshtun)."""
    if not info:
        return ""
    text = f"asyncssh {info['asyncssh']}: shims active: {', '.join(info['active']) or 'none'}"
    aside = info.get("stepped_aside") or {}
    if aside:
        text += "; stepped aside: " + "; ".join(f"{n} ({r})" for n, r in sorted(aside.items()))
    if not info.get("tested", True):
        text += f" (not a tested release: {info['supported']})"
    return "\n" + escape_line(text)


def format_retiring(rotation: dict[str, Any] | None) -> str:
    """The agent's part of a key rotation: how the old key's retiring goes, per bastion."""
    if not rotation or rotation.get("done"):
        return ""
    from sshtunnel_mgr.cli.rotate import progress

    lines = [f"\nkey rotation to {rotation['key']}: retiring the old key"]
    for link in rotation["links"]:
        lines.append(f"  {link['bastion']}: {progress(link)[0]}")
    return "\n".join(lines)


def format_rotation_record(described: str, finish: str, can_undo: bool) -> str:
    """A half-finished rotation recorded beside the agent key (pure)."""
    text = f"key rotation not finished: {described}\n  finish it: {finish}"
    return text + (f"\n  or go back: {finish} --undo" if can_undo else "")


def rotation_finish(config: Config, path: Path) -> tuple[Path, str]:
    """The key file a rotation of the agent's key works on (for a systemd credential, its
    source), and the command that finishes that rotation."""
    from sshtunnel_mgr.keys import rotation

    assert config.agent is not None
    key = rotation.rotated_key(config.agent.key, path)
    return key, rotation.finish_command(path, None if key == config.agent.key else key)


def _rotation_record(config: Config, path: Path) -> tuple[str, str]:
    """What the rotation record beside the agent's key says ("" when there is none), and
    the new key it names."""
    from sshtunnel_mgr.keys import rotation

    key, finish = rotation_finish(config, path)
    try:
        state = rotation.load_state(key)
        if state is None:
            return "", ""
        where = rotation.phase(state, rotation.file_fingerprint(key))
    except SshtunError as exc:
        return f"key rotation record: {exc.message}", ""
    text = format_rotation_record(rotation.describe(state), finish, where == "before-swap")
    return text, state.new


def retired_note(finish: str) -> str:
    return f"key rotation done on every bastion; `{finish}` clears its record"


def status_cmd(
    config: ConfigOpt,
    role: RoleOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what the running agent or bastion is doing (read over its admin socket)."""
    import asyncio

    from sshtunnel_mgr.core.config import load_config
    from sshtunnel_mgr.runtime.admin import query

    cfg = load_config(config)
    chosen = pick_role(cfg, role)
    record, new_key = _rotation_record(cfg, config) if chosen == "agent" else ("", "")
    try:
        answer = asyncio.run(query(socket_for(cfg, chosen), {"cmd": "status"}))
    except SshtunError:
        if record:  # the agent is down: what is on disk matters all the more
            typer.echo(record, err=True)
        raise
    if not answer.get("ok"):
        raise SshtunError(f"status failed: {answer.get('error', 'unknown error')}")
    retiring = answer.get("rotation") or {}
    if record and retiring.get("key") == new_key and retiring.get("done"):
        record = retired_note(rotation_finish(cfg, config)[1])
    if as_json:
        answer["rotation_record"] = record or None
        typer.echo(json.dumps(answer, indent=2, sort_keys=True))
        return
    shims = format_shims(answer.get("asyncssh"))
    typer.echo(format_status(answer) + shims + (f"\n{record}" if record else ""))


def register(app: typer.Typer) -> None:
    app.command("status")(status_cmd)
