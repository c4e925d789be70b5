from __future__ import annotations

from pathlib import Path

import pytest
import torch
from e3nn.o3 import Irrep as E3nnIrrep
from safetensors.torch import load_file

from openmace.o3 import clebsch_gordan, e3nn_044_sign
from openmace.o3.clebsch_gordan import E3NN_044_FLIPPED
from tests.helpers import random_rotation

DATA = Path(__file__).parents[1] / "fixtures"
TRIPLES = [
    (l1, l2, l3)
    for l1 in range(5)
    for l2 in range(5)
    for l3 in range(abs(l1 - l2), min(l1 + l2, 4) + 1)
]


@pytest.mark.parametrize("l1,l2,l3", TRIPLES)
def test_clebsch_gordan_is_equivariant_and_normalised(l1, l2, l3):
    cg = clebsch_gordan(l1, l2, l3)
    assert torch.allclose(cg.norm(), torch.tensor((2 * l3 + 1) ** 0.5))
    r = random_rotation(l1 * 25 + l2 * 5 + l3)
    d1, d2, d3 = (E3nnIrrep(l, 1).D_from_matrix(r) for l in (l1, l2, l3))
    x, y = torch.randn(2 * l1 + 1), torch.randn(2 * l2 + 1)
    out = torch.einsum("ijk,i,j->k", cg, x, y)
    rotated = torch.einsum("ijk,i,j->k", cg, d1 @ x, d2 @ y)
    assert torch.allclose(rotated, d3 @ out, atol=1e-12)


def test_e3nn_044_sign_table_matches_e3nn_044_coefficients():
    """The stored e3nn 0.4.4 tensors (tests/fixtures/make_e3nn044_table.py) differ from ours by
    exactly the sign in the table, for every triple up to l = 4."""
    reference = load_file(str(DATA / "e3nn044_wigner_3j.safetensors"))
    assert len(reference) == len(TRIPLES)
    flipped = 0
    for l1, l2, l3 in TRIPLES:
        old = reference[f"{l1}_{l2}_{l3}"]
        ours = clebsch_gordan(l1, l2, l3) / (2 * l3 + 1) ** 0.5
        overlap = float((old * ours).sum())
        assert abs(abs(overlap) - 1) < 1e-10  # same coupling up to sign
        assert overlap == pytest.approx(e3nn_044_sign(l1, l2, l3), abs=1e-10), (l1, l2, l3)
        flipped += overlap < 0
    assert flipped > 0  # the test exercises real sign changes


def test_sign_table_is_closed_under_permutations():
    from itertools import permutations

    for triple in E3NN_044_FLIPPED:
        for perm in permutations(triple):
            assert e3nn_044_sign(*perm) == -1


def test_coupling_tensors_in_mace_torch_state_dicts_follow_the_sign_table(parity_dirs):
    """mace-torch's ``U_matrix_2`` buffers are e3nn 0.4.4 couplings (l1, l2) → L: every column
    equals a positive multiple of e3nn_044_sign · our coefficients."""
    from openmace.o3 import spherical_harmonics_irreps
    from openmace.o3.irreps import irreps_slices

    state = load_file(str(parity_dirs["p3_periodic_L2_first_nonresidual"] / "weights.safetensors"))
    irreps = spherical_harmonics_irreps(3)
    slices = irreps_slices(irreps)
    checked = 0
    for j, big_l in enumerate((0, 1, 2)):
        u = state[f"products.0.symmetric_contractions.contractions.{j}.U_matrix_2"]
        if big_l == 0:
            u = u.unsqueeze(0)
        for k in range(u.shape[-1]):
            column = u[..., k]
            for (a, ia), (b, ib) in [
                ((a, ia), (b, ib)) for a, ia in enumerate(irreps) for b, ib in enumerate(irreps)
            ]:
                block = column[:, slices[a], slices[b]]
                if block.abs().max() < 1e-12:
                    continue
                ours = clebsch_gordan(ia.l, ib.l, big_l).permute(2, 0, 1)
                ratio = float((block * ours).sum() / (ours * ours).sum())
                assert ratio * e3nn_044_sign(ia.l, ib.l, big_l) > 0
                assert torch.allclose(block, ratio * ours, atol=1e-12)
                checked += 1
    assert checked >= 10
