"""Product block: B-features and message (paper eq. 10-11, Algorithm 1).

For each channel ``c`` and receiving element ``z``, the message is a polynomial of degree
``1..ν`` in that channel's A-features:

    m_{c, LM} = Σ_ν Σ_k W^{(ν)}_{z k c} Σ_n U^{(ν)}_{k, M, n} Π_{i ∈ n} A_{c, i}

with ``U`` the symmetric coupling basis of eq. 14 (:mod:`openmace.o3.coupling`) over monomials
``n``. As in Algorithm 1 the weights are contracted with ``U`` first (once per element, not per
atom); then each atom needs one small matrix product with its monomials. Monomials of degree
``ν`` are built from degree ``ν - 1`` by one multiplication each.

Only the elements present in a call are contracted: a model of 89 elements evaluated on a
copper cell contracts (and holds) the copper weights alone, not the ~0.7 GB (float64, 128
channels, correlation 3) of all elements. :func:`openmace.accel.for_inference` swaps
:class:`SymmetricContraction` for an implementation that caches the contracted weights of each
element the first time the element is seen (and, on CPUs, a compiled kernel).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from openmace.model.memory import TRAINING_MEMORY_FACTOR
from openmace.o3 import ElementGroups, EquivariantLinear, Irrep, coupling_basis, irreps_dim
from openmace.o3.coupling import monomial_recursion, tree_frame
from openmace.o3.linear import sort_by_element

ROUNDING_ZERO = 1e-12


def contract_tree_weights(
    weights: list[torch.Tensor],
    basis: torch.Tensor,
    elements: torch.Tensor | None,
    dim_out: int,
    width: int,
) -> torch.Tensor:
    """``P[k, c, M, s] = Σ_t B[t, M, s] W[z_k, t, c]`` for the element indices ``elements``
    (``[k]``; all elements when None): eq. 10's weights on the monomials ``s``.

    ``weights``: the tree weights ``[num_elements, trees_i, c]`` of every (output irrep,
    degree) block, in the order of ``basis`` ``[trees, M, width]`` (trees of all blocks
    stacked). Differentiable in ``weights``; TorchScript-compatible (the export calls it)."""
    if elements is not None:
        weights = [w.index_select(0, elements) for w in weights]
    w = torch.cat(weights, dim=1)  # [k, trees, c]
    k, c = w.shape[0], w.shape[2]
    p = w.transpose(1, 2).reshape(k * c, -1) @ basis.reshape(basis.shape[0], -1)
    return p.view(k, c, dim_out, width)


def present_elements(groups: ElementGroups) -> list[int]:
    """The element indices of ``groups.chunks`` in order (ascending: the elements present)."""
    return [chunk[0] for chunk in groups.chunks]


class MonomialPlan:
    """Which canonical monomials of each degree the contraction evaluates, and how.

    Almost every coefficient of the coupling basis is zero (Appendix A.3.3): with the 16
    A-features of ``l ≤ 3`` a scalar output uses 77 of the 816 degree-3 monomials. For each
    degree ``d`` the plan keeps the monomials with a nonzero coefficient for some output
    (``used``), followed by those needed only as prefixes of kept degree ``d + 1`` monomials;
    degree ``d + 1`` monomials are one multiplication each, ``lower[prefix] · A[last]``.
    """

    def __init__(self, dim: int, used: list[list[int]]) -> None:
        top = len(used)
        self.num_used = [len(u) for u in used]
        # canonical monomial indices of each degree in evaluation order (used ones first)
        self.order: list[list[int]] = [[] for _ in range(top)]
        self.order[top - 1] = list(used[top - 1])
        for d in range(top - 1, 0, -1):
            prefix, _ = monomial_recursion(dim, d + 1)
            extra = sorted({int(prefix[n]) for n in self.order[d]} - set(used[d - 1]))
            self.order[d - 1] = list(used[d - 1]) + extra
        # degree d + 1 from degree d: (position of the prefix in order[d - 1], last factor)
        self.steps: list[tuple[list[int], list[int]]] = []
        for d in range(1, top):
            prefix, last = monomial_recursion(dim, d + 1)
            position = {n: i for i, n in enumerate(self.order[d - 1])}
            self.steps.append(
                (
                    [position[int(prefix[n])] for n in self.order[d]],
                    [int(last[n]) for n in self.order[d]],
                )
            )

    @property
    def width(self) -> int:
        """Number of monomials the contraction weights (all degrees)."""
        return sum(self.num_used)


class MonomialContraction(nn.Module):
    """Evaluation of eq. 10-11 with given contracted weights (Algorithm 1, skipping the zeros
    of the coupling basis): (1) the monomials of every atom, ``F[c, s, atom]``, built degree by
    degree with one multiplication each (:class:`MonomialPlan`); (2) per element,
    ``P[z] @ F`` plus the top degree as ``Σ_j (P_top[z] @ prev)[M, j] A_j``, so that the top
    degree's monomials are never built. Atoms are the innermost dimension: every gather copies
    contiguous rows and the channel is the batch of every matrix product.

    Holds only the plan (no parameters); shared by the reference contraction and its swaps.
    """

    def __init__(self, plan: MonomialPlan, dim: int, dim_out: int, correlation: int) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.identity_first = plan.order[0] == list(range(dim))
        self.num_used: list[int] = plan.num_used
        self.width = plan.width
        # the steps' (prefix, last) index lists concatenated; step d is [bounds[d]:bounds[d+1]]
        self.step_bounds: list[int] = [0, *itertools.accumulate(len(p) for p, _ in plan.steps)]
        self.register_buffer("first", torch.tensor(plan.order[0]), persistent=False)
        self.register_buffer(
            "step_prefix", torch.tensor([i for p, _ in plan.steps for i in p]), persistent=False
        )
        self.register_buffer(
            "step_last", torch.tensor([i for _, q in plan.steps for i in q]), persistent=False
        )
        # the top degree ν goes through the degree ν-1 monomials first, as in Algorithm 1:
        # R[M, j] = Σ_m P[M, m, j] prev_m, then Σ_j R[M, j] A_j: it moves less memory than
        # building the top degree's monomials (benchmarks/README.md)
        num_top, num_prev = plan.num_used[-1], len(plan.order[-2]) if correlation > 1 else 0
        self.top_by_prefix = correlation > 1
        self.low_width = self.width - num_top if self.top_by_prefix else self.width
        self.num_prev = num_prev
        if self.top_by_prefix:
            prefix, last = plan.steps[-1]
            slots = [q * num_prev + p for p, q in zip(prefix, last)]
        else:
            slots = []
        self.register_buffer("top_slots", torch.tensor(slots, dtype=torch.long), persistent=False)

    def split_top(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``P [z, c, M, width]`` → (weights of the features ``[z, c, M, low_width]``,
        top-degree weights by (last factor, prefix) ``[z, c, M·dim, num_prev]``, empty unless
        ``top_by_prefix``)."""
        if not self.top_by_prefix:
            return p, p.new_zeros(0)
        z, c = p.shape[0], p.shape[1]
        top = p.new_zeros((z, c, self.dim_out, self.dim * self.num_prev))
        top.index_copy_(-1, self.top_slots, p[..., self.low_width :])
        return p[..., : self.low_width], top.view(z, c, self.dim_out * self.dim, self.num_prev)

    def monomial_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [c, dim, atoms]`` → (the monomials ``P`` weights, ``[c, low_width, atoms]``;
        all degree ν-1 monomials if the top degree goes by prefix, else empty)."""
        lower = x if self.identity_first else x.index_select(1, self.first)
        features = [lower[:, : self.num_used[0]]]
        steps = len(self.step_bounds) - 1 - int(self.top_by_prefix)
        for d in range(steps):
            b0, b1 = self.step_bounds[d], self.step_bounds[d + 1]
            lower = lower.index_select(1, self.step_prefix[b0:b1]) * x.index_select(
                1, self.step_last[b0:b1]
            )
            features.append(lower[:, : self.num_used[d + 1]])
        low = features[0] if len(features) == 1 else torch.cat(features, dim=1)
        return low, (lower if self.top_by_prefix else x.new_zeros(0))

    def forward(
        self,
        a: torch.Tensor,
        groups: ElementGroups,
        p_parts: list[torch.Tensor],
        top_parts: list[torch.Tensor],
    ) -> torch.Tensor:
        """``a [n, c, dim_in]`` → ``[n, c, dim_out]``, with the weights of the element of each
        of ``groups.chunks`` in the same order: ``p_parts[k] [c, M, low_width]`` and, if
        ``top_by_prefix``, ``top_parts[k] [c, M·dim, num_prev]`` (one element's
        :meth:`split_top`)."""
        x = sort_by_element(a, groups).permute(1, 2, 0).contiguous()  # [c, dim, atoms]
        features, prev = self.monomial_features(x)
        # atoms of each element by split, not by slicing: the backward of a split is one
        # concatenation, that of each slice a zero tensor of all atoms
        sizes = [stop - start for _, start, stop in groups.chunks]
        x_parts, feature_parts = x.split(sizes, dim=2), features.split(sizes, dim=2)
        prev_parts = prev.split(sizes, dim=2) if self.top_by_prefix else x_parts
        outs: list[torch.Tensor] = []
        for k in range(len(groups.chunks)):
            atoms = sizes[k]
            out = torch.bmm(p_parts[k], feature_parts[k])
            if self.top_by_prefix:
                r = torch.bmm(top_parts[k], prev_parts[k])  # [c, M·dim, atoms]
                r = r.view(r.shape[0], self.dim_out, self.dim, atoms)
                out = out + (r * x_parts[k].unsqueeze(1)).sum(2)
            outs.append(out)
        out = (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)).permute(2, 0, 1)
        if groups.in_order:
            return out.contiguous()
        return out.index_select(0, groups.inverse)

    def working_memory(self, num_atoms: int, channels: int, itemsize: int) -> int:
        """Bytes per evaluation before any safety factor: the monomials of every degree, their
        gathered factors (kept by autograd) and the concatenated features ``P`` is applied to."""
        monomials = self.step_bounds[-1] + self.dim
        return num_atoms * channels * (3 * monomials + self.width + self.dim_out) * itemsize


class SymmetricContraction(nn.Module):
    """B-features and messages of eq. 10-11 for every output irrep.

    The weights of each element are contracted with the coupling basis,
    ``P[z, c, M, s] = Σ_t B[t, M, s] W[z, t, c]`` over the monomials ``s`` with a nonzero
    coefficient (:class:`MonomialPlan`), and evaluated by :class:`MonomialContraction`. At each
    call (training: the weights change at every step) only the elements present are contracted.

    Args:
        irreps_in: irreps of the A-features.
        irreps_out: irreps of the messages.
        channels: channels (the contraction is channel-wise).
        correlation: the highest degree ν of the polynomial (body order ν + 1).
        num_elements: elements of the model (weights are per element).
        dtype: dtype of weights and basis.
    """

    def __init__(
        self,
        irreps_in: tuple[Irrep, ...],
        irreps_out: tuple[Irrep, ...],
        channels: int,
        correlation: int,
        num_elements: int,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.correlation = correlation
        self.channels, self.num_elements = channels, num_elements
        self.dim = dim = irreps_dim(irreps_in)
        self.dim_out = irreps_dim(irreps_out)
        bases = {
            (j, nu): coupling_basis(irreps_in, ir, nu).coefficients
            for j, ir in enumerate(irreps_out)
            for nu in range(1, correlation + 1)
        }
        # true zeros of the basis that its construction leaves as rounding noise (at most
        # 1.6e-14, while the smallest true coefficient is 4e-3, over outputs l <= 3 of either
        # parity up to correlation 4): without them 77 instead of 93 degree-3 monomials feed a
        # scalar from l <= 3 features, 278 instead of 312 a vector
        bases = {key: u.where(u.abs() > ROUNDING_ZERO, 0.0) for key, u in bases.items()}
        used = [
            sorted(
                {
                    int(n)
                    for (_, degree), u in bases.items()
                    if degree == nu and u.shape[0] > 0
                    for n in torch.nonzero(u.abs().amax(dim=(0, 1)) > 0).flatten()
                }
            )
            for nu in range(1, correlation + 1)
        ]
        self.plan = plan = MonomialPlan(dim, used)
        self.width = plan.width
        self.monomials = MonomialContraction(plan, dim, self.dim_out, correlation)
        # tree weights → P: P[z, c, M, s] = Σ_t B[t, M, s] W[z, t, c] with the trees t of every
        # (output irrep, degree) stacked in the order of self.weights
        self.weights = nn.ParameterDict()
        blocks = []
        rows = [0, *itertools.accumulate(ir.dim for ir in irreps_out)]
        cols = [0, *itertools.accumulate(plan.num_used)]
        for (j, nu), u in bases.items():
            if u.shape[0] == 0:
                continue
            # the paper's parameterisation: one weight per coupling tree η (eq. 10), mapped to
            # the basis by a fixed Parseval frame; std 1/(number of trees) is the initial
            # distribution of mace-torch, which has the same parameterisation
            frame = tree_frame(tuple(irreps_in), irreps_out[j], nu)
            columns = torch.tensor(plan.order[nu - 1][: plan.num_used[nu - 1]])
            block = torch.zeros(frame.shape[1], rows[-1], cols[-1], dtype=torch.float64)
            block[:, rows[j] : rows[j + 1], cols[nu - 1] : cols[nu]] = torch.einsum(
                "kt,kmn->tmn", frame, u[:, :, columns]
            )
            blocks.append(block)
            self.weights[f"{j}_{nu}"] = nn.Parameter(
                torch.randn(num_elements, frame.shape[1], channels, dtype=dtype) / frame.shape[1]
            )
        tree_basis = torch.cat(blocks) if blocks else torch.zeros(0, rows[-1], cols[-1])
        self.register_buffer("tree_basis", tree_basis.to(dtype), persistent=False)

    def contract_weights(self, elements: list[int] | None = None) -> torch.Tensor:
        """``P[k, c, M, s] = Σ_t B[t, M, s] W[z_k, t, c]`` (eq. 10's weights on the basis) for
        the element indices ``elements`` in that order (all elements when None)."""
        index = None
        if elements is not None and elements != list(range(self.num_elements)):
            index = torch.tensor(elements, dtype=torch.long, device=self.tree_basis.device)
        weights = list(self.weights.values())
        return contract_tree_weights(weights, self.tree_basis, index, self.dim_out, self.width)

    def forward(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        """``a [n, c, dim_in]`` → ``[n, c, dim_out]``; contracts the weights of the elements
        present only."""
        p, p_top = self.monomials.split_top(self.contract_weights(present_elements(groups)))
        # per-element weights by unbind: in training its backward stacks the elements' gradients
        # once, where indexing would fill a zero tensor of all elements per element
        tops = p_top.unbind(0) if self.monomials.top_by_prefix else []
        return self.monomials(a, groups, list(p.unbind(0)), list(tops))

    def working_memory(self, num_atoms: int, itemsize: int) -> int:
        """Bytes of the per-atom monomials autograd keeps (with the training safety factor)."""
        numbers = self.monomials.working_memory(num_atoms, self.channels, itemsize)
        return int(numbers * TRAINING_MEMORY_FACTOR)


class ProductBlock(nn.Module):
    """Symmetric contraction, then the linear update of eq. 12 (+ residual if given)."""

    def __init__(
        self,
        irreps_in: tuple[Irrep, ...],
        irreps_out: tuple[Irrep, ...],
        channels: int,
        correlation: int,
        num_elements: int,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.irreps_out = irreps_out
        self.dims_out = [ir.dim for ir in irreps_out]
        self.contraction = SymmetricContraction(
            irreps_in, irreps_out, channels, correlation, num_elements, dtype
        )
        self.linear = EquivariantLinear(
            [(channels, ir) for ir in irreps_out], irreps_out, channels, dtype
        )

    def forward(
        self, a: torch.Tensor, groups: ElementGroups, residual: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.linear(self.contraction(a, groups).split(self.dims_out, dim=-1))
        return h if residual is None else h + residual

    def working_memory(self, num_atoms: int, itemsize: int) -> int:
        return int(self.contraction.working_memory(num_atoms, itemsize))
