"""Process-wide allocator setting: keep freed memory in the process (glibc's malloc).

PyTorch frees and re-allocates tensors of the same few sizes at every step. glibc's malloc
returns freed memory at the top of the heap to the kernel (``M_TRIM_THRESHOLD``) and serves
large blocks by ``mmap``; the next step then page-faults the same memory in again, which on
virtual machines costs more than the arithmetic on it. Keeping freed memory in the process
(blocks below 32 MiB from the heap, the heap never trimmed) made an aspirin training step about
9 % faster; raising only the trim threshold made it slower, because fixing one threshold stops
glibc's automatic raising of the other (benchmarks/README.md, "Design measurements"). The
price: the process keeps its peak memory until it exits.

The command line (train, eval, md, ...) calls :func:`keep_freed_memory` at start; the library
never does it by itself (importing openmace or building a calculator does not change its host's
allocator): a script that runs a calculator for many steps calls it once, as
``openmace.keep_freed_memory()``. Measured with the foundation-model look-alikes
(benchmarks/README.md, "Foundation models"): against glibc's default, time ratio 0.43-1.38
(median 0.97) at a few tens of MB more peak memory, no allocator winning every case; jemalloc
(``LD_PRELOAD``) was slower than the default for openmace in 15 of 20 cases. Set
``OPENMACE_KEEP_FREED_MEMORY=0`` to make it a no-op. Other C libraries: nothing is done.
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
