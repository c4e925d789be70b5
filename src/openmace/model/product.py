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

import itertools

import torch
from torch import nn

from openmace.kernels import cpu_kernels_for
from openmace.o3 import ElementGroups, EquivariantLinear, Irrep, coupling_basis, irreps_dim
from openmace.o3.coupling import monomial_recursion, tree_frame
from openmace.o3.linear import sort_by_element

ROUNDING_ZERO = 1e-12


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


class SymmetricContraction(nn.Module):
    """B-features and messages of eq. 10-11 for every output irrep.

    Evaluated as Algorithm 1, skipping the zeros of the coupling basis: (1) the weights of each
    element are contracted with the basis once (cached while they do not change), giving
    ``P[z, c, M, s]`` over the monomials ``s`` of degree < ν with a nonzero coefficient
    (:class:`MonomialPlan`) and ``P_top[z, c, M·dim, m]`` for the top degree by (last factor,
    prefix monomial ``m``); (2) the monomials of every atom, ``F[c, s, atom]``, built degree by
    degree with one multiplication each; (3) per element, ``P[z] @ F`` plus the top degree as
    ``Σ_j (P_top[z] @ prev)[M, j] A_j``, so that the top degree's monomials are never built.
    Atoms are the innermost dimension: every gather copies contiguous rows and the channel is
    the batch of every matrix product, with no permuted copies of the weights per call.
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
        plan = MonomialPlan(dim, used)
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
        # the same recursion for the compiled kernel (contraction.cpp): the monomials of all
        # degrees in one scratch array, degree d at rows offsets[d]:offsets[d + 1]
        offsets = [0, *itertools.accumulate(len(o) for o in plan.order)]
        dst, src, last = [], [], []
        for d, (prefix, factor) in enumerate(plan.steps, start=1):
            dst += [offsets[d] + t for t in range(len(prefix))]
            src += [offsets[d - 1] + i for i in prefix]
            last += factor
        pos = [offsets[d] + t for d in range(correlation) for t in range(plan.num_used[d])]
        self.kernel_rows = offsets[-1]
        for name, values in (("dst", dst), ("src", src), ("last", last), ("pos", pos)):
            self.register_buffer(
                f"kernel_{name}", torch.tensor(values, dtype=torch.long), persistent=False
            )
        dtype = torch.get_default_dtype()
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
                torch.randn(num_elements, frame.shape[1], channels) / frame.shape[1]
            )
        tree_basis = torch.cat(blocks) if blocks else torch.zeros(0, rows[-1], cols[-1])
        self.register_buffer("tree_basis", tree_basis.to(dtype), persistent=False)
        # the top degree ν goes through the degree ν-1 monomials first, as in Algorithm 1:
        # R[M, j] = Σ_m P[M, m, j] prev_m, then Σ_j R[M, j] A_j. Measured against putting its
        # used monomials into F (forces, 1000 atoms, 128 channels, 0e+1o out: 0.87 vs 2.0 s):
        # it moves less memory, and the largest monomial tensor is never built
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
        self._cached: tuple | None = None  # (version key, contracted weights)
        # P of a frozen copy (see freeze()): the form TorchScript export runs with
        self.register_buffer("frozen_p", torch.zeros(0, dtype=dtype), persistent=False)
        self.register_buffer("frozen_top", torch.zeros(0, dtype=dtype), persistent=False)

    def _contract_weights(self) -> torch.Tensor:
        """``P[z, c, M, s] = Σ_t B[t, M, s] W[z, t, c]`` (eq. 10's weights on the basis)."""
        z, c = self.num_elements, self.channels
        weights = torch.cat(list(self.weights.values()), dim=1)  # [z, trees, c]
        basis = self.tree_basis
        p = weights.transpose(1, 2).reshape(z * c, -1) @ basis.reshape(basis.shape[0], -1)
        return p.view(z, c, self.dim_out, self.width)

    def _split_top(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``P`` → (weights of the features ``[z, c, M, low_width]``, top-degree weights by
        (last factor, prefix) ``[z, c, M·dim, num_prev]``, empty unless ``top_by_prefix``)."""
        if not self.top_by_prefix:
            return p, p.new_zeros(0)
        z, c = p.shape[0], p.shape[1]
        top = p.new_zeros((z, c, self.dim_out, self.dim * self.num_prev))
        top.index_copy_(-1, self.top_slots, p[..., self.low_width :])
        return p[..., : self.low_width], top.view(z, c, self.dim_out * self.dim, self.num_prev)

    @torch.jit.unused
    def _frozen_forms(self) -> dict[str, object] | None:
        """Cache of forms of the contracted weights, valid while the weights are frozen and
        unchanged (tracked by the tensors' version counters); None while they need gradients."""
        weights = list(self.weights.values())
        if any(w.requires_grad for w in weights):
            return None
        key = (weights[0].dtype, weights[0].device, *(w._version for w in weights))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, {})
        return self._cached[1]

    @torch.jit.unused
    def _coupled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_contract_weights` split by :meth:`_split_top` (cached when frozen)."""
        forms = self._frozen_forms()
        if forms is None:
            return self._split_top(self._contract_weights())
        if "split" not in forms:
            forms["split"] = self._split_top(self._contract_weights())
        return forms["split"]  # type: ignore[return-value]

    @torch.jit.unused
    def _kernel_weights(self) -> torch.Tensor:
        """The contracted weights for the compiled kernel: ``[z, monomials, M, c]`` (cached)."""
        forms = self._frozen_forms()
        assert forms is not None, "the compiled contraction is for frozen weights"
        if "kernel" not in forms:
            p = self._contract_weights().detach()
            forms["kernel"] = p.permute(0, 3, 2, 1).contiguous()
        return forms["kernel"]  # type: ignore[return-value]

    @torch.jit.unused
    def _kernels(self, a: torch.Tensor):
        """The compiled kernels when they apply: CPU, float32/64, frozen weights."""
        if any(w.requires_grad for w in self.weights.values()):
            return None
        return cpu_kernels_for(a)

    @torch.jit.unused
    def kernel_plan(self) -> tuple[torch.Tensor, ...]:
        """(first, dst, src, last, pos): the monomial recursion in the kernel's terms."""
        return self.first, self.kernel_dst, self.kernel_src, self.kernel_last, self.kernel_pos

    def freeze(self) -> None:
        """Store the contracted weights as a buffer: the form TorchScript export runs with."""
        with torch.no_grad():
            low, top = self._split_top(self._contract_weights())
        self.frozen_p, self.frozen_top = low.detach().clone(), top.detach().clone()

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

    def forward(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        """``a [n, c, dim_in]`` → ``[n, c, dim_out]``."""
        if torch.jit.is_scripting():
            return self.forward_operations(a, groups)
        return self._forward_eager(a, groups)

    @torch.jit.unused
    def _forward_eager(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        kernels = self._kernels(a)
        if kernels is not None:
            return CompiledContraction.apply(a, groups, self, kernels)
        return self.forward_operations(a, groups)

    def forward_operations(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        """:meth:`forward` in PyTorch operations (differentiable to any order)."""
        if torch.jit.is_scripting():
            p, p_top = self.frozen_p, self.frozen_top
        else:
            p, p_top = self._coupled()
        x = sort_by_element(a, groups).permute(1, 2, 0).contiguous()  # [c, dim, atoms]
        features, prev = self.monomial_features(x)
        # per-element weights by unbind: in training its backward stacks the elements' gradients
        # once, where indexing would fill a zero tensor of all elements per element
        p_parts, top_parts = p.unbind(0), p_top.unbind(0)
        # atoms of each element by split, not by slicing: the backward of a split is one
        # concatenation, that of each slice a zero tensor of all atoms (a quarter of the
        # contraction's backward on a 27-atom molecule with four elements)
        sizes = [stop - start for _, start, stop in groups.chunks]
        x_parts, feature_parts = x.split(sizes, dim=2), features.split(sizes, dim=2)
        prev_parts = prev.split(sizes, dim=2) if self.top_by_prefix else x_parts
        outs: list[torch.Tensor] = []
        for k, chunk in enumerate(groups.chunks):
            element, atoms = chunk[0], sizes[k]
            out = torch.bmm(p_parts[element], feature_parts[k])
            if self.top_by_prefix:
                r = torch.bmm(top_parts[element], prev_parts[k])  # [c, M·dim, atoms]
                r = r.view(r.shape[0], self.dim_out, self.dim, atoms)
                out = out + (r * x_parts[k].unsqueeze(1)).sum(2)
            outs.append(out)
        out = (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)).permute(2, 0, 1)
        if len(groups.chunks) == 1:
            return out.contiguous()
        return out.index_select(0, groups.inverse)


class CompiledContraction(torch.autograd.Function):
    """:meth:`SymmetricContraction.forward` for frozen weights on CPUs through the compiled
    kernel (``kernels/contraction.cpp``): the monomials of every degree are built per atom and
    channel block in cache and never stored; the backward pass rebuilds them. A second
    derivative (``create_graph=True``) goes through :meth:`forward_operations` and autograd."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, a: torch.Tensor, groups: ElementGroups, module: SymmetricContraction, kernels
    ):
        x = a.transpose(1, 2).contiguous()  # [n, dim, c]: channels in SIMD lanes
        species = groups.species.contiguous()
        out = kernels.contraction_forward(
            x, species, module._kernel_weights(), *module.kernel_plan(), module.kernel_rows
        )
        ctx.save_for_backward(a, x, species)
        ctx.groups, ctx.module, ctx.kernels = groups, module, kernels
        return out.transpose(1, 2)  # [n, c, M]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        a, x, species = ctx.saved_tensors
        module = ctx.module
        if torch.is_grad_enabled():  # a second derivative is wanted: autograd all the way
            out = module.forward_operations(a, ctx.groups)
            (grad,) = torch.autograd.grad(out, a, grad_out, create_graph=True)
            return grad, None, None, None
        grad_x = ctx.kernels.contraction_backward(
            x,
            species,
            module._kernel_weights(),
            *module.kernel_plan(),
            module.kernel_rows,
            grad_out.transpose(1, 2).contiguous(),
        )
        return grad_x.transpose(1, 2), None, None, None


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
