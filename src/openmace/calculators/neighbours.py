"""Neighbour list with a Verlet skin for repeated evaluations (MD, relaxations).

Pairs are found within ``r_max + skin`` and reused until an atom has moved more than ``skin/2``
(or the cell, periodicity or atoms change). Pairs beyond ``r_max`` contribute exactly zero (the
radial envelope vanishes there), so results equal a fresh build up to summation order.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from openmace.data.graph import Graph, graph_from_arrays, neighbour_list


class SkinNeighbourList:
    def __init__(self, cutoff: float, skin: float = 0.5) -> None:
        self.cutoff, self.skin = cutoff, skin
        self.reference: np.ndarray | None = None
        self.key = None
        self.edges = None
        self.builds = 0

    def _stale(self, atoms: Atoms) -> bool:
        key = (
            atoms.get_atomic_numbers().tobytes(),
            np.asarray(atoms.get_cell()[:]).tobytes(),
            atoms.get_pbc().tobytes(),
        )
        if self.reference is None or key != self.key:
            self.key = key
            return True
        moved = np.linalg.norm(atoms.get_positions() - self.reference, axis=1)
        return bool(moved.max(initial=0.0) > 0.5 * self.skin)

    def pairs(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sender, receiver and unit shifts of the pairs within ``cutoff + skin`` of the
        reference positions (rebuilt when stale; every pair once, then reversed). A failed
        build (:class:`ValueError` from :func:`neighbour_list`) leaves nothing to reuse."""
        if self._stale(atoms):
            self.reference, self.edges = None, None
            try:
                edges = neighbour_list(
                    atoms.get_positions(),
                    np.asarray(atoms.get_cell()[:]),
                    atoms.get_pbc(),
                    self.cutoff + self.skin,
                )
            except BaseException:
                self.key = None
                raise
            self.reference, self.edges = atoms.get_positions().copy(), edges
            self.builds += 1
        return self.edges

    def graph(self, atoms: Atoms) -> Graph:
        sender, receiver, shifts = self.pairs(atoms)
        return graph_from_arrays(
            atoms.get_positions(),
            atoms.get_atomic_numbers(),
            np.asarray(atoms.get_cell()[:]),
            atoms.get_pbc(),
            sender,
            receiver,
            shifts,
        )
