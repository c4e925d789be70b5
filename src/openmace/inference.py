"""Batched prediction over many structures (eval, metrics)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from openmace.data.configurations import Configuration
from openmace.data.graph import collate, graph_from_atoms
from openmace.model import MACE


def predict_configurations(
    model: MACE,
    configs: list[Configuration],
    batch_size: int = 16,
    progress: bool = False,
) -> Iterator[dict[str, np.ndarray | float | None]]:
    """Yield, per structure in order: ``energy`` (eV), ``forces`` (eV/Å), ``energies`` (eV per
    atom, with E0) and ``stress`` (3×3 eV/Å³, or None if not fully periodic)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(configs), unit="structure", dynamic_ncols=True)
    r_max = model.config.r_max
    for start in range(0, len(configs), batch_size):
        chunk = configs[start : start + batch_size]
        graph = collate([graph_from_atoms(c.to_atoms(), r_max) for c in chunk])
        periodic = [bool(c.pbc.all()) for c in chunk]
        out = model(graph, compute_forces=True, compute_stress=any(periodic))
        energy = out["energy"].detach().cpu().double().numpy()
        forces = out["forces"].detach().cpu().double().numpy()
        energies = out["node_energy"].detach().cpu().double().numpy()
        offsets = np.cumsum([0] + [len(c) for c in chunk])
        for k in range(len(chunk)):
            a, b = offsets[k], offsets[k + 1]
            stress = None
            if periodic[k]:
                stress = out["stress"][k].detach().cpu().double().numpy()
            yield {
                "energy": float(energy[k]),
                "forces": forces[a:b],
                "energies": energies[a:b],
                "stress": stress,
            }
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
