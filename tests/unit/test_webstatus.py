"""``sshtun status`` on a bastion with ``[bastion.web]``: one line for the web front."""

from __future__ import annotations

from sshtunnel_mgr.cli.status import format_status


def test_the_web_line() -> None:
    answer = {
        "role": "bastion",
        "listening": ["0.0.0.0:2222"],
        "connections": 1,
        "names": [],
        "web": {
            "https": ["0.0.0.0:443"],
            "http": [],
            "public": ["*.example.com", "admin.example.org"],
            "connections": 3,
            "deciding": 1,
            "routed_open": 2,
        },
    }
    assert format_status(answer, 0.0).splitlines() == [
        "bastion listening on 0.0.0.0:2222: 0 names, 1 connections",
        "web: https 0.0.0.0:443, http off; public *.example.com, admin.example.org; "
        "3 open, 2 routed",
        "(no names published)",
    ]
    answer["web"] = None  # the web front is off: no line
    assert "web:" not in format_status(answer, 0.0)
