"""Swaps of the symmetric contraction (paper eq. 10-11) for frozen weights.

* :class:`FrozenContraction`: the reference evaluation (:class:`MonomialContraction`) with the
  weights contracted with the coupling basis once, at the swap, instead of at every call. In
  PyTorch operations: differentiable to any order, and what the TorchScript export runs.
* :class:`CompiledContraction`: the compiled CPU kernel (``kernels/contraction.cpp``): per atom
  and channel block the used monomials of every degree are built in cache, never stored, and
  contracted with the element's weights; the backward pass rebuilds them. A second derivative
  (``create_graph=True``) goes through :class:`MonomialContraction` and autograd.

Both register the reference's ``weights`` and ``monomials`` under the same names, so the model's
state dict does not change.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import torch
from torch import nn

from openmace.model.product import MonomialPlan, SymmetricContraction
from openmace.o3 import ElementGroups

# the compiled kernel keeps per atom the input and output features and their gradients
COMPILED_MEMORY_FACTOR = 1.5
INFERENCE_MEMORY_FACTOR = 1.5


class FrozenContraction(nn.Module):
    """:class:`SymmetricContraction` with its contracted weights computed once (buffers)."""

    def __init__(self, reference: SymmetricContraction) -> None:
        super().__init__()
        self.weights = reference.weights
        self.monomials = reference.monomials
        self.channels, self.dim, self.dim_out = reference.channels, reference.dim, reference.dim_out
        with torch.no_grad():
            low, top = reference.monomials.split_top(reference.contract_weights())
        self.register_buffer("p", low, persistent=False)
        self.register_buffer("p_top", top, persistent=False)

    def forward(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        return self.monomials(a, groups, self.p, self.p_top)

    def working_memory(self, num_atoms: int, itemsize: int) -> int:
        numbers = self.monomials.working_memory(num_atoms, self.channels, itemsize)
        return int(numbers * INFERENCE_MEMORY_FACTOR)


def scratch_layout(plan: MonomialPlan) -> tuple[list[int], list[int], list[int], list[int], int]:
    """The monomial recursion of ``plan`` with the monomials of all degrees in one scratch
    array, degree ``d`` at rows ``offsets[d]:offsets[d + 1]``: (dst, src, last) per built
    monomial (row dst = row src · A[last]), the rows of the weighted monomials in weight order,
    and the number of rows. The compiled contraction kernel's form of the plan."""
    offsets = [0, *itertools.accumulate(len(o) for o in plan.order)]
    dst: list[int] = []
    src: list[int] = []
    last: list[int] = []
    for d, (prefix, factor) in enumerate(plan.steps, start=1):
        dst += [offsets[d] + t for t in range(len(prefix))]
        src += [offsets[d - 1] + i for i in prefix]
        last += factor
    top = len(plan.order)
    pos = [offsets[d] + t for d in range(top) for t in range(plan.num_used[d])]
    return dst, src, last, pos, offsets[-1]


class ContractionPlan(NamedTuple):
    """What the compiled contraction's autograd Function needs, frozen."""

    kernels: ModuleType
    weights: torch.Tensor  # [z, monomials, M, c]: P permuted for the kernel
    layout: tuple[torch.Tensor, ...]  # (first, dst, src, last, pos) of the monomial recursion
    rows: int  # monomials of all degrees (the kernel's scratch rows)
    fallback: Callable[[torch.Tensor, ElementGroups], torch.Tensor]  # for second derivatives


class CompiledContraction(nn.Module):
    """:class:`SymmetricContraction` through the compiled CPU kernel (frozen weights)."""

    def __init__(self, reference: SymmetricContraction, kernels: ModuleType) -> None:
        super().__init__()
        self.weights = reference.weights
        self.monomials = reference.monomials
        self.channels, self.dim, self.dim_out = reference.channels, reference.dim, reference.dim_out
        self.kernels = kernels
        with torch.no_grad():
            p = reference.contract_weights()
        self.register_buffer("kernel_weights", p.permute(0, 3, 2, 1).contiguous(), persistent=False)
        dst, src, last, pos, rows = scratch_layout(reference.plan)
        self.rows = rows
        self.register_buffer("first", reference.monomials.first.clone(), persistent=False)
        for name, values in (("dst", dst), ("src", src), ("last", last), ("pos", pos)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.long), persistent=False)

    def _operations(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        """The same contraction in PyTorch operations (second derivatives)."""
        p, p_top = self.monomials.split_top(self.kernel_weights.permute(0, 3, 2, 1))
        return self.monomials(a, groups, p, p_top)

    def forward(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        if a.device.type != "cpu":
            raise RuntimeError(
                "this model was converted for the compiled CPU kernels: call "
                "openmace.accel.for_inference again after moving it to another device"
            )
        plan = ContractionPlan(
            self.kernels,
            self.kernel_weights,
            (self.first, self.dst, self.src, self.last, self.pos),
            self.rows,
            self._operations,
        )
        return KernelContraction.apply(a, groups, plan)

    def working_memory(self, num_atoms: int, itemsize: int) -> int:
        dim, dim_out = self.dim, self.dim_out
        return int(
            num_atoms * self.channels * 2 * (dim + dim_out) * itemsize * COMPILED_MEMORY_FACTOR
        )


class KernelContraction(torch.autograd.Function):
    """``a [n, c, dim_in]`` → ``[n, c, dim_out]`` by the compiled kernel, hand-written backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, a: torch.Tensor, groups: ElementGroups, plan: ContractionPlan
    ) -> torch.Tensor:
        x = a.transpose(1, 2).contiguous()  # [n, dim, c]: channels in SIMD lanes
        species = groups.species.contiguous()
        out = plan.kernels.contraction_forward(x, species, plan.weights, *plan.layout, plan.rows)
        ctx.save_for_backward(a, x, species)
        ctx.groups, ctx.plan = groups, plan
        return out.transpose(1, 2)  # [n, c, M]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        a, x, species = ctx.saved_tensors
        plan = ctx.plan
        if torch.is_grad_enabled():  # a second derivative is wanted: autograd all the way
            out = plan.fallback(a, ctx.groups)
            (grad,) = torch.autograd.grad(out, a, grad_out, create_graph=True)
            return grad, None, None
        grad_x = plan.kernels.contraction_backward(
            x,
            species,
            plan.weights,
            *plan.layout,
            plan.rows,
            grad_out.transpose(1, 2).contiguous(),
        )
        return grad_x.transpose(1, 2), None, None
