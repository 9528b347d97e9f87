"""A multi-process bastion (``workers = N``): a supervisor and N worker processes.

The supervisor (supervisor.py: the ``sshtun bastion`` that systemd starts) binds N
``SO_REUSEPORT`` sockets per listening address (sockets.py; a BPF program keeps each source
address on one worker), keeps them, the admin socket, the metrics endpoint and the signals,
and runs N workers (worker.py), each the one-process ``Bastion`` on its inherited sockets,
forked from the supervisor after it imported their modules once (forked.py: those pages
are shared by every worker).
Workers report their routes to the supervisor, which keeps every worker's table (the same
``RouteTable`` rules) and sends each change to all (wire.py, mesh.py); a client that
reaches a name held on another worker is relayed to it over a unix socket (relay.py),
with no second SSH encryption. ``status``, ``reload`` and metrics are merged (merge.py).
"""
