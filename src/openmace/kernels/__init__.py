"""Optional compiled CPU kernels (C++ sources in this folder), built on first use.

The fused kernels of the edge messages (``edge_messages.cpp``) and of the symmetric contraction
(``contraction.cpp``) are compiled with the system's C++
compiler through ``torch.utils.cpp_extension`` the first time a process needs them (about 25 s),
and cached in PyTorch's extension folder (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) under a name that hashes the source, the compiler flags and the
CPU's instruction set, so a cache shared between different machines never runs code built for
another CPU. Without a working compiler (or ninja), or with ``OPENMACE_KERNELS=0``, openmace runs
the same computation in PyTorch operations: same results to rounding, slower on small
structures. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).with_name(name)
    for name in ("bindings.cpp", "edge_messages.cpp", "contraction.cpp")
]
FLAGS = ["-O3", "-march=native", "-fopenmp"]  # OpenMP: at::parallel_for is inlined

_lock = threading.Lock()
_state: dict[str, ModuleType | None] = {}


def _cpu_signature() -> str:
    """The CPU's instruction-set flags (Linux), else the machine and processor names."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load

    texts = [source.read_text() for source in SOURCES]
    digest = hashlib.sha256("\0".join([*texts, *FLAGS, _cpu_signature()]).encode()).hexdigest()
    return load(
        name=f"openmace_kernels_{digest[:16]}",
        sources=[str(source) for source in SOURCES],
        extra_cflags=FLAGS,
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def cpu_kernels() -> ModuleType | None:
    """The compiled kernels, or None when they are switched off or cannot be built (the
    reason is logged once)."""
    if os.environ.get("OPENMACE_KERNELS", "1") == "0":
        return None
    if "cpu" not in _state:
        with _lock:
            if "cpu" not in _state:
                try:
                    _state["cpu"] = _build()
                except Exception as error:  # no compiler, no ninja, no headers, ...
                    log.warning(
                        "compiled kernels unavailable (%s); using PyTorch operations",
                        str(error).splitlines()[0] if str(error) else type(error).__name__,
                    )
                    _state["cpu"] = None
    return _state["cpu"]
