"""The web path (issue 11, "Speed"): HTTPS by SNI through the sshtun bastion vs what a user
would build instead, in one run with interleaved rounds.

  sshtun     client -> ``sshtun bastion`` ([bastion.web] https_listen, routes by SNI) ->
             ``forwarded-tcpip`` -> ``sshtun up`` (``tls = "passthrough"``) -> home nginx
  reference  client -> haproxy (``mode tcp``, ``req.ssl_sni``) -> 127.0.0.1:P of OpenSSH's
             ``sshd`` (throwaway, loopback) <- ``ssh -N -R 127.0.0.1:P:127.0.0.1:HOME``
             -> home nginx

Both end at the same home TLS server: nginx from Debian (a config in the work dir, ``daemon
off``, one worker by default, TLS 1.3 with a P-256 certificate from a throwaway CA, session
tickets and the session cache off so that every new connection is a full handshake), with
a small page and a ``--bulk-mib`` file. The same clients for both, all with SNI
``cloud.test`` and no DNS (``--connect-to`` / ``--resolve``):

  1. new-connection HTTPS requests/s: ``h2load --h1 -m 1 -H 'Connection: close'``, so every
     request is on a fresh TLS connection (checked: nginx's accepted-connection counter
     grows by at least the request count);
  2. time to first byte on fresh connections: one ``curl`` with ``--ttfb`` URLs, each with
     ``Connection: close`` and ``--no-sessionid`` (a new TCP connection and a full handshake
     each, checked with ``num_connects``), one at a time; TTFB is curl's
     ``time_starttransfer`` (TCP connect + TLS handshake + request + first byte);
  3. bulk download: ``curl -o /dev/null`` of the big file; MB/s = bytes / curl's
     ``time_total`` (10^6 bytes; handshake included, nothing subtracted).

Each round measures every metric on both sides back to back, the order of the sides
alternating between rounds. A run during which other processes used more than
``--max-foreign`` of the CPUs is measured again (bench_tunnel's ``guarded``). The report has
medians with the min-max of the rounds, the ratio sshtun / reference, the load average
before and after, and, for explanation, the CPU time of each side's bastion (sshtun: its
process; reference: haproxy + the sshd tree) and agent per request and per GiB.

    python benchmarks/web_bench                       # 5 rounds, about 3 minutes
    python benchmarks/web_bench --ref HEAD --json out.json
    python benchmarks/web_bench --profile DIR         # + cProfile of the sshtun bastion

Needs nginx, nghttp2-client (h2load), haproxy, curl, openssh-client and openssh-server
(Debian). Bounded: ``--rounds`` (1..30), ``--budget`` seconds, a timeout on every client.
Everything on 127.0.0.1; every process is stopped by its PID; the work dir is removed.

One module per job: ``scene`` (the home nginx and the two sides), ``clients`` (h2load and
curl runs), ``report`` (medians, ratios, the table), ``cli`` (the rounds, the profile and
the command line). bench_tunnel, imported first (it decides where sshtunnel_mgr comes
from: ``--ref``), gives the processes, the CPU watch and the reference sshd.
"""

from __future__ import annotations

import bench_tunnel  # noqa: F401  first: decides where sshtunnel_mgr comes from
