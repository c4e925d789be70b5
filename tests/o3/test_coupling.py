"""The symmetric coupling basis of eq. 14: orthogonality, equivariance, symmetry."""

from __future__ import annotations

import pytest
import torch
from e3nn.o3 import Irrep as E3nnIrrep

from openmace.o3 import Irrep, coupling_basis, monomials, spherical_harmonics_irreps
from openmace.o3.coupling import monomial_multiplicity, symmetric_tensor
from tests.helpers import random_rotation

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


def test_canonical_basis_does_not_depend_on_the_spanning_set():
    """Model weights are coordinates in this basis: any spanning set of the same space (other
    SVD rotations or signs, other LAPACK) must give the same basis."""
    from openmace.o3.coupling import canonical_basis

    basis = coupling_basis(spherical_harmonics_irreps(3), Irrep(1, -1), 3)
    dim = 16
    metric = torch.tensor([1.0 / monomial_multiplicity(m) for m in monomials(dim, 3)])
    mix = torch.randn(basis.size + 3, basis.size, generator=torch.Generator().manual_seed(5))
    spanning = torch.einsum("jk,kmn->jmn", mix, basis.coefficients)  # redundant, rotated
    again = canonical_basis(spanning, metric) * 3**0.5
    assert again.shape == basis.coefficients.shape
    assert torch.allclose(again, basis.coefficients, atol=1e-12)


def test_bundled_demo_model_reproduces_its_mace_torch_reference(parity_dirs):
    """A stored model file keeps its meaning: the bundled demo model (converted from fixture
    p2 and saved) still gives mace-torch's energies."""
    from importlib.resources import files

    from ase.io import read

    from openmace import load_model
    from openmace.data.graph import batch_atoms
    from tests.helpers import load_reference

    model = load_model(str(files("openmace") / "resources" / "demo-hcno.safetensors"))
    folder = parity_dirs["p2_molecular_L1"]
    for atoms, ref in zip(read(folder / "structures.xyz", ":"), load_reference(folder)):
        energy = model(batch_atoms([atoms], model.config.r_max))["energy"].item()
        assert abs(energy - ref["energy"]) / len(atoms) < 1e-9


@pytest.mark.parametrize("nu", [1, 2, 3])
@pytest.mark.parametrize("l", [0, 1, 2])
def test_coupling_trees_form_a_parseval_frame_of_the_basis(nu, l):
    """Trees are orthonormal in the full tensor product, so their symmetric parts must be a
    Parseval frame of the symmetric basis (frame @ frame.T = I), spanning all of it."""
    from openmace.o3.coupling import tree_frame

    frame = tree_frame(tuple(spherical_harmonics_irreps(3)), Irrep(l, (-1) ** l), nu)
    assert frame.shape[1] >= frame.shape[0] > 0
    torch.testing.assert_close(frame @ frame.T, torch.eye(frame.shape[0], dtype=frame.dtype))


def test_tree_count_equals_mace_torch_weights_per_tree(parity_dirs):
    """mace-torch stores one weight per coupling tree (as the paper's eq. 10): the tree count
    must equal the U-matrix widths of every real mace-torch state dict."""
    from safetensors.torch import load_file

    from openmace.io.mace_torch import load_mace_torch
    from openmace.o3.coupling import tree_frame

    checked = 0
    for folder in parity_dirs.values():
        state = load_file(folder / "weights.safetensors")
        model = load_mace_torch(folder)
        for layer, product in enumerate(model.products):
            contraction = product.contraction
            for j, ir in enumerate(contraction.irreps_out):
                for nu in range(1, contraction.correlation + 1):
                    prefix = f"products.{layer}.symmetric_contractions.contractions.{j}"
                    u = state[f"{prefix}.U_matrix_{nu}"]
                    count = tree_frame(contraction.irreps_in, ir, nu).shape[1]
                    if coupling_basis(contraction.irreps_in, ir, nu).size == 0:
                        # no symmetric polynomial: we keep no weight, mace-torch keeps trees
                        # that vanish on A⊗A (e.g. 1o⊗1o→1e) or a zero U
                        assert count == 0
                        continue
                    if nu <= 3:  # for ν = 4 mace-torch drops trees through 1e, 2o, ...
                        assert count == u.shape[-1], (folder.name, prefix, nu)
                    assert count >= coupling_basis(contraction.irreps_in, ir, nu).size
                    checked += 1
    assert checked > 20
