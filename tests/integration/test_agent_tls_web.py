"""The whole web path with real peers: curl → the bastion's HTTPS listener (``[bastion.web]``,
routing raw TLS by SNI) → the agent, which ends TLS (``tls = "files"``) → a plain HTTP
server at home. The client address the home server sees is the one the bastion's listener
saw (here 127.0.0.1): the bastion put it in the channel's originator. Skips until the
bastion has a web listener."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sshtunnel_mgr.core.config import BastionConfig
from tests.harness import Keys, bastion_config, running_bastion
from tests.integration.test_agent_tls import (
    CURL,
    NAME,
    echo_server,
    header,
    require,
    running,
    scene,
    web_agent_config,
)

pytestmark = pytest.mark.skipif(
    "web" not in BastionConfig.model_fields, reason="the bastion has no [bastion.web] yet"
)


async def test_curl_through_the_bastions_https_listener_to_tls_ended_at_home(
    keys: Keys, tmp_path: Path
) -> None:
    require(CURL, "curl")
    assert CURL is not None
    from sshtunnel_mgr.core.webconfig import WebConfig

    s = scene(keys, tmp_path)
    web = WebConfig(https_listen="127.0.0.1:0", public=[NAME])
    async with (
        echo_server(tmp_path) as echo_port,
        running_bastion(bastion_config(keys, s.access, web=web)) as bastion,
    ):
        front: Any = getattr(bastion, "web", None)
        assert front is not None
        https = front.https_addresses[0][1]
        config = web_agent_config(
            keys, bastion.port, f"127.0.0.1:{echo_port}", tmp_path, tls="files",
            cert=s.cert, key=s.key,
        )  # fmt: skip
        async with running(config):
            url = f"https://{NAME}:{https}"
            proc = await asyncio.create_subprocess_exec(
                CURL, "-sS", "--http1.1", "--resolve", f"{NAME}:{https}:127.0.0.1",
                "--cacert", str(s.pki.ca_path), "-H", "X-Forwarded-For: 6.6.6.6",
                f"{url}/one", f"{url}/two",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
    answers = [json.loads(line) for line in out.decode().replace("}{", "}\n{").splitlines()]
    assert [a["path"] for a in answers] == ["/one", "/two"]
    for answer in answers:
        assert header(answer, "X-Forwarded-For") == ["127.0.0.1"]
        assert header(answer, "X-Forwarded-Proto") == ["https"]
    assert [a["request"] for a in answers] == [1, 2]  # one connection, kept alive
