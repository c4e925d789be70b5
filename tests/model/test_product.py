"""The symmetric contraction (eq. 10-11) equals the polynomial it stands for, term by term.

The contraction skips the zero coefficients of the coupling basis and evaluates the top degree
through its prefixes (product.py); the reference here builds every monomial of every degree and
applies the full basis, per atom and channel, with nothing skipped.
"""

from __future__ import annotations

import pytest
import torch

from openmace.accel import inference_contraction
from openmace.model.product import SymmetricContraction
from openmace.o3 import Irrep, coupling_basis, monomials, spherical_harmonics_irreps
from openmace.o3.coupling import tree_frame
from openmace.o3.linear import element_groups

CASES = {
    "corr1": (1, 3, ("0e", "1o")),
    "corr2": (2, 3, ("0e", "1o", "2e")),
    "corr3": (3, 3, ("0e", "1o")),
    "corr3_scalar": (3, 3, ("0e",)),
    "corr3_odd_out": (3, 2, ("1e", "0o", "2e")),
    "corr4": (4, 2, ("0e", "1o")),
}


def _irrep(text: str) -> Irrep:
    return Irrep(int(text[0]), 1 if text[1] == "e" else -1)


def reference(sc: SymmetricContraction, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
    """``m[b, c, M] = Σ_ν Σ_k w[z_b, k, c] Σ_n U[k, M, n] Π_{i ∈ n} A[b, c, i]`` directly."""
    outs = []
    for j, ir in enumerate(sc.irreps_out):
        out = a.new_zeros(a.shape[0], a.shape[1], ir.dim)
        for nu in range(1, sc.correlation + 1):
            key = f"{j}_{nu}"
            if key not in sc.weights:
                continue
            u = coupling_basis(sc.irreps_in, ir, nu).coefficients.to(a.dtype)  # [k, M, n]
            frame = tree_frame(sc.irreps_in, ir, nu).to(a.dtype)
            w = torch.einsum("kt,ztc->zkc", frame, sc.weights[key])[species]  # [b, k, c]
            index = torch.tensor(monomials(sc.dim, nu))  # [n, ν]
            values = a[:, :, index].prod(-1)  # [b, c, n]
            out = out + torch.einsum("kMn,bcn,bkc->bcM", u, values, w)
        outs.append(out)
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize("name", CASES)
def test_contraction_equals_the_full_polynomial(name, cpu_implementation):
    correlation, lmax, out = CASES[name]
    irreps_in = tuple(spherical_harmonics_irreps(lmax))
    irreps_out = tuple(_irrep(x) for x in out)
    torch.manual_seed(0)
    sc = SymmetricContraction(irreps_in, irreps_out, 3, correlation, 3).double()
    species = torch.tensor([2, 0, 2, 1, 0, 0, 2])  # unsorted, all three elements
    a = torch.randn(len(species), 3, sc.dim, dtype=torch.float64)
    expected = reference(sc, a, species)
    assert expected.abs().max() > 1e-3  # the case is not trivially zero
    groups = element_groups(species, 3)
    torch.testing.assert_close(sc(a, groups), expected, rtol=1e-11, atol=1e-12)
    # frozen (cached weights, the inference path: compiled or PyTorch) gives the same
    frozen = inference_contraction(sc.requires_grad_(False), cpu_implementation)
    torch.testing.assert_close(frozen(a, groups), expected, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", ["corr2", "corr3", "corr3_odd_out", "corr4"])
def test_frozen_contraction_has_exact_first_and_second_derivatives(name, cpu_implementation):
    """The inference path's backward (the compiled kernel's, or autograd's) and its fallback
    for second derivatives against finite differences."""
    correlation, lmax, out = CASES[name]
    irreps_in = tuple(spherical_harmonics_irreps(lmax))
    torch.manual_seed(1)
    sc = SymmetricContraction(irreps_in, tuple(_irrep(x) for x in out), 9, correlation, 2)
    sc = inference_contraction(sc.double().requires_grad_(False), cpu_implementation)
    species = torch.tensor([1, 0, 1])
    groups = element_groups(species, 2)
    a = torch.randn(3, 9, sc.dim, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: sc(a, groups), (a,))
    assert torch.autograd.gradgradcheck(lambda a: sc(a, groups), (a,))


def test_contraction_skips_most_of_the_coupling_basis():
    """The reason for the plan: with l ≤ 3 inputs a scalar uses few degree-3 monomials."""
    irreps_in = tuple(spherical_harmonics_irreps(3))
    sc = SymmetricContraction(irreps_in, (Irrep(0, 1),), 2, 3, 1)
    assert sc.monomials.num_used[-1] < len(monomials(16, 3)) / 5
    assert sc.monomials.num_prev < len(monomials(16, 2))
