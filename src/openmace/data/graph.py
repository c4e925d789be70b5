"""Atomic graphs: structures, their neighbour lists, and batches of several structures.

A :class:`Graph` is a plain bundle of tensors. Edges run from ``sender`` to ``receiver``; the edge
vector is ``r_receiver - r_sender + unit_shift · cell`` (periodic images keep their own edge; an
atom's own image in a neighbouring cell is a neighbour, the atom itself is not).

Edge order: the graphs built here list every pair once, then the same pairs reversed in the same
order (edge ``e + H`` is edge ``e`` backwards, with the opposite shift). An edge and its reverse
have the same length, so the model evaluates the radial features and the radial MLP once per pair
(:func:`paired_edges`); any other order is valid too and gets one evaluation per edge. The
general form, ``P`` pairs, their ``P`` reverses, then edges that come once (a LAMMPS domain),
has ``P + (E - 2P)`` radial rows (:func:`radial_rows`): from ``R`` rows and ``E`` edges,
``P = E - R``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import ase
import numpy as np
import torch
from vesin import NeighborList

from openmace.data.geometry import (
    check_cutoff,
    check_geometry,
    check_pair_memory,
    check_search_grid,
    pairs_from_density,
    search_frame,
)


@dataclass
class Graph:
    positions: torch.Tensor  # [n_atoms, 3] Å
    atomic_numbers: torch.Tensor  # [n_atoms] int64
    cell: torch.Tensor  # [n_graphs, 3, 3] Å, rows are lattice vectors (zeros if not periodic)
    pbc: torch.Tensor  # [n_graphs, 3] bool
    edge_index: torch.Tensor  # [2, n_edges] int64 (sender, receiver)
    unit_shifts: torch.Tensor  # [n_edges, 3] integer lattice translations, as floats
    batch: torch.Tensor  # [n_atoms] graph index of each atom
    num_graphs: int
    # per-structure inputs of models that embed them (MACE-OMOL): total charge (e) and spin
    # multiplicity 2S+1, as floats [n_graphs]; None when not given
    total_charge: torch.Tensor | None = None
    total_spin: torch.Tensor | None = None
    # head index of each graph [n_graphs] int64 (multi-head training); None: the model's default
    head: torch.Tensor | None = None

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Graph:
        """Move to a device; floating tensors also to ``dtype``."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                target_dtype = dtype if (dtype is not None and value.is_floating_point()) else None
                changes[f.name] = value.to(device=device, dtype=target_dtype)
        return replace(self, **changes)


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs within ``cutoff``: ``i → j`` with vector ``r_j - r_i + S·cell``; no self-pairs.

    Every input is checked first (:mod:`openmace.data.geometry`: finite coordinates within
    ±1e5 Å, a periodic sub-cell at least 0.5 Å thick, a list that fits in memory, a cell grid
    the library can handle), so no input reaches vesin that could crash it (SIGFPE) or hang it:
    a :class:`ValueError` names the problem instead."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(positions) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros((0, 3))
    cutoff = check_cutoff(cutoff)
    periodic = np.asarray(pbc, dtype=bool).reshape(3)
    cell = np.asarray(cell, dtype=np.float64)
    check_geometry(positions, cell, periodic)
    frame = search_frame(positions, cell, periodic, cutoff)
    pairs = pairs_from_density(len(positions), frame.volume, bool(periodic.any()), cutoff)
    check_pair_memory(pairs, cutoff, f"{len(positions)} atoms")
    check_search_grid(frame.box, cutoff)
    i, j, s = NeighborList(cutoff=cutoff, full_list=False).compute(
        points=frame.points, box=frame.box, periodic=True, quantities="ijS"
    )
    i, j = i.astype(np.int64), j.astype(np.int64)
    s = s.astype(np.int64) - frame.offsets[j] + frame.offsets[i]
    keep = ~((i == j) & np.all(s == 0, axis=1)) & np.all(s[:, ~periodic] == 0, axis=1)
    i, j, s = i[keep], j[keep], s[keep].astype(np.float64)
    # every pair once, then reversed (see the module docstring)
    return np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([s, -s])


def paired_edges(edge_index: torch.Tensor, unit_shifts: torch.Tensor, pairs: int = -1) -> int:
    """``P`` if edge ``e + P`` is edge ``e`` reversed (opposite shift) for every ``e < P``, else
    0 (also for no edges). The edges from ``2P`` on then come once each (a LAMMPS domain: pairs
    of its own atoms both ways, edges from copies of other ranks' atoms one way). ``pairs``:
    the ``P`` to check; default half of the edges (all of them in reversed halves, as the
    graphs built here)."""
    num_edges = edge_index.shape[1]
    if pairs < 0:
        if num_edges % 2 == 1:
            return 0
        pairs = num_edges // 2
    if pairs == 0 or 2 * pairs > num_edges:
        return 0
    first, second = edge_index[:, :pairs], edge_index[:, pairs : 2 * pairs]
    if torch.equal(second, first.flip(0)) and torch.equal(
        unit_shifts[pairs : 2 * pairs], -unit_shifts[:pairs]
    ):
        return pairs
    return 0


def radial_rows(values: torch.Tensor, pairs: int) -> torch.Tensor:
    """Per-edge ``values`` → one row per pair and per unpaired edge: rows ``0..P`` of the
    first ``P`` edges (their reverses share them), then the edges from ``2P`` on
    (:func:`paired_edges`)."""
    if pairs == 0:
        return values
    if 2 * pairs == values.shape[0]:
        return values[:pairs]
    return torch.cat([values[:pairs], values[2 * pairs :]])


def graph_from_arrays(
    positions: np.ndarray,
    atomic_numbers: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    sender: np.ndarray,
    receiver: np.ndarray,
    unit_shifts: np.ndarray,
) -> Graph:
    """One structure as a graph, from its arrays and a neighbour list (:func:`neighbour_list`'s
    ``sender, receiver, unit_shifts``). The only place a single structure's :class:`Graph` is
    assembled; floating tensors are float64 (cast with :meth:`Graph.to`)."""
    return Graph(
        positions=torch.tensor(np.asarray(positions, dtype=np.float64)).reshape(-1, 3),
        atomic_numbers=torch.tensor(np.asarray(atomic_numbers), dtype=torch.long).reshape(-1),
        cell=torch.tensor(np.asarray(cell, dtype=np.float64)).reshape(1, 3, 3),
        pbc=torch.tensor(np.asarray(pbc, dtype=bool)).reshape(1, 3),
        edge_index=torch.tensor(np.stack([sender, receiver]), dtype=torch.long).reshape(2, -1),
        unit_shifts=torch.tensor(np.asarray(unit_shifts, dtype=np.float64)).reshape(-1, 3),
        batch=torch.zeros(len(positions), dtype=torch.long),
        num_graphs=1,
    )


def build_graph(
    positions: np.ndarray,
    atomic_numbers: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
) -> Graph:
    """One structure as a graph with its neighbour list within ``cutoff`` (one build)."""
    sender, receiver, shifts = neighbour_list(positions, cell, pbc, cutoff)
    return graph_from_arrays(positions, atomic_numbers, cell, pbc, sender, receiver, shifts)


def graph_from_atoms(atoms: ase.Atoms, cutoff: float) -> Graph:
    """One structure as a graph (float64 positions; cast with :meth:`Graph.to`)."""
    return build_graph(
        atoms.get_positions(),
        atoms.get_atomic_numbers(),
        np.asarray(atoms.get_cell()[:], dtype=np.float64),
        np.asarray(atoms.get_pbc(), dtype=bool),
        cutoff,
    )


def collate(graphs: list[Graph]) -> Graph:
    """Concatenate graphs into one batch (edge indices offset by the atoms before them). When
    every graph's edges are paired (:func:`paired_edges`), so are the batch's: all first halves,
    then all second halves."""
    offsets = np.cumsum([0] + [len(g.positions) for g in graphs[:-1]])
    graph_offsets = np.cumsum([0] + [g.num_graphs for g in graphs[:-1]])
    edge_index = [g.edge_index + int(o) for g, o in zip(graphs, offsets)]
    unit_shifts = [g.unit_shifts for g in graphs]
    halves = [paired_edges(g.edge_index, g.unit_shifts) for g in graphs]
    if len(graphs) > 1 and all(h > 0 or g.edge_index.shape[1] == 0 for h, g in zip(halves, graphs)):
        edge_index = [e[:, :h] for e, h in zip(edge_index, halves)] + [
            e[:, h:] for e, h in zip(edge_index, halves)
        ]
        unit_shifts = [u[:h] for u, h in zip(unit_shifts, halves)] + [
            u[h:] for u, h in zip(unit_shifts, halves)
        ]
    joined = {
        "edge_index": torch.cat(edge_index, dim=1),
        "unit_shifts": torch.cat(unit_shifts),
        "batch": torch.cat([g.batch + int(o) for g, o in zip(graphs, graph_offsets)]),
        "num_graphs": sum(g.num_graphs for g in graphs),
    }
    for f in fields(Graph):  # every other field is per atom or per graph: concatenated
        if f.name not in joined:
            values = [getattr(g, f.name) for g in graphs]
            # optional per-structure inputs: only when every structure has them (a model that
            # needs them says so)
            joined[f.name] = None if any(v is None for v in values) else torch.cat(values)
    return Graph(**joined)


def batch_atoms(atoms_list: list[ase.Atoms], cutoff: float) -> Graph:
    return collate([graph_from_atoms(a, cutoff) for a in atoms_list])
