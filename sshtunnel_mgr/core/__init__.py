"""The pure core: plain data and functions, no event loop, SSH, sockets or processes
(an import contract in pyproject.toml keeps it so).

- ``names``: tunnel names and name patterns; ``hostport``: every ``host:port`` parsed
  (addresses with IPv6 brackets, ``name:port`` labels); ``routing``: the route table (who
  serves a name); ``access``: the access file's syntax and the access decisions (may this
  key log in, publish this name, open this route); ``accessedit``: edits of that file.
- ``config`` + ``configerrors``: the TOML config as validated models, errors with file:line.
- ``policy``: the SSH algorithm and key policy; ``kexinit``: a KEXINIT packet parser;
  ``keyformat``: the OpenSSH private key format; ``knownhosts``: known_hosts files
  parsed, looked up and edited.
- ``penalties``, ``limits``, ``admission``, ``startups``, ``lograte``: the bastion's
  abuse bookkeeping (cool-downs, caps, MaxStartups, per-source queues, log rate limits).
- ``backoff``: reconnect delays; ``addrmatch``: ``from=`` patterns; ``adminpolicy``: who
  may use the admin socket; ``protocol``: the agent-bastion wire words; ``errors``: the
  one exception tree and the exit codes.
"""
