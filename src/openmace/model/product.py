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

from openmace.o3 import ElementGroups, EquivariantLinear, Irrep, coupling_basis, irreps_dim
from openmace.o3.coupling import monomial_recursion, monomials, tree_frame
from openmace.o3.linear import merge_by_element, sort_by_element, split_by_element, split_sorted


class MonomialStep(nn.Module):
    """Degree-ν monomials from degree ν-1: one multiplication each (``prefix · last``)."""

    def __init__(self, dim: int, degree: int) -> None:
        super().__init__()
        prefix, last = monomial_recursion(dim, degree)
        self.register_buffer("prefix", prefix, persistent=False)
        self.register_buffer("last", last, persistent=False)

    def forward(self, lower: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return lower.index_select(-1, self.prefix) * a.index_select(-1, self.last)


class SymmetricContraction(nn.Module):
    """B-features and messages of eq. 10-11 for every output irrep.

    Degrees below ν use canonical monomials (one gather each, small). The top degree ν is
    contracted in two steps, as in Algorithm 1: ``R[j] = Σ_m P_ν[m, j] prev_m`` over the
    degree-(ν-1) monomials ``m``, then ``Σ_j R[j] A_j``, so the largest monomial tensor is never
    built and no scatter appears in the backward pass.
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
        self.n_prev = self.low_counts[-1] if self.low_counts else 0  # degree ν-1 monomials
        self.top_prefix = len(monomials(dim, correlation - 1)) if correlation > 1 else 1
        self.steps = nn.ModuleList([MonomialStep(dim, nu) for nu in range(2, correlation)])
        if correlation > 1:
            prefix, last = monomial_recursion(dim, correlation)
            top_slot = prefix * dim + last
        dtype = torch.get_default_dtype()
        self._cache: dict = {}
        # contracted weights of a frozen copy (see freeze()); empty while training
        self.register_buffer("frozen_top", torch.zeros(0, dtype=dtype), persistent=False)
        self.register_buffer("frozen_low", torch.zeros(0, dtype=dtype), persistent=False)
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
                # the paper's parameterisation: one weight per coupling tree η (eq. 10), mapped
                # to the basis by a fixed Parseval frame; std 1/(number of trees) is the
                # initial distribution of mace-torch, which has the same parameterisation
                frame = tree_frame(tuple(irreps_in), ir, nu)
                self.register_buffer(f"frame_{key}", frame.to(dtype), persistent=False)
                self.weights[key] = nn.Parameter(
                    torch.randn(num_elements, frame.shape[1], channels) / frame.shape[1]
                )

    @torch.jit.unused
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

    @torch.jit.unused
    def _contract_weights(self, degrees: range, width: int) -> torch.Tensor:
        ref = next(iter(self.weights.values()))
        rows = []
        for j, ir in enumerate(self.irreps_out):
            cols = []
            for nu in degrees:
                key = f"{j}_{nu}"
                count = self.low_counts[nu - 1] if nu < self.correlation else width
                if key in self.weights:
                    u, frame = getattr(self, f"U_{key}"), getattr(self, f"frame_{key}")
                    weights = torch.einsum("kt,etc->ekc", frame, self.weights[key])
                    cols.append(torch.einsum("kmn,ekc->ecmn", u, weights))
                else:
                    cols.append(ref.new_zeros(self.num_elements, self.channels, ir.dim, count))
            rows.append(
                torch.cat(cols, dim=-1)
                if cols
                else ref.new_zeros(self.num_elements, self.channels, ir.dim, 0)
            )
        return torch.cat(rows, dim=2)

    @torch.jit.unused
    def _contracted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(top-degree weights ``[z, c, M, prefix, dim]`` or ``[z, c, M, dim]`` for ν = 1,
        lower-degree weights ``[z, c, M, n_low]``) contracted with the coupling basis."""
        if self.correlation == 1:
            return self._coupled(range(1, 2), self.dim), self.frozen_low
        top = self._coupled(
            range(self.correlation, self.correlation + 1), self.top_prefix * self.dim
        )
        top = top.reshape(*top.shape[:3], self.top_prefix, self.dim)
        return top, self._coupled(range(1, self.correlation), 0)

    def freeze(self) -> None:
        """Store the contracted weights as buffers: the form TorchScript export runs with."""
        with torch.no_grad():
            top, low = self._contracted()
        self.frozen_top, self.frozen_low = top.detach().clone(), low.detach().clone()

    def _low_monomials(self, a: torch.Tensor) -> list[torch.Tensor]:
        out = [a]
        for step in self.steps:
            out.append(step(out[-1], a))
        return out

    def forward(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        """``a [n, c, dim_in]`` → ``[n, c, dim_out]``."""
        if torch.jit.is_scripting():
            p_top, p_low = self.frozen_top, self.frozen_low
        else:
            p_top, p_low = self._contracted()
        outs: list[torch.Tensor] = []
        if self.correlation == 1:
            for element, x in split_by_element(a, groups):
                outs.append(torch.einsum("bcn,cmn->bcm", x, p_top[element]))
            return merge_by_element(outs, groups)
        # atoms in element order before the monomials: only A (dim_in wide) is gathered, and
        # each element's monomials are views
        a = sort_by_element(a, groups)
        low = self._low_monomials(a)
        # top degree: P_top[z, c, M, m, j]; lower degrees: P_low[z, c, M, n] over the
        # monomials of degrees 1..ν-2 ("rest") followed by those of degree ν-1 ("prev")
        split = p_low.shape[-1] - self.n_prev
        p_prev, p_rest = p_low[..., split:], p_low[..., :split]
        a_parts, prev_parts = split_sorted(a, groups), split_sorted(low[-1], groups)
        rest_parts = a_parts
        if len(low) > 2:
            rest_parts = split_sorted(torch.cat(low[:-1], dim=-1), groups)
        for k, (element, _, _) in enumerate(groups.chunks):
            outs.append(
                self._one_element(
                    a_parts[k],
                    prev_parts[k],
                    rest_parts[k],
                    p_top[element],
                    p_prev[element],
                    p_rest[element],
                )
            )
        return merge_by_element(outs, groups)

    def _one_element(
        self,
        a: torch.Tensor,
        prev: torch.Tensor,
        rest: torch.Tensor,
        p_top: torch.Tensor,
        p_prev: torch.Tensor,
        p_rest: torch.Tensor,
    ) -> torch.Tensor:
        # top degree: contract the degree ν-1 monomials first, R[b,c,M,j] = Σ_m P[c,M,m,j]
        # prev[b,c,m], then with A: the intermediate (and what autograd keeps of it) has
        # dim_in entries per output component instead of one per degree ν-1 monomial
        r = torch.einsum("cMmj,bcm->bcMj", p_top, prev)
        out = torch.einsum("bcMj,bcj->bcM", r, a)
        out = out + torch.einsum("bcm,cMm->bcM", prev, p_prev)
        if p_rest.shape[-1] > 0:
            out = out + torch.einsum("bcn,cMn->bcM", rest, p_rest)
        return out


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
        self.dims_out = [ir.dim for ir in irreps_out]
        self.contraction = SymmetricContraction(
            irreps_in, irreps_out, channels, correlation, num_elements
        )
        self.linear = EquivariantLinear([(channels, ir) for ir in irreps_out], irreps_out, channels)

    def forward(
        self, a: torch.Tensor, groups: ElementGroups, residual: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.linear(self.contraction(a, groups).split(self.dims_out, dim=-1))
        return h if residual is None else h + residual
