"""Process-wide allocator settings for the long-running commands (train, eval, md).

PyTorch frees and re-allocates tensors of the same few sizes at every step. glibc's malloc
returns freed memory at the top of the heap to the kernel (``M_TRIM_THRESHOLD``) and serves
large blocks by ``mmap``; the next step then page-faults the same memory in again, which on
virtual machines costs more than the arithmetic on it. Keeping freed memory in the process
(blocks below 32 MiB from the heap, the heap never trimmed) made an aspirin training step about
9 % faster; raising only the trim threshold made it slower, because fixing one threshold stops
glibc's automatic raising of the other (benchmarks/README.md, "Design measurements"). The
price: the process keeps its peak memory until it exits.

Only the command line does this (a library must not change its host's allocator); set
``OPENMACE_KEEP_FREED_MEMORY=0`` to leave malloc alone. Other C libraries: nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters of glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts on 64-bit systems
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top before trimming


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory in the process; True if it was done."""
    if os.environ.get("OPENMACE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = done and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("malloc keeps freed memory: %s", done)
    return done
