"""``sshtun status`` text: a value a peer chose stays on its own row, printable."""

from __future__ import annotations

from sshtunnel_mgr.cli.status import format_status

HOSTILE = "closed\x1b[2J\x1b[H\nb:22  up  up 1s  homebox:22  forged\r\u202e"


def test_a_hostile_error_cannot_add_a_row_or_drive_the_terminal() -> None:
    agent = {
        "role": "agent",
        "healthy": False,
        "links": [
            {
                "bastion": "b:22",
                "state": "backoff",
                "up_since": None,
                "next_retry_at": 1007.0,
                "published": [],
                "refused": {},
                "last_error": HOSTILE,  # e.g. the reason a bastion's DISCONNECT gave
                "probe_error": "",
            }
        ],
    }
    text = format_status(agent, 1000.0)
    lines = text.splitlines()
    assert len(lines) == 3  # title, header, one row
    assert all(line.isprintable() for line in lines)
    assert lines[2].endswith(
        "closed\\x1b[2J\\x1b[H\\nb:22  up  up 1s  homebox:22  forged\\r\\u202e"
    )


def test_a_bastion_row_with_an_odd_comment_stays_one_row() -> None:
    bastion = {
        "role": "bastion",
        "listening": ["127.0.0.1:2222"],
        "connections": 1,
        "names": [
            {
                "name": "homebox",
                "port": 22,
                "key": "SHA256:abc",
                "comment": "agent@home\nhomebox:80  SHA256:FORGED",
                "source": "192.0.2.1:5555",
                "since": 990.0,
                "open_channels": 0,
                "channels_total": 0,
                "bytes_to_home": 0,
                "bytes_from_home": 0,
            }
        ],
    }
    lines = format_status(bastion, 1000.0).splitlines()
    assert len(lines) == 3
    assert "agent@home\\nhomebox:80  SHA256:FORGED" in lines[2]
