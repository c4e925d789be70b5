"""A cheap estimate of the memory a forward + force evaluation needs, checked before the work.

In training the largest tensors are per-edge messages (edges × channels × message width) and
per-atom monomials of the symmetric contraction; autograd keeps several of them for the backward
pass. With frozen weights (inference) the edge messages keep much less (edge_messages.py), and
the compiled kernels less again (nothing per edge, no monomials).
Failing early with a clear message beats being killed by the operating system.
"""

from __future__ import annotations

import os

from openmace.kernels import cpu_kernels_for
from openmace.model.edge_messages import FUSED_CHUNK_BYTES, KEEP_WEIGHTS_BYTES
from openmace.o3 import irreps_dim

SH_WIDTH = 16  # spherical harmonics and their intermediates per edge (max_ell 3)

SAFETY = 3.0  # activations kept for backward, gradients, temporaries (measured: 2.75 GiB
# for 128 Cu atoms, 9984 edges, 128x0e+128x1o, float64; this estimate gives 2.9 GiB)
SAFETY_INFERENCE = 1.5  # frozen weights: what is kept is counted above; gradients and chunk
# buffers on top (measured peak RSS above the ~0.35 GB of an idle process, Cu 1000 atoms,
# 78000 edges, float64: 32 channels 1.2 GB, estimate 1.4 GB; 128 channels 3.0 GB, est. 3.5 GB)

# compiled kernels (frozen weights on CPUs): calibrated on peak RSS minus the ~0.35 GB of an idle
# process, Cu 1000 / 4000 / 16000 atoms (~80 edges per atom), 32 and 128 channels, float32 and
# float64, 2 threads: measured / unscaled estimate 0.68-1.46, so the estimate x 1.5 is at or
# above every measured peak and at most 2.2x above it
EDGE_NUMBERS = 350  # per edge: graph, vectors, harmonics and their autograd records
SAFETY_COMPILED = 1.5

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


def _estimate_compiled(model, num_atoms: int, num_edges: int, itemsize: int) -> int:
    """The compiled kernels keep nothing per edge beyond the radial MLP's hidden layers (and
    its output up to KEEP_WEIGHTS_BYTES), per radial row = edge pair."""
    c = model.config.features.channels
    rows = num_edges // 2  # the graphs openmace builds are paired (data/graph.py)
    total = num_edges * EDGE_NUMBERS * itemsize
    for inter, prod in zip(model.interactions, model.products):
        tp = inter.tensor_product
        weights = rows * tp.num_paths * c * itemsize
        total += weights if weights <= KEEP_WEIGHTS_BYTES else FUSED_CHUNK_BYTES
        total += rows * sum(inter.radial_mlp_sizes[1:-1]) * itemsize
        node = tp.dim_mid + irreps_dim(inter.irreps_in) + irreps_dim(inter.irreps_target)
        contraction = 2 * (prod.contraction.dim + prod.contraction.dim_out)
        total += num_atoms * c * (node + contraction) * itemsize
    return int(total * SAFETY_COMPILED)


def estimate_bytes(model, num_atoms: int, num_edges: int, itemsize: int) -> int:
    total = 0
    c = model.config.features.channels
    # frozen weights: the inference edge messages (edge_messages.py) keep per edge only their
    # inputs, the radial MLP's hidden layers and (up to KEEP_WEIGHTS_BYTES) its output
    # (asked of the blocks, not of every parameter: that scan cost 0.5 ms per call, a tenth of a
    # 3-atom evaluation)
    inference = all(block.uses_inference_path() for block in model.interactions)
    if inference and cpu_kernels_for(model.atomic_energies) is not None:
        return _estimate_compiled(model, num_atoms, num_edges, itemsize)
    for inter, prod in zip(model.interactions, model.products):
        if inference:
            weights = inter.tensor_product.num_paths * c
            kept = min(num_edges * weights * itemsize, KEEP_WEIGHTS_BYTES) // itemsize
            total += kept + num_edges * (2 * sum(inter.radial_mlp_sizes[:-1]) + 2 * SH_WIDTH)
        else:
            width = sum(n * ir.dim for n, ir in inter.tensor_product.irreps_mid)
            total += (
                num_edges
                * c
                * (width + irreps_dim(inter.irreps_in) + inter.tensor_product.num_paths)
            )
            total += num_edges * sum(inter.radial_mlp_sizes)
        # per atom (product.py): the monomials of every degree, their gathered factors (kept by
        # autograd for the backward pass) and the concatenated features P is applied to
        contraction = prod.contraction
        monomials = contraction.step_bounds[-1] + contraction.dim
        total += num_atoms * c * (3 * monomials + contraction.width + contraction.dim_out)
    return int(total * itemsize * (SAFETY_INFERENCE if inference else SAFETY))


def check_memory(model, num_atoms: int, num_edges: int, itemsize: int) -> None:
    need = estimate_bytes(model, num_atoms, num_edges, itemsize)
    limit = os.environ.get("OPENMACE_MEMORY_LIMIT")
    if limit is None and need < ALWAYS_AVAILABLE:
        return  # small work: not worth reading /proc/meminfo at every MD step
    have = available_bytes() if limit is None else int(float(limit))
    if have is not None and need > have:
        raise MemoryError(
            f"evaluating {num_atoms} atoms with {num_edges} edges needs about {need / 2**30:.1f} "
            f"GiB but {have / 2**30:.1f} GiB are available: use a smaller batch (fewer or "
            "smaller structures), float32, or a machine with more memory"
        )
