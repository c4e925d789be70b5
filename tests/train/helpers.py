"""Small synthetic labelled data sets (ASE's EMT potential) for training tests."""

from __future__ import annotations

from pathlib import Path

import ase
import ase.build
import numpy as np
from ase.calculators.emt import EMT
from ase.io import write


def labelled(atoms: ase.Atoms, stress: bool = False) -> ase.Atoms:
    """Attach EMT energy/forces (and stress) as REF_* labels."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    s = atoms.get_stress(voigt=False) if stress else None
    atoms.calc = None
    atoms.info["REF_energy"] = energy
    atoms.arrays["REF_forces"] = forces
    if s is not None:
        atoms.info["REF_stress"] = s.reshape(-1)
    return atoms


def molecules(n: int, seed: int = 0) -> list[ase.Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = ase.build.molecule("CH3OH" if k % 2 else "H2O")
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        out.append(labelled(atoms))
    return out


def copper_cells(n: int, seed: int = 0) -> list[ase.Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        out.append(labelled(atoms, stress=True))
    return out


def write_xyz(path: Path, frames: list[ase.Atoms]) -> Path:
    write(path, frames, format="extxyz")
    return path


TINY_MODEL = dict(
    channels=4,
    max_L=1,
    max_ell=1,
    correlation=2,
    radial_mlp=[8],
    r_max=3.0,
    num_interactions=2,
    batch_size=4,
    valid_batch_size=8,
    readout_mlp=4,
)
