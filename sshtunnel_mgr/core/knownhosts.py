"""known_hosts edits for a host key rotation (what OpenSSH's UpdateHostKeys does): add the
keys a bastion proved it holds, drop the ones it no longer serves. Pure text in, text out;
lines for other hosts, hashed lines and comments are kept as they are."""

from __future__ import annotations


def host_pattern(host: str, port: int) -> str:
    """How known_hosts names ``host:port``: ``host`` for 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def update_known_hosts(
    text: str, pattern: str, added: list[str], removed: list[str]
) -> tuple[str, int, int]:
    """``added``/``removed`` are "type base64" strings. Returns (text, added, removed)."""
    gone = {k.split()[1] for k in removed}
    kept, dropped, present = [], 0, set()
    for line in text.splitlines():
        fields = line.split()
        mine = (
            len(fields) >= 3
            and not line.lstrip().startswith(("#", "|", "@"))
            and pattern in fields[0].split(",")
        )
        if mine and fields[2] in gone:
            dropped += 1
            continue
        if mine:
            present.add(fields[2])
        kept.append(line)
    new = [f"{pattern} {k}" for k in added if k.split()[1] not in present]
    kept += new
    return ("\n".join(kept) + "\n" if kept else ""), len(new), dropped
