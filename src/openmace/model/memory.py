"""A cheap estimate of the memory a forward + force evaluation needs, checked before the work.

The largest tensors are per-edge messages (edges × channels × message width) and per-atom
monomials of the symmetric contraction; autograd keeps several of them for the backward pass.
Failing early with a clear message beats being killed by the operating system.
"""

from __future__ import annotations

import os

from openmace.o3 import irreps_dim

SAFETY = 3.0  # activations kept for backward, gradients, temporaries (measured: 2.75 GiB
# for 128 Cu atoms, 9984 edges, 128x0e+128x1o, float64; this estimate gives 2.9 GiB)


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


def estimate_bytes(model, num_atoms: int, num_edges: int, itemsize: int) -> int:
    total = 0
    c = model.config.features.channels
    for inter, prod in zip(model.interactions, model.products):
        width = sum(n * ir.dim for n, ir in inter.tensor_product.irreps_mid)
        total += (
            num_edges * c * (width + irreps_dim(inter.irreps_in) + inter.tensor_product.num_paths)
        )
        total += num_edges * sum(inter.radial_mlp_sizes)
        contraction = prod.contraction
        total += (
            num_atoms
            * c
            * (sum(contraction.low_counts) + contraction.top_prefix * contraction.dim_out)
        )
    return int(total * itemsize * SAFETY)


def check_memory(model, num_atoms: int, num_edges: int, itemsize: int) -> None:
    need = estimate_bytes(model, num_atoms, num_edges, itemsize)
    have = (
        available_bytes()
        if os.environ.get("OPENMACE_MEMORY_LIMIT") is None
        else int(float(os.environ["OPENMACE_MEMORY_LIMIT"]))
    )
    if have is not None and need > have:
        raise MemoryError(
            f"evaluating {num_atoms} atoms with {num_edges} edges needs about {need / 2**30:.1f} "
            f"GiB but {have / 2**30:.1f} GiB are available: use a smaller batch (fewer or "
            "smaller structures), float32, or a machine with more memory"
        )
