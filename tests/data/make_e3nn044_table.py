"""Regenerate ``e3nn044_wigner_3j.safetensors``: e3nn 0.4.4's real Clebsch-Gordan tensors
for every triple with l <= 4, the reference for openmace's e3nn 0.4.4 sign table.

Run in an environment with e3nn==0.4.4 (e.g. the mace-torch venv of benchmarks/README.md):
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python tests/data/make_e3nn044_table.py
"""

from pathlib import Path

import e3nn
import torch
from e3nn import o3
from safetensors.torch import save_file

assert e3nn.__version__ == "0.4.4", e3nn.__version__
tensors = {}
for l1 in range(5):
    for l2 in range(5):
        for l3 in range(abs(l1 - l2), min(l1 + l2, 4) + 1):
            tensors[f"{l1}_{l2}_{l3}"] = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).contiguous()
save_file(
    tensors,
    str(Path(__file__).with_name("e3nn044_wigner_3j.safetensors")),
    metadata={"e3nn_version": e3nn.__version__},
)
