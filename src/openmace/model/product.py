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
from openmace.o3.coupling import monomial_recursion, monomials


class SymmetricContraction(nn.Module):
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
        dim = irreps_dim(irreps_in)
        self.monomial_counts = [len(monomials(dim, nu)) for nu in range(1, correlation + 1)]
        for nu in range(2, correlation + 1):
            prefix, last = monomial_recursion(dim, nu)
            self.register_buffer(f"prefix_{nu}", prefix, persistent=False)
            self.register_buffer(f"last_{nu}", last, persistent=False)
        dtype = torch.get_default_dtype()
        self.weights = nn.ParameterDict()
        for j, ir in enumerate(irreps_out):
            for nu in range(1, correlation + 1):
                basis = coupling_basis(irreps_in, ir, nu)
                if basis.size == 0:
                    continue
                key = f"{j}_{nu}"
                self.register_buffer(f"U_{key}", basis.coefficients.to(dtype), persistent=False)
                self.weights[key] = nn.Parameter(
                    torch.randn(num_elements, basis.size, channels) / basis.size
                )

    def coupled_weights(self) -> torch.Tensor:
        """``P[z, c, M_out, n]``: weights contracted with the coupling basis, all ν stacked."""
        ref = next(iter(self.weights.values()))
        rows = []
        for j, ir in enumerate(self.irreps_out):
            cols = []
            for nu, count in enumerate(self.monomial_counts, start=1):
                key = f"{j}_{nu}"
                if key in self.weights:
                    u = getattr(self, f"U_{key}")
                    cols.append(torch.einsum("kmn,ekc->ecmn", u, self.weights[key]))
                else:
                    cols.append(ref.new_zeros(self.num_elements, self.channels, ir.dim, count))
            rows.append(torch.cat(cols, dim=-1))
        return torch.cat(rows, dim=2)

    def monomials(self, a: torch.Tensor) -> torch.Tensor:
        """All monomials of degree 1..ν of ``a [n, c, dim]`` → ``[n, c, Σ monomials]``."""
        out = [a]
        for nu in range(2, self.correlation + 1):
            prev = out[-1]
            out.append(
                prev[..., getattr(self, f"prefix_{nu}")] * a[..., getattr(self, f"last_{nu}")]
            )
        return torch.cat(out, dim=-1)

    def forward(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        """``a [n, c, dim_in]`` → ``[n, c, dim_out]``."""
        mono = self.monomials(a)
        p = self.coupled_weights()

        def per_element(element: int, m: torch.Tensor) -> torch.Tensor:
            # [c, n_e, mono] @ [c, mono, M] -> [c, n_e, M]
            return torch.bmm(m.transpose(0, 1), p[element].transpose(1, 2)).transpose(0, 1)

        return groups.apply(mono, per_element)


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
