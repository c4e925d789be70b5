"""Batched prediction over many structures (eval, metrics)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from openmace.data.configurations import Configuration
from openmace.data.graph import collate, graph_from_atoms
from openmace.model import MACE


def split_by_structure(
    out: dict, sizes: list[int], periodic: list[bool]
) -> Iterator[dict[str, np.ndarray | float | None]]:
    """Per-structure results from one batched model output."""
    energy = out["energy"].detach().cpu().double().numpy()
    forces = out["forces"].detach().cpu().double().numpy()
    energies = out["node_energy"].detach().cpu().double().numpy()
    offsets = np.cumsum([0, *sizes])
    for k in range(len(sizes)):
        a, b = offsets[k], offsets[k + 1]
        stress = out["stress"][k].detach().cpu().double().numpy() if periodic[k] else None
        yield {
            "energy": float(energy[k]),
            "forces": forces[a:b],
            "energies": energies[a:b],
            "stress": stress,
        }


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
        yield from split_by_structure(out, [len(c) for c in chunk], periodic)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
