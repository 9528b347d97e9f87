"""The supervisor's listening sockets: N per address in one ``SO_REUSEPORT`` group.

The kernel would spread connections over the group by a hash of both ends, so one source
could land on every worker. A classic BPF program on the group picks the socket from the
source address alone (IPv4: the address modulo N; IPv6: the four words XORed, modulo N),
so every connection of one source reaches the same worker: its per-source state
(startup caps and queues, MaxStartups, the failed-login cool-down) stays in one process and
behaves as with one. The supervisor keeps every socket open for its whole life: a worker
that restarts takes over the same socket (the same slot in the group), and connections
that arrived meanwhile wait in its queue.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from sshtunnel_mgr.core.limits import LISTEN_BACKLOG as BACKLOG

SO_ATTACH_REUSEPORT_CBPF = 51
SKF_NET_OFF = -0x100000
_LD_W_ABS, _ALU_MOD_K, _ALU_XOR_X, _TAX, _RET_A = 0x20, 0x94, 0xAC, 0x07, 0x16


def _insn(code: int, k: int = 0) -> bytes:
    return struct.pack("HBBI", code, 0, 0, k & 0xFFFFFFFF)


def source_hash_program(family: int, n: int) -> bytes:
    """The BPF instructions: which socket (0..n-1) takes a connection, by its source."""
    if family == socket.AF_INET:
        load = [_insn(_LD_W_ABS, SKF_NET_OFF + 12)]  # the IPv4 source address
    else:  # IPv6: the source address's four words, XORed
        load = [_insn(_LD_W_ABS, SKF_NET_OFF + 8)]
        for offset in (12, 16, 20):
            load += [_insn(_TAX), _insn(_LD_W_ABS, SKF_NET_OFF + offset), _insn(_ALU_XOR_X)]
    return b"".join([*load, _insn(_ALU_MOD_K, n), _insn(_RET_A)])


def attach_source_hash(sock: socket.socket, n: int) -> None:
    """Steer the reuseport group of ``sock`` by source address (``OSError`` if the kernel
    refuses)."""
    code = source_hash_program(sock.family, n)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def reuseport_group(host: str, port: int, n: int) -> list[list[socket.socket]]:
    """For every address ``host`` stands for: ``n`` listening sockets on one port (port 0:
    the port the first one got), steered by source; ``[address][worker]``."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    groups: list[list[socket.socket]] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            group: list[socket.socket] = []
            groups.append(group)
            for _ in range(n):
                sock = socket.socket(family, kind, proto)
                group.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address if not group[:-1] else group[0].getsockname())
                sock.listen(BACKLOG)  # joins the group in this order: worker i, socket i
                sock.set_inheritable(True)
            attach_source_hash(group[0], n)
    except OSError:
        for sock in (s for group in groups for s in group):
            sock.close()
        raise
    return groups
