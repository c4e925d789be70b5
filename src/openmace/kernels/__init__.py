"""Optional compiled CPU kernels (C++ sources in this folder), built on first use.

The fused kernels of the edge messages (``edge_messages.cpp``) and of the symmetric contraction
(``contraction.cpp``) are compiled with the system's C++ compiler through
``torch.utils.cpp_extension`` the first time a process needs them (about 45 s on 2 cores), and
cached in PyTorch's extension folder (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) under a name that hashes the sources, the compiler flags, the
CPU's instruction set and the PyTorch version, so a cache shared between different machines (or
kept across a PyTorch upgrade) never runs code built for another CPU or another PyTorch.
Without a working compiler (or ninja) openmace runs the same computation in PyTorch operations:
same results to rounding, slower. Nothing is downloaded. Which implementation a model uses is
decided in one place, :func:`openmace.accel.for_inference` (where ``OPENMACE_KERNELS=0`` is
read).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

from openmace.kernels.limits import definition_flags

log = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).with_name(name)
    for name in ("bindings.cpp", "edge_messages.cpp", "contraction.cpp", "ops.cpp", "kernels.h")
]
FLAGS = [
    "-O3",
    "-march=native",
    "-fopenmp",  # OpenMP: at::parallel_for is inlined
    *definition_flags(),
]

# a build takes ~1 minute on 2 cores; a lock file this old belongs to a killed build
STALE_LOCK_SECONDS = 900

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


def _build_directory(name: str) -> Path | None:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, False))
    except (ImportError, OSError):
        return None


def _remove_stale_lock(folder: Path) -> None:
    """PyTorch builds under a lock file and waits for it without a time limit; a process killed
    while building leaves it behind. One older than STALE_LOCK_SECONDS is removed."""
    lock = folder / "lock"
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            log.warning("removing the stale build lock %s (left by a killed build)", lock)
            lock.unlink(missing_ok=True)
    except OSError:
        pass


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load

    texts = [source.read_text() for source in SOURCES]
    inputs = [*texts, *FLAGS, _cpu_signature(), torch.__version__]
    digest = hashlib.sha256("\0".join(inputs).encode()).hexdigest()
    name = f"openmace_kernels_{digest[:16]}"
    folder = _build_directory(name)
    if folder is not None:
        _remove_stale_lock(folder)
    if folder is None or not any(folder.glob(f"{name}*.so")):
        log.info("building the compiled CPU kernels (once; about a minute)")
    return load(
        name=name,
        sources=[str(source) for source in SOURCES if source.suffix == ".cpp"],
        extra_cflags=FLAGS,
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def cpu_kernels() -> ModuleType | None:
    """The compiled kernels, or None when they cannot be built (the reason is logged once)."""
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
