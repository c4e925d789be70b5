"""Memory limits shared by the compiled kernels and their Python callers (one declaration).

``ops.cpp`` reads them as the preprocessor definitions :func:`definitions` gives, in both builds
of the kernels (``openmace.kernels`` for Python, the LAMMPS plugin's CMake for libtorch).
"""

from __future__ import annotations

# the radial weights [edges, paths · channels] are kept from the forward pass when they take at
# most this much memory, and recomputed from the kept last hidden layer otherwise
KEEP_WEIGHTS_BYTES = 1 << 30

# radial weights of one chunk of radial rows when they are not all kept (more than
# KEEP_WEIGHTS_BYTES)
FUSED_CHUNK_BYTES = 64 << 20


def definitions() -> dict[str, int]:
    """The limits as the C++ sources name them (``-DNAME=VALUE``)."""
    return {
        "OPENMACE_KEEP_WEIGHTS_BYTES": KEEP_WEIGHTS_BYTES,
        "OPENMACE_FUSED_CHUNK_BYTES": FUSED_CHUNK_BYTES,
    }
