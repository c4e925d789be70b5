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


def compute_statistics(dataset, e0s: dict[int, float]) -> Statistics:
    """Statistics of a training set from its :class:`~openmace.data.summary.Summary` (a
    :class:`GraphDataset`'s or a prepared set's: the same numbers from both); neighbours are
    counted on the graphs built within the dataset's ``r_max``, so no list is built here.

    shift = mean over structures with an energy of (E - Σ_i E0_{Z_i}) / N;
    scale = sqrt(Σ F² / number of force components) (RMS force), or the standard deviation of
    the per-atom energies when no structure has forces; avg_num_neighbors = edges / atoms."""
    summary = dataset.summary if isinstance(dataset, GraphDataset) else dataset
    if summary.num_edges is None:
        raise ValueError("compute_statistics needs the edge count of every structure")
    elements = summary.elements()
    missing = [z for z in elements if z not in e0s]
    if missing:
        raise ValueError(f"no E0 for element(s) {missing}")
    e0 = summary.composition(elements) @ np.array([e0s[z] for z in elements])
    rows = summary.has_energy
    per_atom = (summary.energy[rows] - e0[rows]) / summary.num_atoms[rows]
    shift = float(np.mean(per_atom)) if len(per_atom) else 0.0
    components = 3 * int(summary.num_atoms[summary.has_forces].sum())
    if components:
        scale = float(np.sqrt(summary.forces_sumsq.sum() / components))
    else:
        scale = float(np.std(per_atom)) if len(per_atom) > 1 else 1.0
    if not scale > 0:
        scale = 1.0
    atoms = int(summary.num_atoms.sum())
    edges = int(summary.num_edges.sum())
    return Statistics(avg_num_neighbors=max(edges / max(atoms, 1), 1e-3), shift=shift, scale=scale)
