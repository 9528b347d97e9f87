"""The one room for asyncssh's internals.

Every private asyncssh name the package relies on is meant to live here: looked up lazily
on the object it patches (never at import), checked to look as expected, and installed per
connection from ``connection_made``, so other asyncssh users in the process are untouched.
A shim that finds the internals changed steps aside, the connection keeps asyncssh's stock
behaviour, and one log line says so. Tested against asyncssh 2.24 (the pinned range).

- ``kexguess``: judge a peer's guessed first key-exchange packet by RFC 4253 §7, so
  Dropbear's ``dbclient`` can connect whatever the server's algorithm order.
"""
