"""Forces and stress are exact derivatives; the cutoff is smooth; batching changes nothing."""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch

from openmace.accel import for_inference
from openmace.data.graph import batch_atoms
from openmace.memory import check_memory
from tests.helpers import make_model, molecule, triclinic_cell


def energy(model, atoms) -> float:
    return model(batch_atoms([atoms], model.config.r_max), compute_forces=False)["energy"].item()


def small_cell():
    """Two atoms in a cell smaller than the cutoff: many images of each atom are neighbours."""
    return ase.Atoms(
        "CuO",
        positions=[[0.1, 0.2, 0.0], [1.2, 1.0, 1.1]],
        cell=[[2.5, 0.0, 0.0], [0.4, 2.6, 0.0], [0.2, -0.3, 2.4]],
        pbc=True,
    )


def slab():
    atoms = triclinic_cell(5)
    atoms.pbc = [True, True, False]
    return atoms


STRUCTURES = {
    "molecule": molecule,
    "triclinic": triclinic_cell,
    "small_cell": small_cell,
    "slab": slab,
}


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_forces_are_minus_finite_difference_gradient(name):
    model = make_model(pair_repulsion=True)
    atoms = STRUCTURES[name]()
    forces = model(batch_atoms([atoms], model.config.r_max))["forces"].numpy()
    h = 1e-4
    rng = np.random.default_rng(0)
    for i in rng.choice(len(atoms), size=min(4, len(atoms)), replace=False):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            numeric = -(energy(model, plus) - energy(model, minus)) / (2 * h)
            assert forces[i, k] == pytest.approx(numeric, abs=1e-6), (i, k)


@pytest.mark.parametrize("name", ["triclinic", "small_cell"])
def test_stress_is_finite_difference_in_strain(name):
    model = make_model()
    atoms = STRUCTURES[name]()
    stress = model(batch_atoms([atoms], model.config.r_max), compute_stress=True)["stress"][0]
    volume = atoms.get_volume()
    h = 1e-5
    for i in range(3):
        for j in range(i, 3):
            values = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[i, j] += sign * h / 2
                eps[j, i] += sign * h / 2
                deformed = atoms.copy()
                deformed.set_cell(atoms.get_cell()[:] @ (np.eye(3) + eps), scale_atoms=True)
                values.append(energy(model, deformed))
            numeric = (values[0] - values[1]) / (2 * h) / volume
            assert stress[i, j].item() == pytest.approx(numeric, abs=1e-7), (i, j)
            assert stress[j, i].item() == pytest.approx(numeric, abs=1e-7), (j, i)


def dimer(distance: float) -> ase.Atoms:
    return ase.Atoms("CO", positions=[[0, 0, 0], [distance, 0.0, 0.0]])


def test_energy_and_force_vanish_smoothly_at_cutoff():
    """Beyond r_max the pair does not interact. Approaching it, the interaction energy goes to
    zero like (r_max - r)^4 and the force like (r_max - r)^3: the p = 5 envelope vanishes to
    third order and every Bessel function sin(nπr/r_max)/r to first order at r_max."""
    model = make_model()
    r_max = model.config.r_max
    far = energy(model, dimer(r_max + 1.0))
    assert energy(model, dimer(r_max + 1e-6)) == far
    out = model(batch_atoms([dimer(r_max + 1e-6)], r_max + 1.0))
    assert out["forces"].abs().max().item() == 0.0
    deltas = [2e-2, 1e-2]
    de = [energy(model, dimer(r_max - d)) - far for d in deltas]
    forces = [model(batch_atoms([dimer(r_max - d)], r_max))["forces"][1, 0].item() for d in deltas]
    assert all(abs(x) > 0 for x in de)
    assert 13.0 < de[0] / de[1] < 19.0  # quartic: ratio 2^4
    assert 6.5 < forces[0] / forces[1] < 9.5  # cubic: ratio 2^3


def test_batch_equals_separate_structures():
    model = make_model(pair_repulsion=True)
    structures = [molecule(), triclinic_cell(), small_cell(), ase.Atoms("H"), slab()]
    batched = model(batch_atoms(structures, model.config.r_max), compute_stress=True)
    start = 0
    for k, atoms in enumerate(structures):
        alone = model(batch_atoms([atoms], model.config.r_max), compute_stress=True)
        n = len(atoms)
        assert torch.allclose(batched["energy"][k], alone["energy"][0], rtol=0, atol=1e-11)
        assert torch.allclose(batched["forces"][start : start + n], alone["forces"], atol=1e-11)
        assert torch.allclose(batched["stress"][k], alone["stress"][0], atol=1e-12)
        start += n


def test_isolated_atom_has_no_force_and_its_own_energy():
    model = make_model()
    out = model(batch_atoms([ase.Atoms("O", positions=[[1.0, 2.0, 3.0]])], model.config.r_max))
    assert out["forces"].abs().max().item() == 0.0
    assert torch.isfinite(out["energy"]).all()


def test_float32_matches_float64():
    model64 = make_model()
    model32 = make_model().to(torch.float32)
    graph = batch_atoms([molecule(), triclinic_cell()], model64.config.r_max)
    e64, e32 = model64(graph)["energy"], model32(graph)["energy"]
    assert e32.dtype == torch.float32
    assert torch.allclose(e32.double(), e64, rtol=1e-5)


def test_float32_energy_error_is_not_noise_from_large_reference_energies():
    """With E0 of ~1e3 eV per atom, summing E0 and the learned energies together rounds every
    configuration differently in float32 (std 0.046 meV/atom here; 0.086 on rMD17 aspirin);
    summed separately, E0 only shifts all configurations alike (0.014 here)."""
    e0 = [-13.6, -1025.3, -2035.6, -5000.0]
    model64 = make_model(atomic_energies=e0)
    model32 = make_model(atomic_energies=e0).to(torch.float32)
    graph = batch_atoms([molecule(seed=s) for s in range(40)], model64.config.r_max)
    e64 = model64(graph, compute_forces=False)["energy"].detach()
    e32 = model32(graph, compute_forces=False)["energy"].detach().double()
    per_atom = (e32 - e64) / len(molecule())
    assert float(per_atom.std()) < 0.025e-3  # eV/atom


def test_float64_model_does_not_depend_on_the_global_default_dtype():
    model = make_model(pair_repulsion=True)  # ZBL multiplies atomic numbers by constants
    graph = batch_atoms([molecule(), triclinic_cell()], model.config.r_max)
    reference = model(graph)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        out = model(graph)
    finally:
        torch.set_default_dtype(previous)
    assert torch.equal(out["energy"], reference["energy"])
    assert torch.equal(out["forces"], reference["forces"])


def test_edge_chunks_give_the_same_results_and_training_gradients():
    model = make_model()
    graph = batch_atoms([molecule(), triclinic_cell(), triclinic_cell(seed=1)], model.config.r_max)

    def run():
        model.zero_grad()
        out = model(graph, compute_stress=True, create_graph=True)
        (out["energy"].square().sum() + out["forces"].square().sum()).backward()
        return out, [p.grad.clone() for p in model.parameters()]

    whole, grads_whole = run()
    for interaction in model.interactions:
        interaction.messages.edge_chunk = 7  # many chunks, the last one partial
    assert graph.edge_index.shape[1] > 20 * 7
    chunked, grads_chunked = run()
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(chunked[key], whole[key], rtol=0, atol=1e-12)
    for a, b in zip(grads_chunked, grads_whole):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_unknown_element_is_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match=r"atomic number\(s\) \[26\] not in this model"):
        model(batch_atoms([ase.Atoms("Fe")], model.config.r_max))


def test_inference_copy_is_a_snapshot_and_a_new_copy_follows_weight_changes():
    """The inference copy caches contracted coupling weights: it is a frozen snapshot. The
    original keeps its gradients; a copy made after a weight change follows the change."""
    model = make_model()
    graph = batch_atoms([molecule()], model.config.r_max)
    snapshot = for_inference(model)
    first = snapshot(graph)["energy"]
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        for w in model.products[0].contraction.weights.values():
            w.mul_(1.5)
    changed = for_inference(model)(graph)["energy"]
    reference = make_model()
    reference.load_state_dict(model.state_dict())
    assert not torch.allclose(first, changed)
    assert torch.equal(snapshot(graph)["energy"], first)
    assert torch.allclose(changed, reference(graph)["energy"], atol=1e-12)


def test_too_large_evaluation_fails_early_with_advice(monkeypatch):
    model = make_model()
    graph = batch_atoms([molecule()], model.config.r_max)
    monkeypatch.setenv("OPENMACE_MEMORY_LIMIT", "1000")  # bytes
    with pytest.raises(MemoryError, match="smaller batch"):
        check_memory(model, len(graph.positions), graph.edge_index.shape[1])
    with pytest.raises(MemoryError, match="smaller batch"):  # the keyword alone
        monkeypatch.delenv("OPENMACE_MEMORY_LIMIT")
        check_memory(model, len(graph.positions), graph.edge_index.shape[1], limit_bytes=1000)
