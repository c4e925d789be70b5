"""Memory limits shared by the compiled kernels and their Python callers (one declaration).

``ops.cpp`` reads them as the preprocessor definitions :func:`definition_flags` gives, in both
builds of the kernels (``openmace.kernels`` for Python, the LAMMPS plugin's CMake for libtorch).
"""

from __future__ import annotations

# the radial weights [edges, paths · channels] are kept from the forward pass when they take at
# most this much memory, and recomputed from the kept last hidden layer otherwise
KEEP_WEIGHTS_BYTES = 1 << 30

# radial weights of one chunk of radial rows when they are not all kept (more than
# KEEP_WEIGHTS_BYTES)
FUSED_CHUNK_BYTES = 64 << 20


def definition_flags() -> list[str]:
    """The limits as ``-DNAME=VALUE`` flags with the names the C++ sources use (compiler and
    CMake flags alike)."""
    return [
        f"-DOPENMACE_KEEP_WEIGHTS_BYTES={KEEP_WEIGHTS_BYTES}",
        f"-DOPENMACE_FUSED_CHUNK_BYTES={FUSED_CHUNK_BYTES}",
    ]
