"""Frozen equivariant linear maps: every irrep component in one batched matrix product.

The reference maps (:mod:`openmace.o3.linear`) compute ``y_l[n, o, m] = Σ_i x_l[n, i, m]
W_l[i, o] / sqrt(fan_in)`` irrep by irrep (eq. 12's self-connection per element as well):
for each irrep a permuted copy of ``x_l``, a product, a copy back and, at the end, a
concatenation; the backward pass repeats it. With frozen weights the same sums take one
batched product over the components: ``x`` laid out as ``[D, n, i]`` (component-major), the
weights expanded to ``W[D, i, o]`` (component ``m`` of irrep ``l`` takes ``W_l``, the
normalisation folded in), ``y[D, n, o] = bmm(x, W)``, returned as the view ``[n, o, D]``.
Per-element maps do one product per element present (atoms sorted by element: contiguous
rows). The backward pass is the same product with the transposed weights, kept too
(:class:`ComponentProduct`, differentiable again for second derivatives).

Measured on the OFF23-small look-alike's maps (64 atoms, 96 channels, l ≤ 3, float32, two
threads, forward + backward): the interaction's linear map 1.3 → 0.56 ms, the per-element
self-connection of the first layer (6 elements) 3.4 → 0.73 ms.

Expanded weights are built per element on first use and kept until a weight changes (in
place or replaced), so an 89-element model holds them only for the elements a structure has.
Scripted (the LAMMPS model file, ``implementation="operators"``), the modules build the
expanded weights of the elements present at every call (TorchScript keeps no cache; a few
hundred microseconds per element and layer for MP-0 medium) and the products differentiate by
autograd: the same numbers, nothing added to the file.
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.o3.linear import ElementGroups, ElementLinear, EquivariantLinear


def _rows_product(
    xd: torch.Tensor, weights: list[torch.Tensor], chunks: list[tuple[int, int]]
) -> torch.Tensor:
    """``xd [D, n, i]`` → ``[D, n, o]``: rows ``start:stop`` of chunk ``k`` times
    ``weights[k] [D, i, o]``."""
    if len(chunks) == 1:
        return torch.bmm(xd, weights[0])
    parts: list[torch.Tensor] = []
    for k in range(len(chunks)):
        parts.append(torch.bmm(xd[:, chunks[k][0] : chunks[k][1]], weights[k]))
    return torch.cat(parts, dim=1)


class ComponentProduct(torch.autograd.Function):
    """``y = x W`` per row chunk and component with frozen weights; the backward pass is the
    product with the kept transposed weights (no transposed copy per call)."""

    @staticmethod
    def forward(ctx, xd, weights, transposed, chunks):  # type: ignore[override]
        ctx.transposed, ctx.weights, ctx.chunks = transposed, weights, chunks
        return _rows_product(xd, weights, chunks)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if torch.is_grad_enabled():  # second derivatives: the product of a differentiable op
            grad_x = ComponentProduct.apply(grad, ctx.transposed, ctx.weights, ctx.chunks)
        else:
            grad_x = _rows_product(grad.contiguous(), ctx.transposed, ctx.chunks)
        return grad_x, None, None, None


def _expanded(weights: list[torch.Tensor], dims: list[int], scale: float) -> torch.Tensor:
    """``[Σ dims, i, o]``: ``weights[k] [i, o]`` repeated for each of its ``dims[k]``
    components, times ``scale``."""
    parts: list[torch.Tensor] = []
    for k in range(len(dims)):
        w = weights[k].detach() * scale
        parts.append(w.expand(dims[k], w.shape[0], w.shape[1]))
    return torch.cat(parts)


def _key(weights: nn.ParameterList) -> tuple:
    return tuple((w.data_ptr(), w._version) for w in weights)


class FrozenLinear(nn.Module):
    """The swap of :class:`~openmace.o3.linear.EquivariantLinear` for frozen weights (same
    input blocks ``[n, mul_i, 2l_i+1]``, same output ``[n, channels_out, dim_out]`` as a view).

    Input blocks of equal multiplicity share one product; outputs without a path are zero.
    It registers the reference's ``weights``: the state dict does not change."""

    def __init__(self, reference: EquivariantLinear) -> None:
        super().__init__()
        self.weights = reference.weights
        self.paths = list(reference.paths)
        self.dims_out = list(reference.dims_out)
        self.channels_out = reference.channels_out
        multiplicity = [reference.irreps_in[i][0] for i, _ in self.paths]
        # groups of paths whose inputs have the same multiplicity, in output order
        groups: dict[int, list[int]] = {}
        for k, mul in enumerate(multiplicity):
            groups.setdefault(mul, []).append(k)
        self.groups = list(groups.values())
        self.scales = [float(mul) ** -0.5 for mul in multiplicity]
        # output components of each group, concatenated in group order
        starts = [sum(self.dims_out[:j]) for j in range(len(self.dims_out))]
        order: list[int] = []
        for group in self.groups:
            for k in group:
                j = self.paths[k][1]
                order += range(starts[j], starts[j] + self.dims_out[j])
        self.dim_out = sum(self.dims_out)
        self.in_order = order == list(range(self.dim_out))
        # position of each output component in the concatenation (missing ones: a zero row)
        position = [len(order)] * self.dim_out
        for p, c in enumerate(order):
            position[c] = p
        device = reference.weights[0].device if len(reference.weights) else None
        self.register_buffer("position", torch.tensor(position, device=device), persistent=False)
        self._plan: tuple | None = None

    def group_weights(self, g: int) -> torch.Tensor:
        """Expanded weights ``[D_g, mul_g, o]`` of group ``g``, scales folded in."""
        weights: list[torch.Tensor] = []
        dims: list[int] = []
        for k, w in enumerate(self.weights):
            if k in self.groups[g]:
                weights.append(w)
                dims.append(self.dims_out[self.paths[k][1]])
        return _expanded(weights, dims, self.scales[self.groups[g][0]])

    @torch.jit.unused
    def plan(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Expanded weights of every group and their transposes, kept until a weight
        changes."""
        key = _key(self.weights)
        if self._plan is not None and self._plan[0] == key:
            return self._plan[1]
        forward = [self.group_weights(g) for g in range(len(self.groups))]
        backward = [w.transpose(1, 2).contiguous() for w in forward]
        self._plan = (key, (forward, backward))
        return forward, backward

    @torch.jit.unused
    def eager_product(self, xd: torch.Tensor, g: int) -> torch.Tensor:
        forward, backward = self.plan()
        n = xd.shape[1]
        return ComponentProduct.apply(xd, [forward[g]], [backward[g]], [(0, n)])

    def forward(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        n = blocks[0].shape[0]
        outs: list[torch.Tensor] = []
        for g in range(len(self.groups)):
            parts: list[torch.Tensor] = []
            for k in self.groups[g]:
                parts.append(blocks[self.paths[k][0]].permute(2, 0, 1))
            xd = parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)
            if torch.jit.is_scripting():  # no cache: expanded per call, autograd
                outs.append(torch.bmm(xd, self.group_weights(g)))
            else:
                outs.append(self.eager_product(xd, g))
        if not self.in_order:  # groups back in output order, zeros where no path
            outs.append(blocks[0].new_zeros((1, n, self.channels_out)))
            y = torch.cat(outs).index_select(0, self.position)
        else:
            y = outs[0] if len(outs) == 1 else torch.cat(outs)
        return y.permute(1, 2, 0)


class FrozenElementLinear(nn.Module):
    """The swap of :class:`~openmace.o3.linear.ElementLinear` for frozen weights: per element
    present, one product over all components of its atoms' rows. Registers the reference's
    ``weights``."""

    def __init__(self, reference: ElementLinear) -> None:
        super().__init__()
        self.weights = reference.weights
        self.paths = list(reference.paths)
        self.dims_in = list(reference.dims_in)
        self.dims_out = list(reference.dims_out)
        self.path_dims = [self.dims_out[j] for _, j in self.paths]
        self.channels_out = reference.channels_out
        self.norm = reference.norm
        starts_in = [sum(self.dims_in[:i]) for i in range(len(self.dims_in))]
        starts_out = [sum(self.dims_out[:j]) for j in range(len(self.dims_out))]
        # input component feeding each output component (in output order), for paths only
        source: list[int] = []
        covered: list[int] = []
        for i, j in self.paths:
            source += range(starts_in[i], starts_in[i] + self.dims_in[i])
            covered += range(starts_out[j], starts_out[j] + self.dims_out[j])
        self.dim_in, self.dim_out = sum(self.dims_in), sum(self.dims_out)
        self.all_inputs = source == list(range(self.dim_in))
        self.all_outputs = covered == list(range(self.dim_out))
        device = reference.weights[0].device if len(reference.weights) else None
        self.register_buffer("source", torch.tensor(source, device=device), persistent=False)
        position = [len(covered)] * self.dim_out
        for p, c in enumerate(covered):
            position[c] = p
        self.register_buffer("position", torch.tensor(position, device=device), persistent=False)
        self._expanded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._key: tuple | None = None

    def expanded(self, element: int) -> torch.Tensor:
        """Expanded weights of one element ``[D, i, o]``, normalisation folded in."""
        weights: list[torch.Tensor] = []
        for w in self.weights:
            weights.append(w[element])
        return _expanded(weights, self.path_dims, self.norm)

    @torch.jit.unused
    def element_weights(self, element: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`expanded` and its transpose, built on first use and kept until a weight
        changes."""
        key = _key(self.weights)
        if key != self._key:
            self._expanded, self._key = {}, key
        pair = self._expanded.get(element)
        if pair is None:
            w = self.expanded(element)
            pair = self._expanded[element] = (w, w.transpose(1, 2).contiguous())
        return pair

    @torch.jit.unused
    def eager_product(self, xd: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        pairs = [self.element_weights(e) for e, _, _ in groups.chunks]
        chunks = [(a, b) for _, a, b in groups.chunks]
        return ComponentProduct.apply(xd, [w for w, _ in pairs], [t for _, t in pairs], chunks)

    def forward(self, x: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        n = x.shape[0]
        if n == 0 or len(self.paths) == 0:
            return x.new_zeros((n, self.channels_out, self.dim_out))
        xd = x.permute(2, 0, 1)
        xd = xd.contiguous() if self.all_inputs else xd.index_select(0, self.source)
        if not groups.in_order:
            xd = xd.index_select(1, groups.order)
        if torch.jit.is_scripting():  # no cache: expanded per call, autograd
            weights: list[torch.Tensor] = []
            chunks: list[tuple[int, int]] = []
            for element, a, b in groups.chunks:
                weights.append(self.expanded(element))
                chunks.append((a, b))
            y = _rows_product(xd, weights, chunks)
        else:
            y = self.eager_product(xd, groups)
        if not groups.in_order:
            y = y.index_select(1, groups.inverse)
        if not self.all_outputs:
            zero = y.new_zeros((1, n, self.channels_out))
            y = torch.cat([y, zero]).index_select(0, self.position)
        return y.permute(1, 2, 0)
