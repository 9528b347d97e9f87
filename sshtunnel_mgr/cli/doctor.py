"""``sshtun doctor``: hardening checks with a clear report (ok / warn / fail, each with its
fix). Exit status 0 when nothing fails (warnings included), EXIT_CHECKS_FAILED (7) when a
check fails; usage and config errors keep their own status (2, 3)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sshtunnel_mgr.core.errors import EXIT_CHECKS_FAILED, ConfigError, UsageError
from sshtunnel_mgr.doctor import Level, summarize, worst

if TYPE_CHECKING:  # imported when the checks run: `sshtun --help` does not need them
    from sshtunnel_mgr.core.config import Config
    from sshtunnel_mgr.doctor.collect import Section

ROLES = ("agent", "bastion")
_LABEL = {Level.OK: "ok", Level.WARN: "WARN", Level.FAIL: "FAIL"}


def _roles(config: Config | None, role: str | None) -> list[str]:
    """Which checks to run: --role, else every section the config has, else the home box."""
    if role is not None and role not in ROLES:
        raise UsageError(f"--role must be agent or bastion, not {role!r}")
    if config is None:
        if role == "bastion":
            raise UsageError(
                "the bastion checks need its config", hint="sshtun doctor --config BASTION.toml"
            )
        return ["agent"]
    present = [r for r in ROLES if getattr(config, r) is not None]
    if role is None:
        return present or ["agent"]
    if role == "bastion" and config.bastion is None:
        raise ConfigError(f"{config.source}: no [bastion] section")
    return [role]


def run_checks(
    config_path: Path | None, role: str | None, sshd_config: Path | None
) -> tuple[list[str], list[Section]]:
    from sshtunnel_mgr.core.config import load_config
    from sshtunnel_mgr.doctor.collect import bastion_checks, home_checks

    config = load_config(config_path) if config_path is not None else None
    roles = _roles(config, role)
    now = datetime.now(UTC)
    sections: list[Section] = []
    if "agent" in roles:
        if role == "agent" and config is not None and config.agent is None:
            raise ConfigError(f"{config.source}: no [agent] section")
        agent = config.agent if config is not None else None
        sections += home_checks(agent, config_path, sshd_config, now)
    if "bastion" in roles:
        assert config is not None and config.bastion is not None
        sections += bastion_checks(config.bastion, config_path, now)
    return roles, sections


def render(sections: list[Section]) -> str:
    lines: list[str] = []
    width = max((len(f.check) for s in sections for f in s.findings), default=10)
    for section in sections:
        lines.append(f"{section.title}")
        for f in section.findings:
            lines.append(f"  {_LABEL[f.level]:<4}  {f.check:<{width}}  {f.message}")
            if f.fix and f.level is not Level.OK:
                lines.append(f"  {'':<4}  {'':<{width}}  fix: {f.fix}")
        lines.append("")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        role: Annotated[
            str | None,
            typer.Option(
                "--role",
                help="agent (the home box: its sshd, keys, files) or bastion; "
                "default: every section of --config, or agent without one.",
            ),
        ] = None,
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="The sshtun TOML config file.")
        ] = None,
        sshd_config: Annotated[
            Path | None,
            typer.Option(
                "--sshd-config",
                help="Check this sshd_config instead of the default (sshd -f).",
                exists=True,
                dir_okay=False,
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Hardening checks: the home box's sshd (sshd -T, needs root), login files, the
        agent key and the pinned bastion key; the bastion's access file, host key and
        algorithm policy. Exits 7 when any check fails."""
        roles, sections = run_checks(config, role, sshd_config)
        findings = [f for s in sections for f in s.findings]
        counts = summarize(findings)
        failed = worst(findings) is Level.FAIL
        if as_json:
            rows = [{"section": s.title, **f.as_dict()} for s in sections for f in s.findings]
            typer.echo(
                json.dumps(
                    {"roles": roles, "ok": not failed, "summary": counts, "findings": rows},
                    indent=2,
                )
            )
        else:
            typer.echo(render(sections))
            verdict = "FAILED" if failed else "passed"
            typer.echo(
                f"doctor {verdict}: {counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail"
            )
        if failed:
            raise typer.Exit(EXIT_CHECKS_FAILED)
