"""Memory policy: refuse an evaluation that would not fit before starting it.

A failing allocation deep inside a long evaluation is killed by the operating system without a
message; a cheap estimate checked first gives a clear error with advice instead. The model's
blocks report their working memory (:meth:`openmace.model.MACE.working_memory`, an estimate
with a safety margin for the implementation in use); the callers (the ASE calculator,
``openmace eval`` and batched prediction, the trainer) compare it with the memory available.

The limit is, in order: the ``limit_bytes`` argument (the calculator's ``memory_limit``), the
environment variable ``OPENMACE_MEMORY_LIMIT`` (bytes), else ``MemAvailable`` of
``/proc/meminfo`` (Linux; elsewhere nothing is checked).
"""

from __future__ import annotations

import os
from typing import Protocol


class ReportsWorkingMemory(Protocol):
    """What the check needs of a model (:class:`openmace.model.MACE`): this module sits below
    every package so that the data layer reads the same limit (``data/geometry.py``)."""

    def working_memory(self, num_atoms: int, num_edges: int) -> int: ...


ENVIRONMENT_VARIABLE = "OPENMACE_MEMORY_LIMIT"
ALWAYS_AVAILABLE = 256 << 20  # estimates below this are not checked against the system


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_limit(limit_bytes: int | None = None) -> int | None:
    """The limit in bytes from the argument or ``OPENMACE_MEMORY_LIMIT``; None if neither."""
    if limit_bytes is not None:
        return int(limit_bytes)
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError as err:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={value!r}: expected a number of bytes") from err


def check_memory(
    model: ReportsWorkingMemory, num_atoms: int, num_edges: int, limit_bytes: int | None = None
) -> None:
    """Raise :class:`MemoryError` with advice when evaluating ``num_atoms`` atoms with
    ``num_edges`` edges needs more memory than the limit (see the module docstring)."""
    need = model.working_memory(num_atoms, num_edges)
    limit = memory_limit(limit_bytes)
    if limit is None and need < ALWAYS_AVAILABLE:
        return  # small work: not worth reading /proc/meminfo at every MD step
    have = available_bytes() if limit is None else limit
    if have is not None and need > have:
        raise MemoryError(
            f"evaluating {num_atoms} atoms with {num_edges} edges needs about {need / 2**30:.1f} "
            f"GiB but {have / 2**30:.1f} GiB are available: use a smaller batch (fewer or "
            "smaller structures), float32, or a machine with more memory"
        )
