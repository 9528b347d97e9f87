"""Config validation (sshtunnel_mgr/core/config.py): TOML texts in, models or exact errors out."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from sshtunnel_mgr.core.config import (
    AgentConfig,
    BackoffConfig,
    BastionConfig,
    BastionEndpoint,
    Config,
    LimitsConfig,
    TunnelConfig,
    load_config,
    parse_config,
)
from sshtunnel_mgr.core.errors import EXIT_CONFIG, ConfigError
from sshtunnel_mgr.core.webconfig import WebConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
HK = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
HINT = "`sshtun example-config` prints every key, documented"
UNKNOWN = "unknown key (not one sshtun knows; check the spelling)"
NOT_INT = "Input should be a valid integer"
GE_1 = "Input should be greater than or equal to 1"
TUNNEL_KEYS = (
    "acme_ca_bundle, acme_directory, acme_email, cert, idle_timeout, key, name, port, "
    "proxy_protocol, target, tls"
)
LABELS = "is not a valid name (labels are letters, digits and inner hyphens)"
NOT_ASCII = "is not ASCII (write international names in punycode)"
KEY_LINE = "host_key must be a public key line like 'ssh-ed25519 AAAA...'"
PIN = (
    "set exactly one of host_key (the pinned key) or known_hosts (a file); "
    "sshtun never trusts a bastion on first use"
)

AGENT = f"""\
[agent]
key = "agent_key"
{{agent_extra}}
[[agent.bastions]]
address = "bastion.example.com:2222"
host_key = "{HK}"
{{bastion_extra}}
[[agent.tunnels]]
name = "homebox"
{{tunnel_extra}}
"""

BASTION = """\
[bastion]
host_key = "bastion_host_key"
access_file = "access"
{bastion_extra}
"""


def agent(agent_extra: str = "", bastion_extra: str = "", tunnel_extra: str = "") -> str:
    return AGENT.format(
        agent_extra=agent_extra, bastion_extra=bastion_extra, tunnel_extra=tunnel_extra
    )


def bastion(extra: str = "") -> str:
    return BASTION.format(bastion_extra=extra)


# --- valid configs ---------------------------------------------------------------------------


def test_minimal_agent_defaults() -> None:
    cfg = parse_config(agent(), "x.toml", Path("/etc/sshtun"))
    assert cfg.bastion is None
    a = cfg.require_agent()
    assert a.key == Path("/etc/sshtun/agent_key")
    assert a.keepalive_interval == 15.0
    assert a.keepalive_count_max == 3
    assert a.connect_timeout == 15.0
    assert a.probe_interval == 30.0
    assert a.admin_socket is None
    assert a.backoff == BackoffConfig(base=1.0, cap=60.0, healthy_after=30.0)
    (b,) = a.bastions
    assert (b.address, b.host, b.port, b.user) == (
        "bastion.example.com:2222",
        "bastion.example.com",
        2222,
        "sshtun",
    )
    assert b.host_key == HK
    assert b.known_hosts is None
    (t,) = a.tunnels
    assert t == TunnelConfig(name="homebox", port=22, target="127.0.0.1:22")
    assert (t.target_host, t.target_port) == ("127.0.0.1", 22)
    assert cfg.source == "x.toml"


def test_minimal_bastion_defaults() -> None:
    cfg = parse_config(bastion(), "x.toml", Path("/srv"))
    assert cfg.agent is None
    b = cfg.require_bastion()
    assert b.listen == ["0.0.0.0:2222"]
    assert b.listen_addresses == [("0.0.0.0", 2222)]
    assert b.host_key == Path("/srv/bastion_host_key")
    assert b.access_file == Path("/srv/access")
    assert b.keepalive_interval == 15.0
    assert b.keepalive_count_max == 3
    assert b.admin_socket is None
    assert b.limits == LimitsConfig(
        login_timeout=20.0, max_auth_tries=6, max_channels_per_connection=64, max_connections=10000
    )


def test_empty_file_is_valid_but_has_no_role() -> None:
    cfg = parse_config("", "x.toml")
    assert cfg == Config(source="x.toml")
    with pytest.raises(ConfigError) as info:
        cfg.require_agent()
    assert info.value.message == "x.toml: no [agent] section"
    assert info.value.hint == "see config.example.toml for the [agent] keys"
    with pytest.raises(ConfigError) as info:
        cfg.require_bastion()
    assert info.value.message == "x.toml: no [bastion] section"
    assert info.value.hint == "see config.example.toml for the [bastion] keys"


@pytest.mark.parametrize(
    ("text", "attr", "expected"),
    [
        (agent(tunnel_extra="port = 65535"), "tunnels[0].port", 65535),
        (agent(tunnel_extra="port = 1"), "tunnels[0].port", 1),
        (
            agent(tunnel_extra='target = "192.168.1.20:443"'),
            "tunnels[0].target",
            "192.168.1.20:443",
        ),
        (agent(tunnel_extra='target = "localhost:8080"'), "tunnels[0].target", "localhost:8080"),
        (agent(tunnel_extra='target = "[::1]:22"'), "tunnels[0].target", "[::1]:22"),
        (agent(tunnel_extra='target = " 127.0.0.1:2 "'), "tunnels[0].target", "127.0.0.1:2"),
        (agent(bastion_extra='user = "agent"'), "bastions[0].user", "agent"),
        (agent("keepalive_interval = 5"), "keepalive_interval", 5.0),
        (agent("keepalive_count_max = 100"), "keepalive_count_max", 100),
        (agent("connect_timeout = 0.5"), "connect_timeout", 0.5),
        (agent("backoff = { base = 0.1, cap = 0.1 }"), "backoff.cap", 0.1),
        (agent("backoff = { healthy_after = 86400 }"), "backoff.healthy_after", 86400.0),
    ],
)
def test_agent_values(text: str, attr: str, expected: object) -> None:
    cfg = parse_config(text, "x.toml", Path("/c")).require_agent()
    value: object = cfg
    for part in re.findall(r"\w+|\[\d+\]", attr):
        value = value[int(part[1:-1])] if part.startswith("[") else getattr(value, part)  # type: ignore[index]
    assert value == expected


def test_tunnel_name_is_normalized() -> None:
    text = agent(tunnel_extra="").replace('"homebox"', '"NAS.Home.Example.COM."')
    cfg = parse_config(text, "x.toml").require_agent()
    assert cfg.tunnels[0].name == "nas.home.example.com"


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("bastion.example.com", "bastion.example.com", 22),
        ("bastion.example.com:2222", "bastion.example.com", 2222),
        ("203.0.113.5:22", "203.0.113.5", 22),
        ("[2001:db8::1]:2222", "2001:db8::1", 2222),
        ("[2001:db8::1]", "2001:db8::1", 22),
        ("2001:db8::1", "2001:db8::1", 22),
    ],
)
def test_bastion_address(address: str, host: str, port: int) -> None:
    text = agent().replace("bastion.example.com:2222", address)
    (b,) = parse_config(text, "x.toml").require_agent().bastions
    assert (b.address, b.host, b.port) == (address, host, port)


@pytest.mark.parametrize(
    ("listen", "addresses"),
    [
        ('["0.0.0.0:2222"]', [("0.0.0.0", 2222)]),
        ('["127.0.0.1:0"]', [("127.0.0.1", 0)]),  # port 0: a free port (tests)
        ('["[::1]:2222", "::"]', [("::1", 2222), ("::", 22)]),
        ('["localhost:2222"]', [("localhost", 2222)]),
        ('["192.0.2.1", "192.0.2.2:22"]', [("192.0.2.1", 22), ("192.0.2.2", 22)]),
    ],
)
def test_bastion_listen(listen: str, addresses: list[tuple[str, int]]) -> None:
    cfg = parse_config(bastion(f"listen = {listen}"), "x.toml").require_bastion()
    assert cfg.listen_addresses == addresses


def test_both_roles_in_one_file() -> None:
    cfg = parse_config(agent() + bastion(), "x.toml")
    assert cfg.agent is not None and cfg.bastion is not None


def test_models_are_frozen() -> None:
    cfg = parse_config(agent(), "x.toml").require_agent()
    with pytest.raises(ValueError, match="frozen"):
        cfg.keepalive_interval = 1.0  # type: ignore[misc]


def test_known_hosts_instead_of_host_key() -> None:
    text = agent().replace(f'host_key = "{HK}"', 'known_hosts = "kh"')
    (b,) = parse_config(text, "x.toml", Path("/etc/sshtun")).require_agent().bastions
    assert b.known_hosts == Path("/etc/sshtun/kh")
    assert b.host_key is None


# --- invalid configs: the exact message ------------------------------------------------------


def _no_pin() -> str:
    return agent().replace(f'host_key = "{HK}"\n', "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # ports
        (
            agent(tunnel_extra="port = 70000"),
            "agent.tunnels[0].port: Input should be less than or equal to 65535",
        ),
        (
            agent(tunnel_extra="port = 65536"),
            "agent.tunnels[0].port: Input should be less than or equal to 65535",
        ),
        (
            agent(tunnel_extra="port = 0"),
            "agent.tunnels[0].port: Input should be greater than or equal to 1",
        ),
        (
            agent(tunnel_extra="port = -22"),
            "agent.tunnels[0].port: Input should be greater than or equal to 1",
        ),
        (
            agent(tunnel_extra="port = 22.5"),
            f"agent.tunnels[0].port: {NOT_INT}",
        ),
        (
            agent(tunnel_extra='port = "ssh"'),
            f"agent.tunnels[0].port: {NOT_INT}",
        ),
        # unknown keys, at every level
        ("agnet = 1", f"agnet: {UNKNOWN}"),
        ("source = 'x'", f"source: {UNKNOWN}"),
        (agent("colour = 1"), f"agent.colour: {UNKNOWN}"),
        (agent(bastion_extra="hostkey = 1"), f"agent.bastions[0].hostkey: {UNKNOWN}"),
        (agent(tunnel_extra="prot = 22"), f"agent.tunnels[0].prot: {UNKNOWN}"),
        (agent("backoff = { jitter = 0.1 }"), f"agent.backoff.jitter: {UNKNOWN}"),
        (bastion("[bastion.limits]\nmax_channels = 1"), f"bastion.limits.max_channels: {UNKNOWN}"),
        # required keys and sections
        ('[bastion]\nhost_key = "h"', "bastion.access_file: Field required"),
        (agent().replace('key = "agent_key"\n', ""), "agent.key: Field required"),
        (
            agent().split("[[agent.bastions]]")[0]
            + "bastions = []\n"
            + "[[agent.tunnels]]\nname = 'a'\n",
            "agent.bastions: List should have at least 1 item after validation, not 0",
        ),
        (
            agent()
            .split("[[agent.tunnels]]")[0]
            .replace('key = "agent_key"', 'key = "agent_key"\ntunnels = []'),
            "agent.tunnels: List should have at least 1 item after validation, not 0",
        ),
        (
            agent(tunnel_extra="").replace('name = "homebox"', "port = 22"),
            "agent.tunnels[0].name: Field required",
        ),
        ("agent = 1", "agent: Input should be a valid dictionary or instance of AgentConfig"),
        # host key pinning: exactly one of host_key / known_hosts
        (_no_pin(), f"agent.bastions[0]: {PIN}"),
        (agent(bastion_extra='known_hosts = "kh"'), f"agent.bastions[0]: {PIN}"),
        (
            agent().replace(HK, "ssh-ed25519 !!!"),
            "agent.bastions[0].host_key: host_key: key data is not valid base64",
        ),
        (
            agent().replace(HK, "nonsense"),
            f"agent.bastions[0].host_key: {KEY_LINE}",
        ),
        (
            agent().replace(HK, "ssh-dss AAAA"),
            f"agent.bastions[0].host_key: {KEY_LINE}",
        ),
        (
            agent().replace(HK, "ssh-rsa " + HK.split()[1]),
            "agent.bastions[0].host_key: host_key: key data is a 'ssh-ed25519' key, not 'ssh-rsa'",
        ),
        # addresses and targets
        (
            agent().replace("bastion.example.com:2222", "bastion.example.com:99999"),
            "agent.bastions[0].address: 'bastion.example.com:99999': port must be 1-65535",
        ),
        (
            agent().replace("bastion.example.com:2222", ":2222"),
            "agent.bastions[0].address: ':2222' has no host",
        ),
        (
            agent().replace("bastion.example.com:2222", "bastion.example.com:0"),
            "agent.bastions[0].address: 'bastion.example.com:0': port must be 1-65535",
        ),
        (
            agent(tunnel_extra='target = "127.0.0.1"'),
            "agent.tunnels[0].target: target '127.0.0.1' needs a port, like 127.0.0.1:22",
        ),
        (
            agent(tunnel_extra='target = "127.0.0.1:x"'),
            "agent.tunnels[0].target: '127.0.0.1:x': port must be 1-65535",
        ),
        (
            agent(tunnel_extra='target = "127.0.0.1:0"'),
            "agent.tunnels[0].target: '127.0.0.1:0': port must be 1-65535",
        ),
        (agent(tunnel_extra='target = ""'), "agent.tunnels[0].target: '' has no host"),
        # tunnel names
        (
            agent().replace('"homebox"', '"10.0.0.1"'),
            "agent.tunnels[0].name: '10.0.0.1' is an IP address, not a name",
        ),
        (
            agent().replace('"homebox"', '"127.0.0.1"'),
            "agent.tunnels[0].name: '127.0.0.1' is an IP address, not a name",
        ),
        (
            agent().replace('"homebox"', '"[::1]"'),
            "agent.tunnels[0].name: '[::1]' is an IP address, not a name",
        ),
        (
            agent().replace('"homebox"', '"localhost"'),
            "agent.tunnels[0].name: 'localhost' is a local name and cannot be routed",
        ),
        (
            agent().replace('"homebox"', '"*.example.com"'),
            "agent.tunnels[0].name: '*.example.com' is a wildcard, not a name",
        ),
        (
            agent().replace('"homebox"', '"home_box"'),
            f"agent.tunnels[0].name: 'home_box' {LABELS}",
        ),
        (agent().replace('"homebox"', '""'), "agent.tunnels[0].name: name is empty"),
        (
            agent().replace('"homebox"', '"homebox\\n"'),
            f"agent.tunnels[0].name: 'homebox\\n' {LABELS}",
        ),
        (
            agent().replace('"homebox"', '"b\u00fccher"'),
            f"agent.tunnels[0].name: 'b\u00fccher' {NOT_ASCII}",
        ),
        (
            bastion('listen = ["1.2.3.4.5:22"]'),
            "bastion.listen: listen address '1.2.3.4.5:22' must be an IP address and port",
        ),
        (
            agent(tunnel_extra="port = 22").replace(
                "bastion.example.com:2222", "bastion.example.com:\u0662\u0662"
            ),
            "agent.bastions[0].address: 'bastion.example.com:\u0662\u0662': port must be 1-65535",
        ),
        # duplicate tunnels (after normalization)
        (
            agent() + '[[agent.tunnels]]\nname = "homebox"\n',
            "agent: tunnel homebox:22 is listed twice",
        ),
        (
            agent()
            + '[[agent.tunnels]]\nname = "HomeBox."\nport = 22\ntarget = "127.0.0.1:2222"\n',
            "agent: tunnel homebox:22 is listed twice",
        ),
        # numbers and backoff
        (
            agent("keepalive_interval = 0"),
            "agent.keepalive_interval: Input should be greater than 0",
        ),
        (
            agent("connect_timeout = 86401"),
            "agent.connect_timeout: Input should be less than or equal to 86400",
        ),
        (
            agent("keepalive_count_max = 0"),
            "agent.keepalive_count_max: Input should be greater than or equal to 1",
        ),
        (agent("backoff = { base = 0 }"), "agent.backoff.base: Input should be greater than 0"),
        (agent("backoff = { base = 10.0, cap = 5.0 }"), "agent.backoff: cap must be >= base"),
        # bastion
        (
            bastion('listen = ["example.com:22"]'),
            "bastion.listen: listen address 'example.com:22' must be an IP address and port",
        ),
        (
            bastion('listen = ["bastion:2222"]'),
            "bastion.listen: listen address 'bastion:2222' must be an IP address and port",
        ),
        (
            bastion('listen = ["0.0.0.0:65536"]'),
            "bastion.listen: '0.0.0.0:65536': port must be 0-65535",
        ),
        (bastion('listen = [":2222"]'), "bastion.listen: ':2222' has no host"),
        (
            bastion("listen = []"),
            "bastion.listen: List should have at least 1 item after validation, not 0",
        ),
        (bastion('listen = "0.0.0.0:2222"'), "bastion.listen: Input should be a valid list"),
        (
            bastion("[bastion.limits]\nmax_auth_tries = 0"),
            "bastion.limits.max_auth_tries: Input should be greater than or equal to 1",
        ),
        (
            bastion("[bastion.limits]\nmax_connections = 0"),
            "bastion.limits.max_connections: Input should be greater than or equal to 1",
        ),
    ],
)
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    assert without_line(info.value.message) == f"x.toml: {message}" or (
        UNKNOWN in message  # then the nearest valid key (or the valid keys) follow
        and without_line(info.value.message).startswith(f"x.toml: {message}; ")
    )
    assert info.value.exit_code == EXIT_CONFIG
    if not message.startswith(f"source: {UNKNOWN}"):
        assert info.value.hint == HINT


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("[agent\n", "Expected ']' at the end of a table declaration (at line 1, column 7)"),
        ("key = \n", "Invalid value (at line 1, column 7)"),
        ("key = ", "Invalid value (at end of document)"),
        ("a = 1\na = 2\n", "Cannot overwrite a value (at line 2, column 6)"),
        ('name = "unterminated\n', "Illegal character '\\n' (at line 1, column 21)"),
        ("[agent]\nkey = 'k'\n[agent]\n", "Cannot declare ('agent',) twice (at line 3, column 7)"),
    ],
)
def test_invalid_toml(text: str, detail: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    assert info.value.message == f"x.toml: invalid TOML: {detail}"
    assert info.value.exit_code == EXIT_CONFIG


def without_line(message: str) -> str:
    """``x.toml:7: field: …`` → ``x.toml: field: …`` (lines are tested on their own)."""
    return re.sub(r"^x\.toml:\d+: ", "x.toml: ", message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[agent]",
            "3 problems:\n  x.toml:1: agent.key: Field required\n"
            "  x.toml:1: agent.bastions: Field required\n"
            "  x.toml:1: agent.tunnels: Field required",
        ),
        (
            "# a comment\n[bastion]\nlisten = ['127.0.0.1:0']",
            "2 problems:\n  x.toml:2: bastion.host_key: Field required\n"
            "  x.toml:2: bastion.access_file: Field required",
        ),
        (
            agent(tunnel_extra="port = 0\ncolour = 1\nfoo = 2"),
            "3 problems:\n"
            f"  x.toml:11: agent.tunnels[0].colour: {UNKNOWN}; valid keys here: {TUNNEL_KEYS}\n"
            f"  x.toml:12: agent.tunnels[0].foo: {UNKNOWN}; valid keys here: {TUNNEL_KEYS}\n"
            f"  x.toml:10: agent.tunnels[0].port: {GE_1}",
        ),
    ],
)
def test_every_problem_is_shown_with_its_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    assert info.value.message == message


def test_a_misspelt_key_is_named_first_with_the_nearest_valid_one() -> None:
    text = agent().replace("address =", "adress =")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.toml")
    first, second = info.value.message.splitlines()[1:]
    assert first.endswith(f"agent.bastions[0].adress: {UNKNOWN}; did you mean 'address'?")
    assert second.endswith("agent.bastions[0].address: Field required")
    line = text.splitlines().index(next(x for x in text.splitlines() if "adress" in x)) + 1
    assert first.startswith(f"  x.toml:{line}: ")


@pytest.mark.parametrize("address", ["300.1.1.1:22", "999.999.999.999:22"])
def test_listen_must_be_a_real_ip(address: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(bastion(f'listen = ["{address}"]'), "x.toml")
    assert without_line(info.value.message) == (
        f"x.toml: bastion.listen: listen address '{address}' must be an IP address and port"
    )


def test_boolean_is_not_a_port() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(agent(tunnel_extra="port = true"), "x.toml")
    assert without_line(info.value.message).startswith("x.toml: agent.tunnels[0].port: ")


# --- paths -----------------------------------------------------------------------------------


def _paths_config() -> str:
    return agent('admin_socket = "run/agent.sock"').replace(
        f'host_key = "{HK}"', 'known_hosts = "pins/known_hosts"'
    ) + bastion('admin_socket = "run/bastion.sock"').replace(
        'access_file = "access"', 'access_file = "../shared/access"'
    )


def test_load_config_resolves_relative_paths_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "sshtun"
    conf_dir.mkdir(parents=True)
    path = conf_dir / "config.toml"
    path.write_text(_paths_config())
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    a, b = cfg.require_agent(), cfg.require_bastion()
    assert a.key == conf_dir / "agent_key"
    assert a.bastions[0].known_hosts == conf_dir / "pins" / "known_hosts"
    assert b.host_key == conf_dir / "bastion_host_key"
    assert b.access_file == conf_dir / "../shared/access"
    assert a.admin_socket == conf_dir / "run" / "agent.sock"
    assert b.admin_socket == conf_dir / "run" / "bastion.sock"
    assert cfg.source == str(path)


def test_load_config_with_a_relative_path_still_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.toml").write_text(_paths_config())
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("config.toml"))
    assert cfg.require_agent().key == tmp_path.resolve() / "agent_key"
    assert cfg.require_agent().key.is_absolute()
    assert cfg.require_bastion().host_key.is_absolute()


def test_absolute_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = agent().replace('key = "agent_key"', 'key = "~/.ssh/sshtun_key"') + bastion().replace(
        'host_key = "bastion_host_key"', 'host_key = "/var/lib/sshtun/host_key"'
    )
    path = tmp_path / "c" / "config.toml"
    path.parent.mkdir()
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.require_agent().key == tmp_path / "home" / ".ssh" / "sshtun_key"
    assert cfg.require_bastion().host_key == Path("/var/lib/sshtun/host_key")
    assert cfg.require_bastion().access_file == path.parent / "access"


def test_parse_config_uses_the_base_dir_it_is_given() -> None:
    cfg = parse_config(_paths_config(), "x.toml", Path("/opt/sshtun"))
    assert cfg.require_agent().key == Path("/opt/sshtun/agent_key")
    assert cfg.require_bastion().access_file == Path("/opt/sshtun/../shared/access")


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(agent(tunnel_extra="port = 70000"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    line = path.read_text().splitlines().index("port = 70000") + 1
    assert info.value.message == (
        f"{path}:{line}: agent.tunnels[0].port: Input should be less than or equal to 65535"
    )


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message == f"config file {path} does not exist"
    assert info.value.hint == "start from config.example.toml"
    assert info.value.exit_code == EXIT_CONFIG


def test_load_config_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.message.startswith(f"cannot read config file {tmp_path}: ")
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message.startswith(f"cannot read config file {path}: ")


# --- config.example.toml ---------------------------------------------------------------------


def _example_text() -> str:
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE} does not exist yet (the lead is writing it)")
    return EXAMPLE.read_text(encoding="utf-8")


def test_example_config_parses() -> None:
    _example_text()
    cfg = load_config(EXAMPLE)
    assert cfg.agent is not None, "config.example.toml should document [agent]"
    assert cfg.bastion is not None, "config.example.toml should document [bastion]"
    assert cfg.agent.key == EXAMPLE.resolve().parent / "agent_key"


def _model_keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys = []
    for name in model.model_fields:
        if name == "source":
            continue
        keys.append(f"{prefix}.{name}")
    return keys


def test_example_config_documents_every_key() -> None:
    text = _example_text()
    # every key, active or commented out, appears as "key =" somewhere in the file
    uncommented = "\n".join(line.lstrip("# ") for line in text.splitlines())
    present = set(re.findall(r"^\s*([a-z_]+)\s*=", uncommented, re.MULTILINE))
    tomllib.loads(text)  # and the file is valid TOML as shipped
    wanted = (
        _model_keys(AgentConfig, "agent")
        + _model_keys(BackoffConfig, "agent.backoff")
        + _model_keys(BastionEndpoint, "agent.bastions")
        + _model_keys(TunnelConfig, "agent.tunnels")
        + _model_keys(BastionConfig, "bastion")
        + _model_keys(LimitsConfig, "bastion.limits")
        + _model_keys(WebConfig, "bastion.web")
    )
    sections = {"agent.backoff", "agent.bastions", "agent.tunnels", "bastion.limits"}
    sections |= {"bastion.web", "bastion.web.rules"}
    missing = [k for k in wanted if k not in sections and k.rsplit(".", 1)[1] not in present]
    assert missing == [], f"config.example.toml does not document: {missing}"
