from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch
from ase import units
from ase.filters import FrechetCellFilter
from ase.io import read
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from openmace import MACECalculator
from openmace.calculators.neighbours import SkinNeighbourList
from openmace.data.graph import batch_atoms
from openmace.io.mace_torch import load_mace_torch
from tests.helpers import load_reference, make_model, molecule, triclinic_cell


def test_calculator_equals_model():
    model = make_model()
    atoms = triclinic_cell()
    atoms.calc = MACECalculator(model=model)
    out = model(batch_atoms([atoms], model.config.r_max), compute_stress=True)
    assert atoms.get_potential_energy() == pytest.approx(out["energy"].item(), abs=1e-10)
    assert np.allclose(atoms.get_forces(), out["forces"].detach().numpy(), atol=1e-10)
    s = out["stress"][0].detach().numpy()
    voigt = [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
    assert np.allclose(atoms.get_stress(), voigt, atol=1e-12)
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy())
    # the calculator evaluates the atoms sorted by element; per-atom results come back in order
    assert np.allclose(
        atoms.get_potential_energies(), out["node_energy"].detach().numpy(), atol=1e-12
    )


def test_element_ordered_graph():
    atoms = triclinic_cell()  # Cu Cu Cu C C O H H
    neighbours = SkinNeighbourList(3.5)
    plain = neighbours.graph(atoms)
    graph, rank = neighbours.element_ordered_graph(atoms)
    numbers = graph.atomic_numbers.numpy()
    assert list(numbers) == sorted(atoms.numbers) and rank is not None
    assert np.array_equal(numbers[rank], atoms.numbers)
    assert np.array_equal(graph.positions.numpy()[rank], atoms.positions)

    # the same pairs (vectors), renumbered
    def vectors(g):
        s, r = g.edge_index
        return g.positions[r] - g.positions[s] + g.unit_shifts @ g.cell[0]

    assert torch.equal(vectors(graph), vectors(plain))
    assert torch.equal(graph.edge_index, torch.as_tensor(rank)[plain.edge_index])
    sorted_atoms = atoms[np.argsort(atoms.numbers, kind="stable")]
    assert neighbours.element_ordered_graph(sorted_atoms)[1] is None


def test_calculator_leaves_the_callers_model_unchanged():
    """The calculator evaluates a frozen copy in its own dtype; the model keeps training."""
    import torch

    model = make_model().to(torch.float32)
    atoms = molecule()
    atoms.calc = MACECalculator(model=model, dtype="float64")
    atoms.get_forces()
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(p.requires_grad for p in atoms.calc.models[0].parameters())


def test_converted_parity_model_through_the_calculator(parity_dirs):
    folder = parity_dirs["p3_periodic_L2_first_nonresidual"]
    calc = MACECalculator(model=load_mace_torch(folder))
    for atoms, ref in zip(read(folder / "structures.xyz", ":"), load_reference(folder)):
        atoms.calc = calc
        assert abs(atoms.get_potential_energy() - ref["energy"]) / len(atoms) < 1e-9
        if ref["stress"] is not None:
            full = atoms.get_stress(voigt=False)
            assert np.allclose(full, np.reshape(ref["stress"], (3, 3)), atol=1e-9)


def test_skin_neighbour_list_equals_fresh_build_along_md():
    model = make_model()
    atoms = triclinic_cell()
    atoms.rattle(0.05, seed=2)
    calc = MACECalculator(model=model, skin=0.6)
    atoms.calc = calc
    fresh = MACECalculator(model=model, skin=0.0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=2.0 * units.fs)
    for _ in range(15):
        dyn.run(1)
        probe = atoms.copy()
        probe.calc = fresh
        assert atoms.get_potential_energy() == pytest.approx(
            probe.get_potential_energy(), abs=1e-10
        )
        assert np.allclose(atoms.get_forces(), probe.get_forces(), atol=1e-10)
    assert calc.neighbours.builds < fresh.neighbours.builds  # the skin saved rebuilds


def test_relaxation_of_rattled_copper_lowers_energy_and_forces():
    model = make_model(atomic_numbers=[29], atomic_energies=[-2.0])
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.08, seed=1)
    atoms.calc = MACECalculator(model=model)
    e0, f0 = atoms.get_potential_energy(), np.abs(atoms.get_forces()).max()
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-3, steps=200)
    assert atoms.get_potential_energy() < e0
    assert np.abs(atoms.get_forces()).max() < min(f0, 2e-3)


def test_committee_mean_and_variance():
    models = [make_model(seed=1), make_model(seed=2)]
    atoms = molecule()
    atoms.calc = MACECalculator(model=models)
    energy = atoms.get_potential_energy()
    each = []
    for m in models:
        probe = atoms.copy()
        probe.calc = MACECalculator(model=m)
        each.append((probe.get_potential_energy(), probe.get_forces()))
    energies = np.array([e for e, _ in each])
    assert energy == pytest.approx(energies.mean())
    assert atoms.calc.results["energy_var"] == pytest.approx(energies.var())
    forces = np.stack([f for _, f in each])
    assert np.allclose(atoms.calc.results["forces_var"], forces.var(axis=0))
    assert atoms.calc.results["energy_var"] > 0
