"""The bastion's web front (``[bastion.web]``): HTTPS routed by SNI, HTTP by ``Host``.

TLS is never terminated here: the HTTPS listener reads the ClientHello only, picks the
agent that published ``name:443`` and splices the raw bytes onto a ``forwarded-tcpip``
channel to it. See front.py (listeners), conn.py (one connection), https.py, http.py.
"""

from sshtunnel_mgr.bastion.web.front import WebFront

__all__ = ["WebFront"]
