"""The symmetric coupling basis of eq. 14: orthogonality, equivariance, symmetry."""

from __future__ import annotations

import pytest
import torch
from e3nn.o3 import Irrep as E3nnIrrep

from openmace.o3 import Irrep, coupling_basis, monomials, spherical_harmonics_irreps
from openmace.o3.coupling import monomial_multiplicity, symmetric_tensor
from tests.o3.test_clebsch_gordan import random_rotation

CASES = [(nu, l) for nu in (1, 2, 3, 4) for l in (0, 1, 2, 3)]


def block_wigner(irreps, r: torch.Tensor) -> torch.Tensor:
    return torch.block_diag(*[E3nnIrrep(ir.l, ir.p).D_from_matrix(r) for ir in irreps])


def evaluate(coefficients: torch.Tensor, x: torch.Tensor, degree: int) -> torch.Tensor:
    """Σ_n U[k, M, n] Π x_i over the monomials n → [k, M]."""
    dim = x.shape[-1]
    values = torch.stack([x[list(m)].prod() for m in monomials(dim, degree)])
    return torch.einsum("kmn,n->km", coefficients, values)


@pytest.mark.parametrize("nu,l", CASES)
def test_basis_is_orthogonal_with_component_norm(nu, l):
    irreps = spherical_harmonics_irreps(3 if nu < 4 else 2)
    basis = coupling_basis(irreps, Irrep(l, (-1) ** l), nu)
    assert basis.size > 0
    dim = sum(ir.dim for ir in irreps)
    metric = torch.tensor([1.0 / monomial_multiplicity(m) for m in monomials(dim, nu)])
    gram = torch.einsum("kmn,jmn,n->kj", basis.coefficients, basis.coefficients, metric)
    assert torch.allclose(gram, (2 * l + 1) * torch.eye(basis.size), atol=1e-10)


@pytest.mark.parametrize("nu,l", CASES)
@pytest.mark.parametrize("parity", [1, -1])
def test_basis_is_equivariant_under_o3(nu, l, parity):
    irreps = spherical_harmonics_irreps(3 if nu < 4 else 2)
    basis = coupling_basis(irreps, Irrep(l, parity), nu)
    if basis.size == 0:
        return  # e.g. 1o ⊗ 1o → 1e is antisymmetric: no symmetric coupling exists
    for seed in range(2):
        r = random_rotation(seed) * (-1) ** seed  # a rotation, then a roto-reflection
        x = torch.randn(sum(ir.dim for ir in irreps), generator=torch.Generator().manual_seed(seed))
        d_in = block_wigner(irreps, r)
        d_out = E3nnIrrep(l, parity).D_from_matrix(r)
        assert torch.allclose(
            evaluate(basis.coefficients, d_in @ x, nu),
            evaluate(basis.coefficients, x, nu) @ d_out.T,
            atol=1e-10,
        )


@pytest.mark.parametrize("nu", [2, 3])
def test_dense_tensor_is_symmetric_and_orthonormal(nu):
    irreps = spherical_harmonics_irreps(1)
    basis = coupling_basis(irreps, Irrep(1, -1), nu)
    dense = symmetric_tensor(basis)  # [k, M, i1, ..., iν]
    swapped = dense.transpose(2, 3)
    assert torch.allclose(dense, swapped)
    flat = dense.reshape(basis.size, -1)
    assert torch.allclose(flat @ flat.T, 3 * torch.eye(basis.size), atol=1e-12)


def test_mixed_parity_inputs_give_pseudo_scalars():
    """With both parities of l = 1 among the inputs, 1o · 1e → 0o exists at degree 2."""
    irreps = (Irrep(0, 1), Irrep(1, -1), Irrep(1, 1))
    assert coupling_basis(irreps, Irrep(0, -1), 2).size == 1
    assert coupling_basis(spherical_harmonics_irreps(2), Irrep(0, -1), 2).size == 0
