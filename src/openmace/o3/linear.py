"""Equivariant linear maps between irreps (no bias; channels mix, components do not).

For each output irrep ``l`` the map is ``y_l = W_lᵀ x_l / sqrt(fan_in)``: one weight matrix per
irrep present on both sides, unit-variance initialisation, fan-in normalisation (as e3nn's
``o3.Linear``). :class:`ElementLinear` has one such matrix per chemical element, selected by the
atom's element: the element-dependent self-connection of eq. 12.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from openmace.o3.irreps import Irrep


def mix_channels(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y[n, o, m] = Σ_i x[n, i, m] w[i, o]``: one matrix product, without the permuted copies
    of a general contraction when there is one component (scalars)."""
    if x.shape[-1] == 1:
        return torch.mm(x.squeeze(-1), w).unsqueeze(-1)
    return torch.einsum("nim,io->nom", x, w)


def assemble(
    outs: list[torch.Tensor | None], dims: list[int], ref: torch.Tensor, channels: int
) -> torch.Tensor:
    """Concatenate per-irrep outputs ``[n, channels, d]``; a missing one (no path) is zero."""
    blocks: list[torch.Tensor] = []
    for k, d in enumerate(dims):
        out = outs[k]
        blocks.append(ref.new_zeros((ref.shape[0], channels, d)) if out is None else out)
    return torch.cat(blocks, dim=-1)


class EquivariantLinear(nn.Module):
    """Linear map from blocks ``[(mul_in, irrep)]`` to ``channels_out x irreps_out``.

    Input irreps must be distinct. An output irrep without a matching input is zero.
    """

    def __init__(
        self,
        irreps_in: list[tuple[int, Irrep]],
        irreps_out: list[Irrep] | tuple[Irrep, ...],
        channels_out: int,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.irreps_in = list(irreps_in)
        self.irreps_out = tuple(irreps_out)
        self.channels_out = channels_out
        in_index = {ir: i for i, (_, ir) in enumerate(self.irreps_in)}
        if len(in_index) != len(self.irreps_in):
            raise ValueError("EquivariantLinear: repeated input irrep")
        self.dims_out = [ir.dim for ir in self.irreps_out]
        self.paths: list[tuple[int, int]] = []  # (input block, output block)
        self.weights = nn.ParameterList()
        for j, ir in enumerate(self.irreps_out):
            if ir in in_index:
                i = in_index[ir]
                self.paths.append((i, j))
                self.weights.append(
                    nn.Parameter(torch.randn(self.irreps_in[i][0], channels_out, dtype=dtype))
                )

    def forward(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """``blocks[i]``: ``[n, mul_i, 2l_i+1]``; returns ``[n, channels_out, dim_out]``."""
        outs: list[torch.Tensor | None] = [None for _ in self.dims_out]
        for k, w in enumerate(self.weights):
            i, j = self.paths[k]
            outs[j] = mix_channels(blocks[i], w) * w.shape[0] ** -0.5
        return assemble(outs, self.dims_out, blocks[0], self.channels_out)


class ElementGroups(NamedTuple):
    """Atoms grouped by element index, to apply per-element weights with dense matmuls.

    ``order`` sorts atoms by element, ``inverse`` undoes it; ``chunks`` lists
    ``(element, start, stop)`` in sorted order for every element present; ``species`` is the
    element index of each atom (in atom order). ``in_order``: the atoms are already sorted by
    element (``order`` is the identity): rows are split and joined without gathers (the ASE
    calculator numbers atoms this way).
    """

    order: torch.Tensor
    inverse: torch.Tensor
    chunks: list[tuple[int, int, int]]
    species: torch.Tensor
    in_order: bool = False


def element_groups(species: torch.Tensor, num_elements: int) -> ElementGroups:
    """Group atoms of element indices ``species [n]``."""
    order = torch.argsort(species, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(species.shape[0], device=species.device)
    counts: list[int] = torch.bincount(species, minlength=num_elements).tolist()
    chunks: list[tuple[int, int, int]] = []
    start = 0
    for element, count in enumerate(counts):
        if count > 0:
            chunks.append((element, start, start + count))
        start += count
    in_order = len(chunks) == 1 or bool((species[1:] >= species[:-1]).all())
    return ElementGroups(order, inverse, chunks, species, in_order)


def sort_by_element(x: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
    """Rows of ``x`` in element order (``x`` itself when one element is present)."""
    return x if groups.in_order else x[groups.order]


def split_by_element(x: torch.Tensor, groups: ElementGroups) -> list[tuple[int, torch.Tensor]]:
    """``(element, rows of x of that element)`` for every element present."""
    sizes = [stop - start for _, start, stop in groups.chunks]
    parts = sort_by_element(x, groups).split(sizes, dim=0)
    return [(groups.chunks[k][0], parts[k]) for k in range(len(parts))]


def merge_by_element(parts: list[torch.Tensor], groups: ElementGroups) -> torch.Tensor:
    """Inverse of :func:`split_by_element` for per-element results: back in atom order."""
    if len(parts) == 1:
        return parts[0]
    joined = torch.cat(parts, dim=0)
    return joined if groups.in_order else joined[groups.inverse]


class ElementLinear(nn.Module):
    """Per-element equivariant linear map (self-connection of eq. 12).

    Normalised by ``1 / sqrt(mul_in · num_elements)``, the convention of mace-torch's
    ``FullyConnectedTensorProduct(features, one-hot element)`` so weights keep their scale.
    """

    def __init__(
        self,
        irreps_in: list[Irrep] | tuple[Irrep, ...],
        channels_in: int,
        irreps_out: list[Irrep] | tuple[Irrep, ...],
        channels_out: int,
        num_elements: int,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.irreps_in = tuple(irreps_in)
        self.irreps_out = tuple(irreps_out)
        self.channels_out = channels_out
        self.norm = (channels_in * num_elements) ** -0.5
        self.dims_in = [ir.dim for ir in self.irreps_in]
        self.dims_out = [ir.dim for ir in self.irreps_out]
        in_index = {ir: i for i, ir in enumerate(self.irreps_in)}
        self.paths: list[tuple[int, int]] = []
        self.weights = nn.ParameterList()
        for j, ir in enumerate(self.irreps_out):
            if ir in in_index:
                self.paths.append((in_index[ir], j))
                self.weights.append(
                    nn.Parameter(torch.randn(num_elements, channels_in, channels_out, dtype=dtype))
                )

    def forward(self, x: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        for element, xe in split_by_element(x, groups):
            outs.append(self._one_element(element, xe))
        return merge_by_element(outs, groups) * self.norm

    def _one_element(self, element: int, x: torch.Tensor) -> torch.Tensor:
        parts = x.split(self.dims_in, dim=-1)
        outs: list[torch.Tensor | None] = [None for _ in self.dims_out]
        for k, w in enumerate(self.weights):
            i, j = self.paths[k]
            outs[j] = mix_channels(parts[i], w[element])
        return assemble(outs, self.dims_out, x, self.channels_out)
