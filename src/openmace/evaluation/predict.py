"""Batched prediction over many structures (eval, metrics)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np

from openmace.data.configurations import Configuration
from openmace.data.dataset import configuration_graph
from openmace.data.graph import Graph, collate
from openmace.memory import check_memory
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


def predict_graphs(
    model: MACE,
    graphs: Iterable[Graph],
    batch_size: int = 16,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[dict[str, np.ndarray | float | None]]:
    """Yield, per single-structure graph in order: ``energy`` (eV), ``forces`` (eV/Å),
    ``energies`` (eV per atom, with E0) and ``stress`` (3×3 eV/Å³, or None if not fully
    periodic). The graphs must hold neighbours within ``model.config.r_max`` (or more)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="structure", dynamic_ncols=True)
    graphs = iter(graphs)
    while chunk := list(islice(graphs, batch_size)):
        graph = collate(chunk)
        periodic = [bool(g.pbc.all()) for g in chunk]
        check_memory(model, len(graph.positions), graph.edge_index.shape[1])
        out = model(graph, compute_forces=True, compute_stress=any(periodic))
        yield from split_by_structure(out, [len(g.positions) for g in chunk], periodic)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()


def predict_configurations(
    model: MACE,
    configs: list[Configuration],
    batch_size: int = 16,
    progress: bool = False,
) -> Iterator[dict[str, np.ndarray | float | None]]:
    """:func:`predict_graphs` on structures; each graph is built from the structure's arrays
    when its batch is due (one neighbour-list build per structure)."""
    r_max = model.config.r_max
    graphs = (configuration_graph(c, r_max) for c in configs)
    return predict_graphs(model, graphs, batch_size, progress, total=len(configs))
