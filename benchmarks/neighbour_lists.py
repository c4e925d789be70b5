"""Neighbour-list libraries compared: vesin (used), matscipy, ASE; median ms per build.

python benchmarks/neighbour_lists.py
"""

from __future__ import annotations

import time
from functools import partial

import ase.build
import numpy as np
from ase.neighborlist import neighbor_list as ase_neighbor_list

from openmace.data.graph import neighbour_list as vesin_neighbour_list


def timed(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    try:
        from matscipy.neighbours import neighbour_list as matscipy_neighbour_list
    except ImportError:
        matscipy_neighbour_list = None
    cases = {
        "ethanol (9 atoms)": ase.build.molecule("CH3CH2OH"),
        "Cu 64 atoms": ase.build.bulk("Cu", cubic=True) * (2, 2, 4),
        "Cu 1000 atoms": ase.build.bulk("Cu", cubic=True) * (5, 5, 10),
        "Cu 4000 atoms": ase.build.bulk("Cu", cubic=True) * (10, 10, 10),
    }
    cutoff = 5.0
    print(f"{'structure':<20}{'vesin ms':>10}{'matscipy ms':>13}{'ASE ms':>10}{'pairs':>10}")
    for name, atoms in cases.items():
        atoms.rattle(0.01, seed=0)
        pos, cell, pbc = atoms.positions, atoms.cell[:], atoms.pbc
        t_vesin = timed(partial(vesin_neighbour_list, pos, cell, pbc, cutoff))
        pairs = len(vesin_neighbour_list(pos, cell, pbc, cutoff)[0])
        boxed = atoms.copy()
        if not boxed.pbc.any():  # matscipy needs a cell even without periodicity
            boxed.cell = np.eye(3) * (np.ptp(boxed.positions, axis=0).max() + 3 * cutoff)
        t_matscipy = (
            timed(partial(matscipy_neighbour_list, "ijS", boxed, cutoff))
            if matscipy_neighbour_list
            else float("nan")
        )
        t_ase = timed(partial(ase_neighbor_list, "ijS", atoms, cutoff), repeats=3)
        print(f"{name:<20}{t_vesin:>10.2f}{t_matscipy:>13.2f}{t_ase:>10.2f}{pairs:>10}")


if __name__ == "__main__":
    main()
