"""Generalised Clebsch-Gordan coefficients for symmetric products (paper eq. 10 and 14).

The B-features of MACE are equivariant polynomials of degree ν in the A-features of one channel.
Eq. 14 builds them by coupling ν irreps along a tree of Clebsch-Gordan products. Because the
ν factors are copies of the same vector ``A``, only the part of each coupled tensor that is
symmetric under permutations of its ν slots contributes, and many trees give the same (or
linearly dependent) polynomials.

We therefore represent a coupling directly as a polynomial: coefficients over the *monomials*
``A_i1 · A_i2 ··· A_iν`` with ``i1 <= i2 <= ... <= iν`` (a symmetric tensor restricted to its
independent entries). Coupling trees are generated level by level; after every level the
polynomials of each irrep are reduced to a linearly independent set, which is exact because the
next level is linear in them. The result is a basis of *all* degree-ν equivariant polynomials of
the requested irrep: orthogonal under the Frobenius product of the symmetric tensors, each of
norm ``sqrt(2L + 1)``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import cache
from itertools import combinations_with_replacement

import numpy as np
import torch

from openmace.o3.clebsch_gordan import clebsch_gordan
from openmace.o3.irreps import Irrep, irreps_slices


@cache
def monomials(dim: int, degree: int) -> tuple[tuple[int, ...], ...]:
    """All sorted index tuples of length ``degree`` over ``range(dim)``, in lexicographic order."""
    return tuple(combinations_with_replacement(range(dim), degree))


def monomial_multiplicity(mono: tuple[int, ...]) -> int:
    """Number of distinct orderings of a monomial's indices (``ν! / Π count!``)."""
    out = math.factorial(len(mono))
    for count in Counter(mono).values():
        out //= math.factorial(count)
    return out


@cache
def monomial_recursion(dim: int, degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each degree-``degree`` monomial: (index of the monomial without its last factor
    among degree-``degree - 1`` monomials, index of the last factor)."""
    lower = {m: i for i, m in enumerate(monomials(dim, degree - 1))}
    prefix, last = [], []
    for mono in monomials(dim, degree):
        prefix.append(lower[mono[:-1]] if degree > 1 else 0)
        last.append(mono[-1])
    return torch.tensor(prefix), torch.tensor(last)


@dataclass(frozen=True)
class CouplingBasis:
    """Basis of degree-``degree`` equivariant polynomials mapping ``irreps_in → irrep_out``.

    ``coefficients[k, M, n]`` is the coefficient of monomial ``n`` (see :func:`monomials`) in
    component ``M`` of basis polynomial ``k``.
    """

    irreps_in: tuple[Irrep, ...]
    irrep_out: Irrep
    degree: int
    coefficients: torch.Tensor

    @property
    def size(self) -> int:
        return self.coefficients.shape[0]


def _reduce(polys: torch.Tensor, weights: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """Orthonormal basis (under ``<P, Q> = Σ P Q w``) of the span of ``polys [k, M, n]``."""
    if polys.shape[0] == 0:
        return polys
    k, m, n = polys.shape
    scaled = (polys * weights.sqrt()).reshape(k, m * n)
    _, s, vh = torch.linalg.svd(scaled, full_matrices=False)
    rank = int((s > tol * max(1.0, float(s[0]))).sum())
    return vh[:rank].reshape(rank, m, n) / weights.sqrt()


def canonical_basis(polys: torch.Tensor, weights: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """The unique orthonormal basis (under ``<P, Q> = Σ P Q w``) of the span of ``polys``.

    An SVD basis of a subspace is arbitrary up to rotations (degenerate singular values are the
    rule here, by symmetry) and signs, and may differ between LAPACK builds. Model weights are
    coordinates in this basis, so it must not: we take the reduced row echelon form of the span
    (a canonical form of a row space), then Gram-Schmidt in pivot order with positive pivots.
    """
    if polys.shape[0] == 0:
        return polys
    k, m, n = polys.shape
    root = weights.sqrt().numpy()
    a = (polys.numpy() * root).reshape(k, m * n).copy()
    a /= np.abs(a).max()
    rank = 0
    for col in range(a.shape[1]):
        if rank == k:
            break
        pivot = rank + int(np.argmax(np.abs(a[rank:, col])))
        if abs(a[pivot, col]) < tol:
            continue
        a[[rank, pivot]] = a[[pivot, rank]]
        a[rank] /= a[rank, col]
        others = np.arange(k) != rank
        a[others] -= np.outer(a[others, col], a[rank])
        rank += 1
    q, r = np.linalg.qr(a[:rank].T)
    q = q * np.sign(np.diag(r))
    return torch.from_numpy(np.ascontiguousarray(q.T)).reshape(rank, m, n) / weights.sqrt()


@cache
def _coupling_levels(
    irreps_in: tuple[Irrep, ...], degree: int, lmax_keep: int, reduce: bool = True
) -> dict[Irrep, torch.Tensor]:
    """Equivariant polynomials of exactly ``degree``, grouped by irrep: an orthonormal basis
    (``reduce``) or one polynomial per coupling tree (the symmetrised tree tensors)."""
    dim = sum(ir.dim for ir in irreps_in)
    slices = irreps_slices(irreps_in)
    if degree == 1:
        level: dict[Irrep, list[torch.Tensor]] = {}
        for ir, sl in zip(irreps_in, slices):
            poly = torch.zeros(1, ir.dim, dim, dtype=torch.float64)
            poly[0, :, sl] = torch.eye(ir.dim, dtype=torch.float64)
            level.setdefault(ir, []).append(poly)
        ones = torch.ones(dim, dtype=torch.float64)
        if not reduce:
            return {ir: torch.cat(p) for ir, p in level.items()}
        return {ir: _reduce(torch.cat(p), ones) for ir, p in level.items()}

    previous = _coupling_levels(
        irreps_in, degree - 1, lmax_keep + max(ir.l for ir in irreps_in), reduce
    )
    prev_monos = monomials(dim, degree - 1)
    index = {m: i for i, m in enumerate(monomials(dim, degree))}
    n_new = len(index)
    # merged[a, j] = index of monomial (prev_monos[a] ∪ {j})
    merged = torch.tensor(
        [[index[tuple(sorted(mono + (j,)))] for j in range(dim)] for mono in prev_monos]
    )
    weights = torch.tensor(
        [1.0 / monomial_multiplicity(m) for m in monomials(dim, degree)], dtype=torch.float64
    )
    new: dict[Irrep, list[torch.Tensor]] = {}
    for ir_a, polys in previous.items():
        if polys.shape[0] == 0:
            continue
        for ir_b, sl in zip(irreps_in, slices):
            for ir_out in ir_a * ir_b:
                if ir_out.l > lmax_keep:
                    continue
                cg = clebsch_gordan(ir_a.l, ir_b.l, ir_out.l)
                # R[k, M, a, m2] = Σ_m1 C[m1, m2, M] P[k, m1, a]; monomial (a ∪ sl[m2])
                terms = torch.einsum("xyz,kxa->kzay", cg, polys)
                target = merged[:, sl].reshape(-1)
                out = torch.zeros(polys.shape[0], ir_out.dim, n_new, dtype=torch.float64)
                out.index_add_(2, target, terms.reshape(polys.shape[0], ir_out.dim, -1))
                new.setdefault(ir_out, []).append(out)
    if not reduce:
        return {ir: torch.cat(p) for ir, p in new.items()}
    return {ir: _reduce(torch.cat(p), weights) for ir, p in new.items()}


def coupling_basis(
    irreps_in: list[Irrep] | tuple[Irrep, ...], irrep_out: Irrep, degree: int
) -> CouplingBasis:
    """Generalised Clebsch-Gordan basis (eq. 14) for symmetric degree-``degree`` products.

    Coefficients are float64; each basis polynomial, seen as a symmetric tensor
    ``U[M, i1, ..., iν]``, has Frobenius norm ``sqrt(2L + 1)`` and distinct ones are orthogonal.
    """
    irreps_in = tuple(irreps_in)
    if degree < 1:
        raise ValueError("correlation order must be >= 1")
    levels = _coupling_levels(irreps_in, degree, irrep_out.l)
    dim = sum(ir.dim for ir in irreps_in)
    n_mono = len(monomials(dim, degree))
    coeffs = levels.get(irrep_out, torch.zeros(0, irrep_out.dim, n_mono, dtype=torch.float64))
    metric = torch.tensor(
        [1.0 / monomial_multiplicity(m) for m in monomials(dim, degree)], dtype=torch.float64
    )
    coeffs = canonical_basis(coeffs, metric)
    return CouplingBasis(irreps_in, irrep_out, degree, coeffs * irrep_out.dim**0.5)


@cache
def tree_frame(irreps_in: tuple[Irrep, ...], irrep_out: Irrep, degree: int) -> torch.Tensor:
    """Coordinates ``[K_basis, K_trees]`` of the coupling trees' polynomials in
    :func:`coupling_basis`: the paper's parameterisation (eq. 10, one weight per coupling path
    η) is ``w_basis = frame @ w_trees``.

    Coupling trees with component-normalised Clebsch-Gordan coefficients are orthonormal tensors
    of the full ν-fold product (norm ``sqrt(2L + 1)``); their symmetric parts therefore form a
    Parseval frame of the symmetric polynomials, ``frame @ frame.T = I`` (tested).
    """
    irreps_in = tuple(irreps_in)
    basis = coupling_basis(irreps_in, irrep_out, degree).coefficients
    levels = _coupling_levels(irreps_in, degree, irrep_out.l, reduce=False)
    trees = levels.get(irrep_out)
    if trees is None or basis.shape[0] == 0:
        return torch.zeros(basis.shape[0], 0, dtype=torch.float64)
    dim = sum(ir.dim for ir in irreps_in)
    metric = torch.tensor(
        [1.0 / monomial_multiplicity(m) for m in monomials(dim, degree)], dtype=torch.float64
    )
    gram = torch.einsum("kmn,jmn,n->kj", basis, basis, metric)
    overlap = torch.einsum("kmn,tmn,n->kt", basis, trees, metric)
    return torch.linalg.solve(gram, overlap)


def symmetric_tensor(basis: CouplingBasis) -> torch.Tensor:
    """Dense symmetric tensor ``U[k, M, i1, ..., iν]`` of a basis (for tests; small cases only)."""
    dim = sum(ir.dim for ir in basis.irreps_in)
    shape = (basis.size, basis.irrep_out.dim) + (dim,) * basis.degree
    dense = torch.zeros(shape, dtype=basis.coefficients.dtype)
    from itertools import permutations

    for n, mono in enumerate(monomials(dim, basis.degree)):
        perms = set(permutations(mono))
        for perm in perms:
            dense[(slice(None), slice(None)) + perm] = basis.coefficients[:, :, n] / len(perms)
    return dense
