"""Product block: B-features and message (paper eq. 10-11, Algorithm 1).

For each channel ``c`` and receiving element ``z``, the message is a polynomial of degree
``1..ν`` in that channel's A-features:

    m_{c, LM} = Σ_ν Σ_k W^{(ν)}_{z k c} Σ_n U^{(ν)}_{k, M, n} Π_{i ∈ n} A_{c, i}

with ``U`` the symmetric coupling basis of eq. 14 (:mod:`openmace.o3.coupling`) over monomials
``n``. As in Algorithm 1 the weights are contracted with ``U`` first (once per element, not per
atom); then each atom needs one small matrix product with its monomials. Monomials of degree
``ν`` are built from degree ``ν - 1`` by one multiplication each.
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.o3 import (
    ElementGroups,
    EquivariantLinear,
    Irrep,
    coupling_basis,
    irreps_dim,
    split_irreps,
)
from openmace.o3.coupling import coupling_path_count, monomial_recursion, monomials


class SymmetricContraction(nn.Module):
    """B-features and messages of eq. 10-11 for every output irrep.

    Degrees below ν use canonical monomials (one gather each, small). The top degree ν is
    contracted Horner-style, as in Algorithm 1: ``Q[m] = Σ_j P_ν[m, j] A_j`` over the
    degree-(ν-1) monomials ``m``, so the largest monomial tensor is never built and no scatter
    appears in the backward pass.
    """

    def __init__(
        self,
        irreps_in: tuple[Irrep, ...],
        irreps_out: tuple[Irrep, ...],
        channels: int,
        correlation: int,
        num_elements: int,
    ) -> None:
        super().__init__()
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.correlation = correlation
        self.channels, self.num_elements = channels, num_elements
        self.dim = dim = irreps_dim(irreps_in)
        self.dim_out = irreps_dim(irreps_out)
        # counts of canonical monomials of degree 1 .. ν-1 ("low"), and of the top degree's
        # dense (degree ν-1 monomial, last factor) layout
        self.low_counts = [len(monomials(dim, nu)) for nu in range(1, correlation)]
        self.top_prefix = len(monomials(dim, correlation - 1)) if correlation > 1 else 1
        for nu in range(2, correlation):
            prefix, last = monomial_recursion(dim, nu)
            self.register_buffer(f"prefix_{nu}", prefix, persistent=False)
            self.register_buffer(f"last_{nu}", last, persistent=False)
        if correlation > 1:
            prefix, last = monomial_recursion(dim, correlation)
            top_slot = prefix * dim + last
        dtype = torch.get_default_dtype()
        self._cache: dict = {}
        self.weights = nn.ParameterDict()
        for j, ir in enumerate(irreps_out):
            for nu in range(1, correlation + 1):
                basis = coupling_basis(irreps_in, ir, nu)
                if basis.size == 0:
                    continue
                key = f"{j}_{nu}"
                coefficients = basis.coefficients
                if nu == correlation and nu > 1:  # dense (prefix monomial, last factor) layout
                    dense = coefficients.new_zeros(basis.size, ir.dim, self.top_prefix * dim)
                    dense[:, :, top_slot] = coefficients
                    coefficients = dense
                self.register_buffer(f"U_{key}", coefficients.to(dtype), persistent=False)
                # std 1/(number of coupling trees): the same initial distribution of
                # polynomials as mace-torch's one-weight-per-tree parameterisation (whose
                # tree polynomials form a tight frame of our orthonormal basis)
                paths = coupling_path_count(tuple(irreps_in), ir, nu)
                self.weights[key] = nn.Parameter(
                    torch.randn(num_elements, basis.size, channels) / paths
                )

    def _coupled(self, degrees: range, width: int) -> torch.Tensor:
        """Weights contracted with the basis for the given degrees: ``[z, c, M_out, width]``.

        With frozen weights (inference) the result is cached until a weight changes (tracked
        by the tensors' version counters), which saves most of the cost of small structures.
        """
        weights = list(self.weights.values())
        if any(w.requires_grad for w in weights):
            return self._contract_weights(degrees, width)
        key = (degrees, width, weights[0].dtype, weights[0].device, *(w._version for w in weights))
        cached = self._cache.get((degrees, width))
        if cached is None or cached[0] != key:
            cached = (key, self._contract_weights(degrees, width))
            self._cache[(degrees, width)] = cached
        return cached[1]

    def _contract_weights(self, degrees: range, width: int) -> torch.Tensor:
        ref = next(iter(self.weights.values()))
        rows = []
        for j, ir in enumerate(self.irreps_out):
            cols = []
            for nu in degrees:
                key = f"{j}_{nu}"
                count = self.low_counts[nu - 1] if nu < self.correlation else width
                if key in self.weights:
                    u = getattr(self, f"U_{key}")
                    cols.append(torch.einsum("kmn,ekc->ecmn", u, self.weights[key]))
                else:
                    cols.append(ref.new_zeros(self.num_elements, self.channels, ir.dim, count))
            rows.append(
                torch.cat(cols, dim=-1)
                if cols
                else ref.new_zeros(self.num_elements, self.channels, ir.dim, 0)
            )
        return torch.cat(rows, dim=2)

    def _low_monomials(self, a: torch.Tensor) -> list[torch.Tensor]:
        out = [a]
        for nu in range(2, self.correlation):
            out.append(
                out[-1][..., getattr(self, f"prefix_{nu}")] * a[..., getattr(self, f"last_{nu}")]
            )
        return out

    def forward(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        """``a [n, c, dim_in]`` → ``[n, c, dim_out]``."""
        if self.correlation == 1:
            p1 = self._coupled(range(1, 2), self.dim)
            return groups.apply(a, lambda e, x: torch.einsum("bcn,cmn->bcm", x, p1[e]))
        low = self._low_monomials(a)
        # top degree: P_top[z, c, M, m, j]; lower degrees: P_low[z, c, M, n]
        p_top = self._coupled(
            range(self.correlation, self.correlation + 1), self.top_prefix * self.dim
        )
        p_top = p_top.reshape(*p_top.shape[:3], self.top_prefix, self.dim)
        p_low = self._coupled(range(1, self.correlation), 0)
        # degree ν-1 coefficients join the Horner step: Q = P_top · A + P_{ν-1}
        n_prev = self.low_counts[-1]
        p_prev = p_low[..., -n_prev:]
        p_rest = p_low[..., :-n_prev]
        rest = low[:-1]

        def per_element(element: int, x: torch.Tensor) -> torch.Tensor:
            a_e, prev_e = x[..., : self.dim], x[..., self.dim : self.dim + n_prev]
            q = torch.einsum("cMmj,bcj->bcMm", p_top[element], a_e) + p_prev[element]
            out = torch.einsum("bcMm,bcm->bcM", q, prev_e)
            if rest:
                r = x[..., self.dim + n_prev :]
                out = out + torch.einsum("bcn,cMn->bcM", r, p_rest[element])
            return out

        packed = torch.cat([a, low[-1], *rest], dim=-1) if rest else torch.cat([a, low[-1]], -1)
        return groups.apply(packed, per_element)


class ProductBlock(nn.Module):
    """Symmetric contraction, then the linear update of eq. 12 (+ residual if given)."""

    def __init__(
        self,
        irreps_in: tuple[Irrep, ...],
        irreps_out: tuple[Irrep, ...],
        channels: int,
        correlation: int,
        num_elements: int,
    ) -> None:
        super().__init__()
        self.irreps_out = irreps_out
        self.contraction = SymmetricContraction(
            irreps_in, irreps_out, channels, correlation, num_elements
        )
        self.linear = EquivariantLinear([(channels, ir) for ir in irreps_out], irreps_out, channels)

    def forward(
        self, a: torch.Tensor, groups: ElementGroups, residual: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.linear(split_irreps(self.contraction(a, groups), self.irreps_out))
        return h if residual is None else h + residual
