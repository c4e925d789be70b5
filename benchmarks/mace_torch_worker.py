"""Worker run inside the mace-torch virtual environment by compare_mace_torch.py.

    python mace_torch_worker.py build CONFIG_JSON OUT_DIR     # random mace-torch model
    python mace_torch_worker.py time MODEL_DIR XYZ DTYPE REPEATS   # time calculator and model

Prints one JSON object on the last line of stdout. Nothing here is imported by openmace.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch


def build(config_path: str, out: str) -> None:
    from e3nn import o3
    from mace.modules import ScaleShiftMACE, interaction_classes
    from safetensors.torch import save_file

    torch.set_default_dtype(torch.float64)
    cfg = json.loads(Path(config_path).read_text())
    torch.manual_seed(0)
    model = ScaleShiftMACE(
        r_max=cfg["r_max"],
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=cfg["max_ell"],
        interaction_cls=interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2,
        num_elements=len(cfg["atomic_numbers"]),
        hidden_irreps=o3.Irreps(cfg["hidden_irreps"]),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array(cfg["atomic_energies"]),
        avg_num_neighbors=cfg["avg_num_neighbors"],
        atomic_numbers=cfg["atomic_numbers"],
        correlation=cfg["correlation"],
        gate=torch.nn.functional.silu,
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        use_reduced_cg=False,
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    full = dict(
        cfg,
        model_class="ScaleShiftMACE",
        num_bessel=8,
        num_polynomial_cutoff=5,
        interaction_cls="RealAgnosticResidualInteractionBlock",
        interaction_cls_first="RealAgnosticResidualInteractionBlock",
        num_interactions=2,
        num_elements=len(cfg["atomic_numbers"]),
        MLP_irreps="16x0e",
        gate="silu",
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
        pair_repulsion=False,
        distance_transform=None,
        use_reduced_cg=False,
        heads=["default"],
    )
    (out_dir / "config.json").write_text(json.dumps(full))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(out_dir / "weights.safetensors"),
    )
    torch.save(model, out_dir / "model.model")
    print(json.dumps({"ok": True}))


def time_calculator(model_dir: str, xyz: str, dtype: str, repeats: str) -> None:
    from ase.io import read
    from mace.calculators import MACECalculator

    atoms = read(xyz)
    calc = MACECalculator(
        model_paths=str(Path(model_dir) / "model.model"), device="cpu", default_dtype=dtype
    )
    start = time.perf_counter()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    # mace-torch's first calls are slower (55.9 ms median of 5 calls vs 101.9 ms of 3 on 3BPA):
    # warm up with two more calls when one call is short enough for that to matter
    for k in range(2 if time.perf_counter() - start < 1.0 else 0):
        atoms.positions[0, 0] += 1e-6 * (-1) ** k
        atoms.get_forces()
    times = []
    for k in range(int(repeats)):
        atoms.positions[0, 0] += 1e-6 * (-1) ** k  # force a new calculation
        start = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - start)
    # the bare model on a prepared batch: forces (and stress for periodic cells)
    periodic = bool(atoms.pbc.all())
    batch_base = calc._atoms_to_batch(atoms)
    model = calc.models[0]
    model_dtype = next(model.parameters()).dtype
    bare = []
    for _ in range(int(repeats)):
        batch = calc._clone_batch(batch_base)
        for key in batch.keys:
            if torch.is_tensor(batch[key]) and torch.is_floating_point(batch[key]):
                batch[key] = batch[key].to(dtype=model_dtype)
        start = time.perf_counter()
        model(batch.to_dict(), compute_stress=periodic, training=False)
        bare.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "energy": energy,
                "ms": 1000 * float(np.median(times)),
                "bare_ms": 1000 * float(np.median(bare)),
                "peak_mb": peak_mb,
            }
        )
    )


if __name__ == "__main__":
    {"build": build, "time": time_calculator}[sys.argv[1]](*sys.argv[2:])
