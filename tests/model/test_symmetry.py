"""Exact O(3), translation and permutation symmetry of energy, forces, stress and features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn.o3 import Irrep as E3nnIrrep

from openmace.data.graph import batch_atoms
from tests.helpers import make_model, molecule, random_rotation, triclinic_cell

MODELS = {
    "L1": dict(hidden_irreps="8x0e+8x1o"),
    "L3_corr4": dict(hidden_irreps="4x0e+4x1o+4x2e+4x3o", correlation=4, max_ell=3),
    "odd_parity": dict(hidden_irreps="4x0e+4x0o+4x1o+4x1e", max_ell=2),
    "nonresidual_zbl": dict(residual_first=False, pair_repulsion=True, num_interactions=3),
    "max_ell6": dict(hidden_irreps="4x0e+4x1o+4x2e", max_ell=6, correlation=2),
}


def transformed(atoms, matrix: np.ndarray, translation: np.ndarray | None = None):
    out = atoms.copy()
    out.set_positions(
        atoms.get_positions() @ matrix.T + (0 if translation is None else translation)
    )
    if atoms.pbc.any():
        out.set_cell(atoms.get_cell()[:] @ matrix.T)
    return out


def evaluate(model, atoms):
    return model(batch_atoms([atoms], model.config.r_max), compute_stress=bool(atoms.pbc.all()))


def assert_close(a, b, rel=1e-10):
    scale = max(1.0, float(b.detach().abs().max()))
    assert (a - b).abs().max().item() <= rel * scale


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("structure", ["molecule", "triclinic"])
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_and_reflection(kind, structure, reflect):
    model = make_model(**MODELS[kind])
    atoms = molecule() if structure == "molecule" else triclinic_cell()
    r = random_rotation(7).numpy() * (-1 if reflect else 1)
    ref, out = evaluate(model, atoms), evaluate(model, transformed(atoms, r))
    rt = torch.tensor(r)
    assert_close(out["energy"], ref["energy"])
    assert_close(out["forces"], ref["forces"] @ rt.T)
    if "stress" in ref:
        assert_close(out["stress"][0], rt @ ref["stress"][0] @ rt.T)


@pytest.mark.parametrize("structure", ["molecule", "triclinic"])
def test_translation_and_permutation(structure):
    model = make_model(**MODELS["odd_parity"])
    atoms = molecule() if structure == "molecule" else triclinic_cell()
    ref = evaluate(model, atoms)
    moved = transformed(atoms, np.eye(3), translation=np.array([1.7, -3.1, 0.4]))
    out = evaluate(model, moved)
    assert_close(out["energy"], ref["energy"])
    assert_close(out["forces"], ref["forces"])
    perm = np.random.default_rng(3).permutation(len(atoms))
    out = evaluate(model, atoms[perm])
    assert_close(out["energy"], ref["energy"])
    assert_close(out["forces"], ref["forces"][perm])
    assert_close(out["node_energy"], ref["node_energy"][perm])


@pytest.mark.parametrize("kind", ["L1", "L3_corr4", "odd_parity"])
def test_internal_features_are_equivariant(kind):
    """A-features and node features of every layer transform with their Wigner-D matrices."""
    model = make_model(**MODELS[kind])
    captured: list[tuple[tuple, torch.Tensor]] = []

    def hook_interaction(module, _, output):
        captured.append((module.irreps_target, output[0]))

    def hook_product(module, _, output):
        captured.append((module.irreps_out, output))

    handles = [m.register_forward_hook(hook_interaction) for m in model.interactions]
    handles += [m.register_forward_hook(hook_product) for m in model.products]
    atoms = molecule()
    r = random_rotation(11) * -1  # include a reflection
    evaluate(model, atoms)
    before = list(captured)
    captured.clear()
    evaluate(model, transformed(atoms, r.numpy()))
    for handle in handles:
        handle.remove()
    assert len(before) == 2 * model.config.num_interactions
    if kind == "L3_corr4":  # features up to L = 3 are checked
        assert max(ir.l for irreps, _ in before for ir in irreps) == 3
    for (irreps, x), (_, y) in zip(before, captured):
        d = torch.block_diag(*[E3nnIrrep(ir.l, ir.p).D_from_matrix(r) for ir in irreps])
        assert_close(y, x @ d.T)
