"""sshtun bastion vs OpenSSH's sshd as the bastion, on the ``ssh -J`` path.

Two setups share the same keys, the same home sshd (a throwaway OpenSSH sshd on loopback),
the same client configuration (cipher, key exchange) and the same measurements:

  sshtun   client ``ssh -J`` -> ``sshtun bastion`` (own process) <- ``sshtun up`` (own process)
           routes by name: ``homebox:22``
  OpenSSH  client ``ssh -J`` -> OpenSSH ``sshd`` (AllowTcpForwarding yes) <- ``ssh -N -R``
           routes by ``127.0.0.1:P`` only (never by name: sshd would resolve it through DNS)

Measured, with interleaved rounds and medians:
  1. bulk throughput of one stream each way, per cipher (aes128-gcm, chacha20-poly1305),
     MiB/s of wall time for the whole ``ssh`` command (nothing subtracted);
  2. set-up time of ``ssh -J ... homebox true``;
  3. the bastion's memory per idle agent connection (200 by default), RSS delta / count.

Plus, for explanation: CPU seconds per GiB spent by the bastion and by the agent during the
bulk transfers, and (``--profile``) a py-spy look at the sshtun bastion and agent.

Run ``python benchmarks/bench_tunnel --help``; see benchmarks/README.md. Everything stays on
127.0.0.1; every process the script starts is stopped by its PID when it ends.

One module per measurement: ``throughput``, ``setup_time``, ``memory`` (and ``profiling``
for ``--profile``); shared by them: ``common`` (constants, logging, medians), ``procs``
(/proc, CPU watch, subreaper), ``sides`` (the two bastions and the agent), ``runs`` (one
timed run, measured again when disturbed); ``report``; ``cli`` (the command line and the
run). ``source`` decides where sshtunnel_mgr is imported from (``--ref``) before anything
imports it. The names below are what benchmarks/attack.py, soak.py, scene.py and
cpu_per_byte.py import from here.
"""

from __future__ import annotations

from bench_tunnel import source  # first: decides where sshtunnel_mgr comes from
from bench_tunnel.common import (
    CIPHERS,
    DIRECTIONS,
    GiB,
    MiB,
    cancellable,
    check_bounds,
    log,
    short,
)
from bench_tunnel.procs import (
    LAUNCHED,
    Mem,
    Procs,
    become_subreaper,
    cpu_seconds,
    descendants,
    finish,
    kill_tree,
    memory,
    reap_orphans,
)
from bench_tunnel.profiling import profile, profile_report
from bench_tunnel.report import environment
from bench_tunnel.runs import guarded, launch, run_client
from bench_tunnel.sides import (
    HOST_STAR,
    LOGIN_OPTIONS,
    Env,
    Run,
    ref_sshd_config,
    start_agent,
    start_ref_bastion,
    start_sshtun_bastion,
    stop_agent,
)
from bench_tunnel.throughput import negotiated_ciphers, transfer

SRC_LABEL = source.SRC_LABEL

__all__ = [
    "CIPHERS",
    "DIRECTIONS",
    "HOST_STAR",
    "LAUNCHED",
    "LOGIN_OPTIONS",
    "SRC_LABEL",
    "Env",
    "GiB",
    "Mem",
    "MiB",
    "Procs",
    "Run",
    "become_subreaper",
    "cancellable",
    "check_bounds",
    "cpu_seconds",
    "descendants",
    "environment",
    "finish",
    "guarded",
    "kill_tree",
    "launch",
    "log",
    "memory",
    "negotiated_ciphers",
    "profile",
    "profile_report",
    "reap_orphans",
    "ref_sshd_config",
    "run_client",
    "short",
    "start_agent",
    "start_ref_bastion",
    "start_sshtun_bastion",
    "stop_agent",
    "transfer",
]
