"""Route names and name patterns (sshtunnel_mgr/core/names.py), as tables."""

from __future__ import annotations

import pytest

from sshtunnel_mgr.core.errors import SshtunError
from sshtunnel_mgr.core.names import (
    MAX_NAME_LEN,
    HostPortPattern,
    InvalidName,
    is_ip_address,
    is_valid_name,
    match_name,
    normalize_name,
)

LABEL_MSG = "is not a valid name (labels are letters, digits and inner hyphens)"
NOT_ASCII = "is not ASCII (write international names in punycode)"
LABEL_63 = "a" * 63
NAME_253 = ".".join([LABEL_63, LABEL_63, LABEL_63, "b" * 61])  # 63*3 + 61 + 3 dots = 253


def _bad_label(text: str) -> str:
    return f"{text!r} {LABEL_MSG}"


# --- normalize_name: accepted names ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("homebox", "homebox"),
        ("HomeBox", "homebox"),
        ("HOMEBOX", "homebox"),
        ("homebox.", "homebox"),  # a trailing dot (fully qualified) is the same name
        ("NAS.Home.Example.COM.", "nas.home.example.com"),
        ("a.home.example.com", "a.home.example.com"),
        ("web-1.example", "web-1.example"),
        ("a-b-c", "a-b-c"),
        ("x", "x"),
        ("0a", "0a"),
        ("1e100", "1e100"),  # digits and letters: a name, not a number
        ("1.2.3.4.5", "1.2.3.4.5"),  # five numbers is no IPv4 spelling: all-digit labels
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),  # punycode is plain ASCII
        ("my.localhost.example", "my.localhost.example"),  # only a *.localhost suffix is local
        (LABEL_63, LABEL_63),
        (NAME_253, NAME_253),
        (NAME_253 + ".", NAME_253),  # the trailing dot does not count toward the length
        ("a." * 127, "a." * 126 + "a"),  # 254 characters with the trailing dot, 253 without
    ],
)
def test_normalize_name_accepts(text: str, expected: str) -> None:
    assert normalize_name(text) == expected
    assert is_valid_name(text)


# --- normalize_name: refusals, with the exact reason ------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "name is empty"),
        # IP addresses in every spelling are never names
        ("127.0.0.1", "'127.0.0.1' is an IP address, not a name"),
        ("127.0.0.1.", "'127.0.0.1.' is an IP address, not a name"),
        ("10.0.0.1", "'10.0.0.1' is an IP address, not a name"),
        ("0.0.0.0", "'0.0.0.0' is an IP address, not a name"),
        ("127.1", "'127.1' is an IP address, not a name"),  # inet_aton shorthand
        ("10.0", "'10.0' is an IP address, not a name"),
        ("2130706433", "'2130706433' is an IP address, not a name"),  # 127.0.0.1 as one number
        ("::1", "'::1' is an IP address, not a name"),
        ("[::1]", "'[::1]' is an IP address, not a name"),
        ("::", "'::' is an IP address, not a name"),
        ("2001:DB8::1", "'2001:DB8::1' is an IP address, not a name"),
        ("::ffff:127.0.0.1", "'::ffff:127.0.0.1' is an IP address, not a name"),
        ("fe80::1%eth0", "'fe80::1%eth0' is an IP address, not a name"),
        ("homebox:22", "'homebox:22' is an IP address, not a name"),  # any colon is refused
        # wildcards are patterns, not names
        ("*", "'*' is a wildcard, not a name"),
        ("*.home.example.com", "'*.home.example.com' is a wildcard, not a name"),
        ("web?", "'web?' is a wildcard, not a name"),
        ("*.localhost", "'*.localhost' is a wildcard, not a name"),
        # local names are never routed
        ("localhost", "'localhost' is a local name and cannot be routed"),
        ("LocalHost", "'LocalHost' is a local name and cannot be routed"),
        ("localhost.", "'localhost.' is a local name and cannot be routed"),
        ("foo.localhost", "'foo.localhost' is a local name and cannot be routed"),
        ("a.b.LOCALHOST", "'a.b.LOCALHOST' is a local name and cannot be routed"),
        ("localhost.localdomain", "'localhost.localdomain' is a local name and cannot be routed"),
        ("ip6-localhost", "'ip6-localhost' is a local name and cannot be routed"),
        ("broadcasthost", "'broadcasthost' is a local name and cannot be routed"),
        # bad labels
        ("-a", _bad_label("-a")),
        ("a-", _bad_label("a-")),
        ("a.-b", _bad_label("a.-b")),
        ("a_b", _bad_label("a_b")),
        ("a b", _bad_label("a b")),
        ("a..b", _bad_label("a..b")),
        (".a", _bad_label(".a")),
        ("a/b", _bad_label("a/b")),
        ("a@b", _bad_label("a@b")),
        # a trailing newline or an empty label (regressions: '$' matched before '\n')
        ("homebox\n", _bad_label("homebox\n")),
        ("a\n.b", _bad_label("a\n.b")),
        ("a..", _bad_label("a..")),  # only one trailing dot is the fully qualified spelling
        (".", _bad_label(".")),
        ("..", _bad_label("..")),
        # non-ASCII, even when lower() would fold it to ASCII (KELVIN SIGN -> 'k')
        ("bücher.example", f"{'bücher.example'!r} {NOT_ASCII}"),
        ("\u212aomebox", f"{chr(0x212A) + 'omebox'!r} {NOT_ASCII}"),
        ("homebox\u200b", f"{'homebox' + chr(0x200B)!r} {NOT_ASCII}"),
        ("a" * 64, _bad_label("a" * 64)),
        (f"{'a' * 64}.example", _bad_label(f"{'a' * 64}.example")),
        # too long as a whole
        (NAME_253 + "b", f"name is longer than {MAX_NAME_LEN} characters"),
        ("a." * 128, f"name is longer than {MAX_NAME_LEN} characters"),
    ],
)
def test_normalize_name_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidName) as info:
        normalize_name(text)
    assert info.value.message == message
    assert str(info.value) == message
    assert not is_valid_name(text)


def test_invalid_name_is_an_sshtun_error_and_a_value_error() -> None:
    with pytest.raises(InvalidName) as info:
        normalize_name("")
    assert isinstance(info.value, SshtunError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", True),
        ("[::1]", True),
        ("::1", True),
        ("127.1", True),
        ("10", True),
        ("1.2.3.4", True),
        ("1.2.3.4.5", False),
        (".", False),
        ("1..2", False),
        ("homebox", False),
        ("1e100", False),
        ("", False),
    ],
)
def test_is_ip_address(text: str, expected: bool) -> None:
    assert is_ip_address(text) is expected


# --- HostPortPattern.parse -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "as_str"),
    [
        ("homebox:22", "homebox", 22, "homebox:22"),
        ("HomeBox:22", "homebox", 22, "homebox:22"),
        ("  homebox:22  ", "homebox", 22, "homebox:22"),
        ("homebox:*", "homebox", None, "homebox:*"),
        ("*.home.example.com:22", "*.home.example.com", 22, "*.home.example.com:22"),
        ("*.HOME.example.com:*", "*.home.example.com", None, "*.home.example.com:*"),
        ("web?.example:443", "web?.example", 443, "web?.example:443"),
        ("*box:1", "*box", 1, "*box:1"),
        ("a-*-b:65535", "a-*-b", 65535, "a-*-b:65535"),
        ("*:*", "*", None, "*:*"),
        ("*:22", "*", 22, "*:22"),
        ("*.*:22", "*.*", 22, "*.*:22"),
    ],
)
def test_pattern_parse(text: str, host: str, port: int | None, as_str: str) -> None:
    pattern = HostPortPattern.parse(text)
    assert pattern == HostPortPattern(host, port)
    assert str(pattern) == as_str
    assert pattern.is_catch_all is (host == "*")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("homebox", "'homebox' must be name:port (port may be *)"),
        ("", "'' must be name:port (port may be *)"),
        (":22", "':22' must be name:port (port may be *)"),
        ("  :22", "'  :22' must be name:port (port may be *)"),
        ("homebox:", "'homebox:': port must be 1-65535 or *"),
        ("homebox:0", "'homebox:0': port must be 1-65535 or *"),
        ("homebox:65536", "'homebox:65536': port must be 1-65535 or *"),
        ("homebox:-1", "'homebox:-1': port must be 1-65535 or *"),
        ("homebox:ssh", "'homebox:ssh': port must be 1-65535 or *"),
        ("homebox:2*", "'homebox:2*': port must be 1-65535 or *"),
        ("homebox: 22", "'homebox: 22': port must be 1-65535 or *"),
        ("a_b:22", "'a_b:22': label 'a_b' is not a valid name pattern"),
        ("a..b:22", "'a..b:22': label '' is not a valid name pattern"),
        (".a:22", "'.a:22': label '' is not a valid name pattern"),
        ("a :22", "'a :22': label 'a ' is not a valid name pattern"),
        ("[::1]:22", "'[::1]:22': label '[::1]' is not a valid name pattern"),
        ("::1:22", "'::1:22': label '::1' is not a valid name pattern"),
        ("a/b:22", "'a/b:22': label 'a/b' is not a valid name pattern"),
        (f"{'a' * 64}:22", f"'{'a' * 64}:22': label '{'a' * 64}' is not a valid name pattern"),
        # regressions: non-ASCII digits, and '$' matching before a newline
        ("homebox:\u00b2", "'homebox:\u00b2': port must be 1-65535 or *"),
        ("homebox:\u0661\u0662", "'homebox:\u0661\u0662': port must be 1-65535 or *"),
        ("a\n.b:22", "'a\\n.b:22': label 'a\\n' is not a valid name pattern"),
    ],
)
def test_pattern_parse_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidName) as info:
        HostPortPattern.parse(text)
    assert info.value.message == message


# --- HostPortPattern.matches and match_name --------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "port", "expected"),
    [
        ("*.home.example.com:22", "a.home.example.com", 22, True),
        ("*.home.example.com:22", "nas-1.home.example.com", 22, True),
        ("*.home.example.com:22", "a.b.home.example.com", 22, False),  # * never crosses a dot
        ("*.home.example.com:22", "home.example.com", 22, False),  # * needs a whole label
        ("*.home.example.com:22", "a.home.example.com", 2222, False),  # port mismatch
        ("*.home.example.com:22", "a.home.example.org", 22, False),
        ("*.home.example.com:*", "a.home.example.com", 2222, True),
        ("*.HOME.example.com:22", "a.home.example.com", 22, True),  # pattern folded on parse
        ("homebox:22", "homebox", 22, True),
        ("homebox:22", "homebox", 23, False),
        ("homebox:22", "homebox2", 22, False),
        ("homebox:22", "homebox.lan", 22, False),
        ("homebox:*", "homebox", 65535, True),
        ("*box:22", "homebox", 22, True),
        ("*box:22", "box", 22, True),  # * may match nothing inside a label
        ("web?:80", "web1", 80, True),
        ("web?:80", "web12", 80, False),
        ("web?:80", "web", 80, False),
        ("h*.example.com:22", "h.example.com", 22, True),
        ("*.*:22", "a.b", 22, True),
        ("*.*:22", "a", 22, False),
        ("*.*:22", "a.b.c", 22, False),
        ("*:*", "homebox", 1, True),  # a lone * is any name of any depth
        ("*:*", "a.b.c.d.e", 65535, True),
        ("*:22", "deep.name.example", 22, True),
        ("*:22", "homebox", 23, False),
    ],
)
def test_pattern_matches(pattern: str, name: str, port: int, expected: bool) -> None:
    assert HostPortPattern.parse(pattern).matches(name, port) is expected


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "anything.at.all", True),
        ("*", "x", True),
        ("homebox", "homebox", True),
        ("homebox", "homebox.lan", False),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.*", "a", False),
        ("*.b", "a.b", True),
        ("*.b", "b", False),
        ("a*.b", "abc.b", True),
        ("a?c.b", "abc.b", True),
        ("a?c.b", "ac.b", False),
        ("homebox", "HOMEBOX", False),  # inputs are already normalized: matching is exact
    ],
)
def test_match_name(pattern: str, name: str, expected: bool) -> None:
    assert match_name(pattern, name) is expected
