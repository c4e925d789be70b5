"""Dataset statistics for the model's normalisation (paper Appendix A.5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from openmace.data.dataset import GraphDataset


@dataclass
class Statistics:
    avg_num_neighbors: float  # mean number of neighbours within r_max per atom
    shift: float  # mean per-atom interaction energy (E - Σ E0) / n, eV
    scale: float  # RMS of force components, eV/Å (1 when no forces)


def compute_statistics(dataset: GraphDataset, e0s: dict[int, float]) -> Statistics:
    """Statistics of a training set; neighbours are counted on the dataset's graphs (built
    within its ``r_max``), so no neighbour list is built here."""
    edges = atoms = 0
    per_atom, forces = [], []
    for config, graph in zip(dataset.configs, dataset.graphs):
        edges += graph.edge_index.shape[1]
        atoms += len(config)
        if config.energy is not None:
            e0 = sum(e0s[int(z)] for z in config.atomic_numbers)
            per_atom.append((config.energy - e0) / len(config))
        if config.forces is not None:
            forces.append(config.forces.reshape(-1))
    shift = float(np.mean(per_atom)) if per_atom else 0.0
    if forces:
        scale = float(np.sqrt(np.mean(np.concatenate(forces) ** 2)))
    else:
        scale = float(np.std(per_atom)) if len(per_atom) > 1 else 1.0
    if not scale > 0:
        scale = 1.0
    return Statistics(avg_num_neighbors=max(edges / max(atoms, 1), 1e-3), shift=shift, scale=scale)
