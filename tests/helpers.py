"""Shared test helpers (models, structures, data sets, fixtures' paths), imported by the test
modules; pytest fixtures live in the conftest.py files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ase
import ase.build
import numpy as np
import torch
from ase.calculators.emt import EMT
from ase.io import write

from openmace.accel import for_inference
from openmace.model import MACE, MACEConfig
from openmace.train.config import build_config

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity"
PARITY_NAMES = sorted(p.name for p in PARITY.iterdir() if (p / "config.json").exists())


#: model options covering every block kind and radial-weight path (swaps are tested on each)
BLOCK_VARIANTS = {
    "default": {},
    "L2_mixed_parity": {"hidden_irreps": "6x0e+6x1o+6x2e+6x1e", "pair_repulsion": True},
    "one_radial_layer": {"radial_mlp": []},
    "non_residual_first": {"correlation": 1, "max_ell": 2},
    # radial weights computed outside the kernels (envelope before the last layer)
    "envelope_after_mlp": {"apply_cutoff": False},
    "density": {"interaction": "density"},
    "nonlinear": {"interaction": "nonlinear", "agnostic_product": True},
    "nonlinear_envelope_after_mlp": {"interaction": "nonlinear", "apply_cutoff": False},
}


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
    return MACE(MACEConfig(**kwargs), dtype=torch.float64)


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


def load_reference(path: Path) -> list[dict]:
    return json.loads((path / "reference.json").read_text())["structures"]


def compiler_available() -> bool:
    return bool(shutil.which("c++") or shutil.which("g++")) and bool(shutil.which("ninja"))


def random_rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    return q * torch.sign(torch.linalg.det(q))


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


def make_config(tmp_path, train_file, **overrides):
    values = dict(
        TINY_MODEL,
        train_file=str(train_file),
        work_dir=str(tmp_path / "run"),
        epochs=3,
        quiet=True,
        seed=7,
        e0s="average",
    )
    values.update(overrides)
    return build_config({}, values)


def pooled_messages_case(paired: bool = False, nonlinear: bool = False):
    """A frozen interaction block (4-edge chunks) and random inputs for its pooled messages;
    ``paired``: the second half of the edges reverses the first and the radial features are
    given for the first half only (paired_edges in graph.py); ``nonlinear``: the non-linear
    block (LayerNorm radial MLP with bias) with an envelope per radial row, also an input."""
    options = {"interaction": "nonlinear"} if nonlinear else {}
    model = for_inference(make_model(hidden_irreps="3x0e+3x1o", radial_mlp=[5, 4], **options))
    block = model.interactions[1]
    block.messages.edge_chunk = 4
    gen = torch.Generator().manual_seed(0)
    n, e, c = 4, 10 if paired else 9, block.channels
    dim_in = sum(ir.dim for ir in block.irreps_in)
    x = torch.randn(n, dim_in, c, generator=gen, requires_grad=True)
    sh = torch.randn(
        e, block.messages.tensor_product.cg_matrix.shape[0], generator=gen, requires_grad=True
    )
    rows = e // 2 if paired else e
    radial = torch.randn(
        rows, block.messages.radial_mlp.sizes[0], generator=gen, requires_grad=True
    )
    sender = torch.randint(0, n, (e,), generator=gen)
    receiver = torch.randint(0, n, (e,), generator=gen)
    if paired:
        sender[rows:], receiver[rows:] = receiver[:rows], sender[:rows]

    if nonlinear:
        cutoff = torch.rand(rows, 1, generator=gen, dtype=x.dtype, requires_grad=True)

        def pooled(x, sh, radial, cutoff):
            return block.messages(x, sh, radial, sender, receiver, cutoff)

        return pooled, (x, sh, radial, cutoff), (block, sender, receiver)

    def pooled(x, sh, radial):
        return block.messages(x, sh, radial, sender, receiver)

    return pooled, (x, sh, radial), (block, sender, receiver)
