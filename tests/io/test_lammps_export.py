"""The LAMMPS model file (openmace export --lammps): in a plain PyTorch process it gives the
eager model's energies and forces, with the compiled operators and with the reference
operations; its lammps.txt says what the plugin needs."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from openmace.calculators.mace import MACECalculator
from openmace.io.lammps import INTERFACE_VERSION, export_lammps
from tests.helpers import compiler_available, make_model, triclinic_cell


def explicit_images(atoms, r_max: float):
    """The cell's atoms followed by their periodic images within 2.5 r_max (as LAMMPS'
    ghosts): positions, numbers, the graph of all pairs closer than r_max (no cell) and the
    original atom of each image."""
    from ase.neighborlist import neighbor_list

    _, j, shift = neighbor_list("ijS", atoms, 2.5 * r_max)
    images = sorted({(int(jj), *map(int, s)) for jj, s in zip(j, shift) if any(s)})
    cell = atoms.cell.array
    pos = [atoms.positions] + [(atoms.positions[k] + np.array(s) @ cell)[None] for k, *s in images]
    positions = np.concatenate(pos)
    numbers = np.concatenate([atoms.numbers, [atoms.numbers[k] for k, *_ in images]])
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    sender, receiver = np.nonzero((d < r_max) & (d > 0))
    edge_index = torch.tensor(np.stack([sender, receiver]), dtype=torch.long)
    owners = [k for k, *_ in images]
    return torch.tensor(positions), torch.tensor(numbers), edge_index, owners


@pytest.mark.parametrize("operators", [True, False], ids=["operators", "reference"])
def test_exported_file_gives_the_eager_numbers_for_the_local_atoms(operators, tmp_path):
    if operators and not compiler_available():
        pytest.skip("no C++ compiler or ninja")
    model = make_model(hidden_irreps="8x0e+8x1o+8x2e", r_max=3.0)
    atoms = triclinic_cell() * (2, 1, 1)
    path = export_lammps(model, tmp_path / "model.pt", operators=operators)
    extra = {"lammps.txt": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    text = extra["lammps.txt"]
    text = text.decode() if isinstance(text, bytes) else text
    fields = dict(line.split(" ", 1) for line in text.splitlines())
    assert fields["openmace-lammps"] == str(INTERFACE_VERSION)
    assert fields["implementation"] == ("operators" if operators else "reference")
    assert int(fields["num_layers"]) == 2 and float(fields["r_max"]) == 3.0
    positions, numbers, edge_index, owners = explicit_images(atoms, 3.0)
    out = scripted(positions, numbers, edge_index, len(atoms))
    atoms.calc = MACECalculator(model=model, dtype="float64")
    assert abs(out["energy"].item() - atoms.get_potential_energy()) < 1e-12
    # forces on the images belong to their originals (LAMMPS' reverse communication)
    forces = out["forces"][: len(atoms)].clone()
    forces.index_add_(0, torch.tensor(owners), out["forces"][len(atoms) :])
    np.testing.assert_allclose(forces.numpy(), atoms.get_forces(), rtol=0, atol=1e-12)
    assert zipfile.is_zipfile(path)


def images_within(atoms, shell: float, one_way: bool = False):
    """The cell's atoms, then their periodic images within ``shell`` of the cell (as LAMMPS'
    ghosts with the default communication cutoff), the owner of each, and every pair closer
    than r_max with at least one atom of the cell, both directions (reversed halves); with
    ``one_way`` (what the plugin sends): the pairs of two cell atoms both ways, then the
    edges from images to cell atoms only."""
    from ase.neighborlist import neighbor_list

    r_max = 3.0
    _, j, shift = neighbor_list("ijS", atoms, shell)
    images = sorted({(int(jj), *map(int, s)) for jj, s in zip(j, shift) if any(s)})
    cell = atoms.cell.array
    positions = np.concatenate(
        [atoms.positions] + [(atoms.positions[k] + np.array(s) @ cell)[None] for k, *s in images]
    )
    n = len(atoms)
    owners = np.concatenate([np.arange(n), [k for k, *_ in images]]).astype(np.int64)
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    first, second = np.nonzero((d < r_max) & (d > 0))
    keep = (first < n) & ((second >= n) | (first < second))  # each pair once
    first, second = first[keep], second[keep]
    edge_index = np.stack([np.concatenate([second, first]), np.concatenate([first, second])])
    if one_way:
        own = second < n
        first, second, f, s = first[own], second[own], first[~own], second[~own]
        edge_index = np.stack(
            [np.concatenate([second, first, s]), np.concatenate([first, second, f])]
        )
    return (
        torch.tensor(positions),
        torch.tensor(atoms.numbers[owners]),
        torch.tensor(edge_index),
        torch.tensor(owners),
    )


BLOCKS = {
    "standard": {},
    "first_not_residual": {"residual_first": False},
    "density": {"interaction": "density", "agnostic_product": True},
    "nonlinear": {"interaction": "nonlinear", "apply_cutoff": False},
}


@pytest.mark.parametrize("one_way", [False, True], ids=["both_ways", "one_way"])
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("operators", [True, False], ids=["operators", "reference"])
def test_exchange_gives_the_calculator_numbers_with_ghosts_to_r_max_only(
    operators, block, one_way, tmp_path
):
    """Three layers, ghosts to r_max: exact only because the ghosts' node features are their
    owners' between layers (with the ghost-shell forward, the same atoms give other numbers)."""
    if operators and not compiler_available():
        pytest.skip("no C++ compiler or ninja")
    model = make_model(
        hidden_irreps="8x0e+8x1o+8x2e", r_max=3.0, num_interactions=3, **BLOCKS[block]
    )
    atoms = triclinic_cell() * (2, 1, 1)
    scripted = torch.jit.load(str(export_lammps(model, tmp_path / "m.pt", operators=operators)))
    positions, numbers, edge_index, owners = images_within(atoms, 3.0, one_way)
    out = scripted.exchange(positions, numbers, edge_index, len(atoms), owners)
    atoms.calc = MACECalculator(model=model, dtype="float64")
    assert abs(out["energy"].item() - atoms.get_potential_energy()) < 1e-12
    np.testing.assert_allclose(
        out["node_energy"].numpy(), atoms.get_potential_energies(), rtol=0, atol=1e-12
    )
    forces = out["forces"][: len(atoms)].clone()
    forces.index_add_(0, owners[len(atoms) :], out["forces"][len(atoms) :])
    np.testing.assert_allclose(forces.numpy(), atoms.get_forces(), rtol=0, atol=1e-12)
    shell_only = scripted(positions, numbers, edge_index, len(atoms))
    assert abs(shell_only["energy"].item() - atoms.get_potential_energy()) > 1e-6


@pytest.mark.parametrize("block", ["standard", "nonlinear"])
def test_one_way_edges_of_a_domain_take_one_radial_row_each(block, monkeypatch):
    """A domain's edges as the plugin sends them (own pairs both ways, then edges from copies
    one way): radial features once per own pair and once per one-way edge, the numbers of the
    both-ways layout."""
    model = make_model(hidden_irreps="8x0e+8x1o", r_max=3.0, **BLOCKS[block])
    atoms = triclinic_cell() * (2, 1, 1)
    n = len(atoms)
    rows = []
    original = type(model).radial_features
    monkeypatch.setattr(
        type(model),
        "radial_features",
        lambda self, lengths, *a: rows.append(lengths.shape[0]) or original(self, lengths, *a),
    )
    results = []
    for one_way in (False, True):
        positions, numbers, edge_index, owners = images_within(atoms, 3.0, one_way)
        positions.requires_grad_(True)
        _, node_energy = model.energy(
            positions,
            numbers,
            positions.new_zeros((1, 3, 3)),
            edge_index,
            positions.new_zeros((edge_index.shape[1], 3)),
            torch.zeros(len(positions), dtype=torch.long),
            1,
            owners=owners,
            num_local=n,
        )
        (grad,) = torch.autograd.grad(node_energy[:n].sum(), positions)
        results.append((node_energy[:n].detach(), grad))
        receiver = edge_index[1]
        own_pairs = int(((edge_index[0] < n) & (receiver < n)).sum()) // 2
        one_way_edges = int((edge_index[0] >= n).sum())
        if one_way:  # each own pair and each edge from a copy once
            assert rows[-1] == own_pairs + one_way_edges
            assert edge_index.shape[1] == 2 * own_pairs + one_way_edges
        else:
            assert rows[-1] == edge_index.shape[1] // 2
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=1e-12)


def test_multi_head_models_are_refused_with_advice(tmp_path):
    energies = [[-1.1, -5.3, -4.2, -2.5], [-1.0, -5.0, -4.0, -2.0]]
    model = make_model(heads=["a", "b"], atomic_energies=energies)
    with pytest.raises(ValueError, match="one head at a time"):
        export_lammps(model, tmp_path / "m.pt")


@pytest.mark.parametrize("reference", [False, True], ids=["operators", "reference"])
def test_export_lammps_command(reference, tmp_path, capsys):
    from openmace.cli.main import main
    from openmace.io.model_file import save_model

    if not reference and not compiler_available():
        pytest.skip("no C++ compiler or ninja")
    source = save_model(make_model(), tmp_path / "m.safetensors")
    target = tmp_path / "m.pt"
    argv = ["export", "--lammps", str(source), "-o", str(target)]
    assert main(argv + (["--reference"] if reference else [])) == 0
    out = capsys.readouterr().out
    assert f"pair_coeff * * {target} H C O Cu" in out
    extra = {"lammps.txt": ""}
    torch.jit.load(str(target), _extra_files=extra)
    text = extra["lammps.txt"]
    text = text.decode() if isinstance(text, bytes) else text
    assert f"implementation {'reference' if reference else 'operators'}" in text
    # both formats at once is a usage error
    assert main(argv + ["--torchscript", "--overwrite"]) == 2
