"""Swaps of the symmetric contraction (paper eq. 10-11) for frozen weights.

* :class:`FrozenContraction`: the reference evaluation (:class:`MonomialContraction`) with the
  weights of each element contracted with the coupling basis once, instead of at every call. In
  PyTorch operations: differentiable to any order, and what the TorchScript export runs.
* :class:`CompiledContraction`: the compiled CPU kernel (``kernels/contraction.cpp``): per atom
  and channel block the used monomials of every degree are built in cache, never stored, and
  contracted with the element's weights; the backward pass rebuilds them. A second derivative
  (``create_graph=True``) goes through :class:`MonomialContraction` and autograd.

Both contract an element's weights the first time a call contains that element and keep them
(memory held grows with the elements seen, never with the elements of the model: an 89-element
model run on copper holds copper's weights alone); ``clear_cache()`` releases them (needed after
changing the weights in place, e.g. ``load_state_dict`` into a converted model). Both register the
reference's ``weights`` and ``monomials`` under the same names, so the model's state dict does not
change.
"""

# no ``from __future__ import annotations`` here: TorchScript reads the class annotation of
# FrozenContraction.cache as a type, not as a string
import itertools
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import torch
from torch import nn

from openmace.model.product import (
    MonomialPlan,
    SymmetricContraction,
    contract_tree_weights,
    present_elements,
)
from openmace.o3 import ElementGroups

# the compiled kernel keeps per atom the input and output features and their gradients
COMPILED_MEMORY_FACTOR = 1.5
INFERENCE_MEMORY_FACTOR = 1.5


class FrozenContraction(nn.Module):
    """:class:`SymmetricContraction` with each element's contracted weights computed once, the
    first time a call contains the element (a cache keyed by element index; scripted as is by
    the TorchScript export, where the cache starts empty and fills the same way)."""

    cache: dict[int, tuple[torch.Tensor, torch.Tensor]]

    def __init__(self, reference: SymmetricContraction) -> None:
        super().__init__()
        self.weights = reference.weights
        self.monomials = reference.monomials
        self.channels, self.dim, self.dim_out = reference.channels, reference.dim, reference.dim_out
        self.width = reference.width
        self.top_by_prefix = reference.monomials.top_by_prefix
        # the reference's parameters (shared, not copied) as a list TorchScript can iterate (it
        # cannot iterate a ParameterDict)
        self.tree_weights = list(reference.weights.values())
        self.register_buffer("tree_basis", reference.tree_basis, persistent=False)
        # element index -> (P [c, M, low_width], top-degree weights [c, M·dim, num_prev] or an
        # empty tensor): MonomialContraction's weights of that element
        self.cache = {}

    def clear_cache(self) -> None:
        """Forget every element's contracted weights (they are rebuilt when next needed)."""
        self.cache.clear()

    def _fresh(self, entry: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Whether a cached entry still has the weights' dtype and device (a model converted
        with ``.to()`` after the swap rebuilds its cache)."""
        basis = self.tree_basis
        return entry[0].dtype == basis.dtype and entry[0].device == basis.device

    def _contract(self, elements: list[int]) -> None:
        """Contract the weights of ``elements`` (one matrix product) into the cache."""
        index = torch.tensor(elements, dtype=torch.long, device=self.tree_basis.device)
        weights = self.tree_weights
        if not torch.jit.is_scripting():  # eager: the parameters as they are now
            weights = list(self.weights.values())
        with torch.no_grad():
            p = contract_tree_weights(weights, self.tree_basis, index, self.dim_out, self.width)
            low, top = self.monomials.split_top(p)
            for k, element in enumerate(elements):
                # a compact copy: the slice of P alone would keep P's top-degree columns alive
                self.cache[element] = (
                    low[k].clone(),
                    top[k] if self.top_by_prefix else top,
                )

    def forward(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        elements = present_elements(groups)
        for element in elements:
            if element in self.cache and not self._fresh(self.cache[element]):
                self.cache.clear()
                break
        missing: list[int] = []
        for element in elements:
            if element not in self.cache:
                missing.append(element)
        if len(missing) > 0:
            self._contract(missing)
        p_parts: list[torch.Tensor] = []
        top_parts: list[torch.Tensor] = []
        for element in elements:
            low, top = self.cache[element]
            p_parts.append(low)
            top_parts.append(top)
        return self.monomials(a, groups, p_parts, top_parts)

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
    weights: torch.Tensor  # [slots, monomials, M, c]: P of the elements seen, for the kernel
    layout: tuple[torch.Tensor, ...]  # (first, dst, src, last, pos) of the monomial recursion
    rows: int  # monomials of all degrees (the kernel's scratch rows)
    fallback: Callable[[torch.Tensor, ElementGroups], torch.Tensor]  # for second derivatives


class CompiledContraction(nn.Module):
    """:class:`SymmetricContraction` through the compiled CPU kernel (frozen weights).

    The kernel reads one ``[slots, monomials, M, c]`` tensor of contracted weights; an element
    gets a slot the first time a call contains it (the tensor grows by the new elements), and
    the atoms' element indices are mapped to their slots at each call."""

    def __init__(self, reference: SymmetricContraction, kernels: ModuleType) -> None:
        super().__init__()
        self.weights = reference.weights
        self.monomials = reference.monomials
        self.channels, self.dim, self.dim_out = reference.channels, reference.dim, reference.dim_out
        self.width = reference.width
        self.kernels = kernels
        self.register_buffer("tree_basis", reference.tree_basis, persistent=False)
        basis = reference.tree_basis
        self.register_buffer(
            "kernel_weights",
            basis.new_zeros((0, self.width, self.dim_out, self.channels)),
            persistent=False,
        )
        # slot of each element index in kernel_weights (-1: not contracted yet), as a list and
        # as the tensor that maps the atoms' element indices
        self.slots: list[int] = [-1] * reference.num_elements
        self.register_buffer(
            "slot_of",
            torch.full((reference.num_elements,), -1, dtype=torch.long, device=basis.device),
            persistent=False,
        )
        dst, src, last, pos, rows = scratch_layout(reference.plan)
        self.rows = rows
        self.register_buffer("first", reference.monomials.first.clone(), persistent=False)
        for name, values in (("dst", dst), ("src", src), ("last", last), ("pos", pos)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.long), persistent=False)

    def clear_cache(self) -> None:
        """Forget every element's contracted weights (they are rebuilt when next needed)."""
        self.kernel_weights = self.kernel_weights[:0].clone()
        self.slots = [-1] * len(self.slots)
        self.slot_of.fill_(-1)

    def _contract(self, elements: list[int]) -> None:
        """Contract the weights of ``elements`` (one matrix product) into new slots."""
        index = torch.tensor(elements, dtype=torch.long, device=self.tree_basis.device)
        with torch.no_grad():
            p = contract_tree_weights(
                list(self.weights.values()), self.tree_basis, index, self.dim_out, self.width
            )
            new = p.permute(0, 3, 2, 1).contiguous()
            start = self.kernel_weights.shape[0]
            grown = new if start == 0 else torch.cat([self.kernel_weights, new])
        for k, element in enumerate(elements):
            self.slots[element] = start + k
            self.slot_of[element] = start + k
        self.kernel_weights = grown

    def _species_slots(self, groups: ElementGroups) -> torch.Tensor:
        """The kernel's weight slot of every atom (its element's), contracting new elements."""
        elements = present_elements(groups)
        missing = [element for element in elements if self.slots[element] < 0]
        if missing:
            self._contract(missing)
        if self.slots == list(range(len(self.slots))):
            return groups.species.contiguous()
        return self.slot_of.index_select(0, groups.species)

    def _operations(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        """The same contraction in PyTorch operations (second derivatives)."""
        index = torch.tensor([self.slots[element] for element in present_elements(groups)])
        p = self.kernel_weights.index_select(0, index.to(self.kernel_weights.device))
        p, p_top = self.monomials.split_top(p.permute(0, 3, 2, 1))
        tops = p_top.unbind(0) if self.monomials.top_by_prefix else []
        return self.monomials(a, groups, list(p.unbind(0)), list(tops))

    def forward(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        if a.device.type != "cpu":
            raise RuntimeError(
                "this model was converted for the compiled CPU kernels: call "
                "openmace.accel.for_inference again after moving it to another device"
            )
        species = self._species_slots(groups)
        plan = ContractionPlan(
            self.kernels,
            self.kernel_weights,
            (self.first, self.dst, self.src, self.last, self.pos),
            self.rows,
            self._operations,
        )
        return KernelContraction.apply(a, groups, species, plan)

    def working_memory(self, num_atoms: int, itemsize: int) -> int:
        dim, dim_out = self.dim, self.dim_out
        return int(
            num_atoms * self.channels * 2 * (dim + dim_out) * itemsize * COMPILED_MEMORY_FACTOR
        )


class KernelContraction(torch.autograd.Function):
    """``a [n, c, dim_in]`` → ``[n, c, dim_out]`` by the compiled kernel, hand-written backward;
    ``species [n]``: each atom's slot in ``plan.weights``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, a: torch.Tensor, groups: ElementGroups, species: torch.Tensor, plan: ContractionPlan
    ) -> torch.Tensor:
        x = a.transpose(1, 2).contiguous()  # [n, dim, c]: channels in SIMD lanes
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
            return grad, None, None, None
        grad_x = plan.kernels.contraction_backward(
            x,
            species,
            plan.weights,
            *plan.layout,
            plan.rows,
            grad_out.transpose(1, 2).contiguous(),
        )
        return grad_x.transpose(1, 2), None, None, None
