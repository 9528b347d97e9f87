"""STYLE rule 13, checked on the source: no private asyncssh name is used outside
``sshtunnel_mgr/sshcompat/``. A lint on the package's text and syntax tree, no asyncssh run.

What counts as private: an attribute starting with ``_`` read or written on anything in a
module that imports asyncssh (``conn._send``, ``getattr(conn, "_channels")``, a string
naming one), asyncssh's internal modules (``asyncssh.connection``, ``asyncssh.packet``,
``asyncssh.logging``, ...: anything but the package itself, though importing a name the
package exports, ``from asyncssh.forward import SSHForwarder``, is only a longer spelling
of a public name), ``SSHLogger``, and asyncssh's passphrase error text ("assphrase",
"must be specified"; the word "passphrase" itself is fine)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import asyncssh

import sshtunnel_mgr

PACKAGE = Path(sshtunnel_mgr.__file__).parent
COMPAT = PACKAGE / "sshcompat"

# asyncssh's private attribute names the package has used; a string holding one (getattr,
# setattr) is as private as the attribute itself.
KNOWN_PRIVATE = re.compile(
    r"^_(send|transport|loop|channels|owner|debug_level|send_disconnect|send_encryption|"
    r"packet_handlers|ignore_first_kex|server_kexinit|client_kexinit|all_server_host_keys|"
    r"process_\w+)$"
)
SUBMODULE = re.compile(r"\basyncssh\.(?!__version__\b)[a-z_]+\.")  # asyncssh.connection.X
TEXTS = re.compile(r"(?<![pP])assphrase|must be specified|SSHLogger")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if COMPAT not in p.parents)


def _imports_asyncssh(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "asyncssh" for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncssh":
            return True
    return False


def _own_private_names(tree: ast.Module) -> set[str]:
    """``_x`` names a module defines itself (its own attributes, in class bodies and on
    ``self``): those are ours, not asyncssh's."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                own.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            own.add(node.target.id)
    return own


def _findings(path: Path) -> set[tuple[str, str]]:
    """(module, what) for each private asyncssh use in one module."""
    where = str(path.relative_to(PACKAGE))
    text = path.read_text()
    found: set[tuple[str, str]] = set()
    for match in TEXTS.finditer(text):
        found.add((where, match.group(0)))
    for match in SUBMODULE.finditer(text):
        found.add((where, match.group(0)))
    tree = ast.parse(text, str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {
                (where, f"import {a.name}") for a in node.names if a.name.startswith("asyncssh.")
            }
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asyncssh."):
            private = [a.name for a in node.names if a.name not in asyncssh.__all__]
            found |= {(where, f"from {node.module} import {name}") for name in private}
    if not _imports_asyncssh(tree):
        return found
    own = _own_private_names(tree)
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            name = node.attr
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                name = None if node.attr in own else name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value if KNOWN_PRIVATE.match(node.value) else None
        if name is None or name.startswith("__") or name in own:
            continue
        found.add((where, name))
    return found


def test_no_private_asyncssh_name_outside_sshcompat() -> None:
    """agent/link.py's ``_channels`` included: the agent counts its channels itself now."""
    used: set[tuple[str, str]] = set()
    for path in _modules():
        used |= _findings(path)
    assert sorted(used) == [], "move these into sshtunnel_mgr/sshcompat/"


def test_the_lint_finds_what_the_old_code_did(tmp_path: Path) -> None:
    """The patterns the package used before sshcompat held them all are each found."""
    old = {
        "authlog.py": "import asyncssh.connection as _conn\n"
        '_ORIGINAL = getattr(_conn, "lookup_server_auth")\n',
        "tuning.py": "import asyncssh\nfrom asyncssh.logging import SSHLogger\n"
        "def f(conn):\n    conn._send = None\n    return SSHLogger._debug_level\n",
        "serve.py": "import asyncssh\ndef f(conn):\n"
        '    if getattr(conn, "_all_server_host_keys", None):\n'
        "        conn._all_server_host_keys = {}\n",
        "server.py": 'import asyncssh\nattr = "_process_tcpip_forward_global_request"\n',
        "link.py": 'import asyncssh\ndef n(conn):\n    return getattr(conn, "_channels", None)\n',
        "packet.py": "import asyncssh.packet\nfrom asyncssh.packet import SSHPacket\n"
        "from asyncssh.forward import SSHForwarder\n",
        "store.py": 'import asyncssh\ndef f(exc):\n    return "assphrase" in str(exc)\n',
        "ours.py": "import asyncssh\nclass A:\n    def __init__(self):\n        self._conn = 1\n"
        "    def g(self):\n        return self._conn\n",
    }
    found: dict[str, set[str]] = {}
    global PACKAGE
    saved = PACKAGE
    PACKAGE = tmp_path
    try:
        for name, source in old.items():
            (tmp_path / name).write_text(source)
            found[name] = {what for _, what in _findings(tmp_path / name)}
    finally:
        PACKAGE = saved
    assert "import asyncssh.connection" in found["authlog.py"]
    assert {"_send", "_debug_level", "SSHLogger"} <= found["tuning.py"]
    assert "_all_server_host_keys" in found["serve.py"]
    assert "_process_tcpip_forward_global_request" in found["server.py"]
    assert "_channels" in found["link.py"]
    assert "assphrase" in found["store.py"]
    assert found["packet.py"] == {
        "import asyncssh.packet",
        "from asyncssh.packet import SSHPacket",
    }  # SSHForwarder is exported by asyncssh itself
    assert found["ours.py"] == set()  # a class's own private attributes are not asyncssh's
