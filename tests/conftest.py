"""Shared fixtures: float64 models of several shapes, structures, and the parity fixtures."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import ase
import ase.build
import numpy as np
import pytest
import torch

from openmace.model import MACE, MACEConfig

DATA = Path(__file__).parent / "data"
PARITY = DATA / "parity"
PARITY_NAMES = sorted(p.name for p in PARITY.iterdir() if (p / "config.json").exists())


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_model(seed: int = 0, **overrides) -> MACE:
    """A small random float64 model; ``overrides`` change any :class:`MACEConfig` field."""
    torch.manual_seed(seed)
    kwargs = dict(
        atomic_numbers=[1, 6, 8, 29],
        atomic_energies=[-1.1, -5.3, -4.2, -2.5],
        r_max=3.5,
        hidden_irreps="8x0e+8x1o",
        max_ell=3,
        correlation=3,
        num_interactions=2,
        radial_mlp=[16, 16],
        avg_num_neighbors=6.0,
        scale=1.3,
        shift=-0.2,
    )
    kwargs.update(overrides)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return MACE(MACEConfig(**kwargs))
    finally:
        torch.set_default_dtype(previous)


def molecule(seed: int = 0) -> ase.Atoms:
    """Ethanol with its atoms rattled (no symmetry left to hide mistakes)."""
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def triclinic_cell(seed: int = 0) -> ase.Atoms:
    """A periodic triclinic Cu/C/O/H cell with 8 atoms, rattled."""
    rng = np.random.default_rng(seed)
    cell = np.array([[4.2, 0.3, 0.1], [0.5, 4.0, -0.2], [0.3, 0.4, 4.4]])
    frac = rng.random((8, 3))
    atoms = ase.Atoms(
        numbers=[29, 29, 29, 6, 6, 8, 1, 1], scaled_positions=frac, cell=cell, pbc=True
    )
    # keep atoms apart: push any pair closer than 1 Å away by re-sampling
    while min(atoms.get_all_distances(mic=True)[np.triu_indices(8, 1)]) < 1.0:
        atoms.set_scaled_positions(rng.random((8, 3)))
    return atoms


@pytest.fixture(scope="session")
def parity_dirs(tmp_path_factory) -> dict[str, Path]:
    """Parity fixtures with their weights decompressed into a temporary folder."""
    out = {}
    root = tmp_path_factory.mktemp("parity")
    for name in PARITY_NAMES:
        target = root / name
        target.mkdir()
        src = PARITY / name
        for f in ("config.json", "reference.json", "structures.xyz"):
            (target / f).write_bytes((src / f).read_bytes())
        (target / "weights.safetensors").write_bytes(
            lzma.decompress((src / "weights.safetensors.xz").read_bytes())
        )
        out[name] = target
    return out


def load_reference(path: Path) -> list[dict]:
    return json.loads((path / "reference.json").read_text())["structures"]
