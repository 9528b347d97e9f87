"""Keeping the C heap's pages between packets: ``keep_heap``.

glibc's malloc serves each request of 128 KiB or more with a fresh ``mmap`` (the threshold
then follows the largest block freed) and hands the top of its heap back to the kernel
(``brk``) as soon as 128 KiB lie free there. A bulk transfer allocates and frees read
buffers and packets of 32-256 KiB thousands of times a second, so every one of them lands
on pages the kernel has to map, fault in and zero again. Measured on the agent of a web
download (benchmarks/web_bench, 1 GiB through the bastion): 14,852 ``brk`` calls in 12 s
and 1.9 s of kernel CPU per GiB, against 0.44 s for OpenSSH's ``ssh -R`` moving the same
bytes; with the two settings below, 0.5 s, and the agent's CPU per GiB halves.

``M_MMAP_THRESHOLD`` = 512 KiB: blocks up to that size (a 256 KiB read, a 128 KiB packet)
come from the heap and are reused.
``M_TRIM_THRESHOLD`` = 2 MiB: the heap keeps up to that much free at its top instead of
returning it after every burst (what a process may hold beyond its live data; it is still
returned once more lies free). Both are process-wide ``mallopt`` settings, so the
bastion, each bastion worker and the agent call this once at start; anything other than
glibc (no ``mallopt``, or one that refuses) keeps its allocator's defaults.
"""

from __future__ import annotations

import ctypes
import logging

from sshtunnel_mgr.runtime.logsetup import event

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 512 * 1024
TRIM_THRESHOLD = 2 * 1024 * 1024


def keep_heap() -> bool:
    """Apply the two settings to this process (True), or leave the defaults (False)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        event(log, logging.DEBUG, "heap settings unavailable", reason="no mallopt")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    event(log, logging.DEBUG, "heap settings", applied=applied)
    return applied
