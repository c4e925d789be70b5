"""Small per-structure facts of a data set: everything statistics, E0 fits, splits and element
checks need, without the coordinates and forces.

A :class:`Summary` holds, per structure, its size, atomic numbers, energy, which labels it has,
the sum of its squared force components, its number of edges within ``r_max`` and where it came
from. It is built from parsed structures (:meth:`Summary.from_configs`) or read from a prepared
data set (:mod:`openmace.data.prepared`, where it is written in the same pass as the shards), and
every statistic of training is computed from it, the same way for both: a prepared data set
gives the same E0s, ``avg_num_neighbors``, shift and scale, bit for bit, as the file it was
prepared from, and training never reads the shards a second time for them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from ase.data import chemical_symbols

from openmace.data.errors import DataError


@dataclass
class Summary:
    num_atoms: np.ndarray  # int64 [S]
    numbers: np.ndarray  # int64 [sum num_atoms], structure after structure
    energy: np.ndarray  # float64 [S] eV, NaN where missing
    has_forces: np.ndarray  # bool [S]
    has_stress: np.ndarray  # bool [S]
    has_virials: np.ndarray  # bool [S]
    forces_sumsq: np.ndarray  # float64 [S] Σ F_iα² (eV²/Å²), 0 without forces
    config_type: np.ndarray  # object [S] str
    source: np.ndarray  # object [S] str: the file each structure was read from
    index: np.ndarray  # int64 [S]: its index in that file
    num_edges: np.ndarray | None = None  # int64 [S] within r_max (None: not counted)

    def __len__(self) -> int:
        return len(self.num_atoms)

    @property
    def offsets(self) -> np.ndarray:
        """Start of each structure's atoms in :attr:`numbers` ([S + 1])."""
        return np.concatenate([[0], np.cumsum(self.num_atoms)]).astype(np.int64)

    @property
    def has_energy(self) -> np.ndarray:
        return ~np.isnan(self.energy)

    def take(self, rows: np.ndarray | list[int]) -> Summary:
        """The summary of structures ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        counts = self.num_atoms[rows]
        # atom indices of each picked structure, one after another, without a Python loop
        shift = np.repeat(self.offsets[rows] - (np.cumsum(counts) - counts), counts)
        picked = shift + np.arange(int(counts.sum()), dtype=np.int64)
        values = {
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[rows])
            for f in fields(self)
            if f.name != "numbers"
        }
        return Summary(numbers=self.numbers[picked], **values)

    @classmethod
    def concat(cls, parts: list[Summary]) -> Summary:
        values = {}
        for f in fields(cls):
            items = [getattr(p, f.name) for p in parts]
            values[f.name] = None if any(v is None for v in items) else np.concatenate(items)
        return cls(**values)

    @classmethod
    def from_configs(cls, configs, num_edges: np.ndarray | None = None) -> Summary:
        """The summary of parsed structures (:class:`openmace.data.configurations.Configuration`);
        ``num_edges``: each one's edge count, when its graph is built."""
        configs = list(configs)
        return cls(
            num_atoms=np.array([len(c) for c in configs], dtype=np.int64),
            numbers=np.concatenate(
                [np.asarray(c.atomic_numbers, dtype=np.int64) for c in configs]
                or [np.zeros(0, dtype=np.int64)]
            ),
            energy=np.array(
                [np.nan if c.energy is None else c.energy for c in configs], dtype=np.float64
            ),
            has_forces=np.array([c.forces is not None for c in configs], dtype=bool),
            has_stress=np.array([c.stress is not None for c in configs], dtype=bool),
            has_virials=np.array([c.virials is not None for c in configs], dtype=bool),
            forces_sumsq=np.array([forces_sumsq(c.forces) for c in configs], dtype=np.float64),
            config_type=np.array([c.config_type for c in configs], dtype=object),
            source=np.array([c.source for c in configs], dtype=object),
            index=np.array([c.index for c in configs], dtype=np.int64),
            num_edges=None if num_edges is None else np.asarray(num_edges, dtype=np.int64),
        )

    def structure_of_atoms(self) -> np.ndarray:
        """The structure (row) of every entry of :attr:`numbers`."""
        return np.repeat(np.arange(len(self)), self.num_atoms)

    def elements(self) -> list[int]:
        return sorted(int(z) for z in np.unique(self.numbers))

    def isolated(self, types: tuple[str, ...]) -> np.ndarray:
        """Which structures are isolated atoms: one atom and a ``config_type`` in ``types``."""
        return (self.num_atoms == 1) & np.isin(self.config_type.astype(str), list(types))

    def composition(self, elements: list[int]) -> np.ndarray:
        """Atoms of each of ``elements`` per structure: ``[S, len(elements)]`` (float64)."""
        column = np.full(max(max(elements, default=0), int(self.numbers.max(initial=0))) + 1, -1)
        column[np.asarray(elements, dtype=np.int64)] = np.arange(len(elements))
        counts = np.zeros((len(self), len(elements)))
        np.add.at(counts, (self.structure_of_atoms(), column[self.numbers]), 1.0)
        return counts

    def check_elements(self, elements: set[int], problem: str) -> None:
        """A :class:`DataError` naming the first structure with an element outside
        ``elements``: ``element(s) X {problem}``."""
        outside = ~np.isin(self.numbers, sorted(elements))
        if not outside.any():
            return
        row = int(self.structure_of_atoms()[np.argmax(outside)])
        start, stop = self.offsets[row], self.offsets[row + 1]
        unknown = sorted(set(self.numbers[start:stop].tolist()) - elements)
        symbols = ", ".join(chemical_symbols[z] for z in unknown)
        raise DataError(self.source[row], int(self.index[row]), f"element(s) {symbols} {problem}")


def forces_sumsq(forces: np.ndarray | None) -> float:
    """Σ F² of one structure's forces (0 without forces): the scale statistic's summand."""
    if forces is None:
        return 0.0
    flat = np.asarray(forces, dtype=np.float64).reshape(-1)
    return float(np.dot(flat, flat))
