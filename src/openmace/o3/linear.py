"""Equivariant linear maps between irreps (no bias; channels mix, components do not).

For each output irrep ``l`` the map is ``y_l = W_lᵀ x_l / sqrt(fan_in)``: one weight matrix per
irrep present on both sides, unit-variance initialisation, fan-in normalisation (as e3nn's
``o3.Linear``). :class:`ElementLinear` has one such matrix per chemical element, selected by the
atom's element: the element-dependent self-connection of eq. 12.
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.o3.irreps import Irrep


def split_irreps(x: torch.Tensor, irreps: list[Irrep] | tuple[Irrep, ...]) -> list[torch.Tensor]:
    """Split features ``[n, channels, dim]`` into per-irrep blocks ``[n, channels, 2l+1]``."""
    # split (not slicing): its backward concatenates instead of zero-filling per block
    return list(x.split([ir.dim for ir in irreps], dim=-1))


def _assemble(
    outs: list[torch.Tensor | None],
    irreps_out: tuple[Irrep, ...],
    ref: torch.Tensor,
    n: int,
    channels: int,
) -> torch.Tensor:
    """Concatenate per-irrep outputs; irreps without an input path are zero."""
    return torch.cat(
        [
            o if o is not None else ref.new_zeros(n, channels, ir.dim)
            for o, ir in zip(outs, irreps_out)
        ],
        dim=-1,
    )


class EquivariantLinear(nn.Module):
    """Linear map from blocks ``[(mul_in, irrep)]`` to ``channels_out x irreps_out``.

    Input irreps must be distinct. An output irrep without a matching input is zero.
    """

    def __init__(
        self,
        irreps_in: list[tuple[int, Irrep]],
        irreps_out: list[Irrep] | tuple[Irrep, ...],
        channels_out: int,
    ) -> None:
        super().__init__()
        self.irreps_in = list(irreps_in)
        self.irreps_out = tuple(irreps_out)
        self.channels_out = channels_out
        in_index = {ir: i for i, (_, ir) in enumerate(self.irreps_in)}
        if len(in_index) != len(self.irreps_in):
            raise ValueError("EquivariantLinear: repeated input irrep")
        self.paths: list[tuple[int, int]] = []  # (input block, output block)
        self.weights = nn.ParameterList()
        for j, ir in enumerate(self.irreps_out):
            if ir in in_index:
                i = in_index[ir]
                self.paths.append((i, j))
                self.weights.append(nn.Parameter(torch.randn(self.irreps_in[i][0], channels_out)))

    def forward(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """``blocks[i]``: ``[n, mul_i, 2l_i+1]``; returns ``[n, channels_out, dim_out]``."""
        n = blocks[0].shape[0]
        outs: list[torch.Tensor | None] = [None] * len(self.irreps_out)
        for (i, j), w in zip(self.paths, self.weights):
            outs[j] = torch.einsum("nim,io->nom", blocks[i], w) * w.shape[0] ** -0.5
        return _assemble(outs, self.irreps_out, blocks[0], n, self.channels_out)


class ElementGroups:
    """Atoms grouped by element index, to apply per-element weights with dense matmuls."""

    def __init__(self, species: torch.Tensor, num_elements: int) -> None:
        self.order = torch.argsort(species, stable=True)
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(len(species), device=species.device)
        counts = torch.bincount(species, minlength=num_elements).tolist()
        self.chunks: list[tuple[int, int, int]] = []  # (element, start, stop) in sorted order
        start = 0
        for element, count in enumerate(counts):
            if count:
                self.chunks.append((element, start, start + count))
            start += count

    def apply(self, x: torch.Tensor, fn) -> torch.Tensor:
        """``fn(element, x_of_that_element)`` for every element present, back in atom order."""
        if len(self.chunks) == 1:
            return fn(self.chunks[0][0], x)
        parts = x[self.order].split([b - a for _, a, b in self.chunks], dim=0)
        out = torch.cat([fn(e, part) for (e, _, _), part in zip(self.chunks, parts)], dim=0)
        return out[self.inverse]


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
    ) -> None:
        super().__init__()
        self.irreps_in = tuple(irreps_in)
        self.irreps_out = tuple(irreps_out)
        self.channels_out = channels_out
        self.norm = (channels_in * num_elements) ** -0.5
        in_index = {ir: i for i, ir in enumerate(self.irreps_in)}
        self.paths: list[tuple[int, int]] = []
        self.weights = nn.ParameterList()
        for j, ir in enumerate(self.irreps_out):
            if ir in in_index:
                self.paths.append((in_index[ir], j))
                self.weights.append(
                    nn.Parameter(torch.randn(num_elements, channels_in, channels_out))
                )

    def forward(self, x: torch.Tensor, groups: ElementGroups) -> torch.Tensor:

        def per_element(element: int, xe: torch.Tensor) -> torch.Tensor:
            outs: list[torch.Tensor | None] = [None] * len(self.irreps_out)
            parts = split_irreps(xe, self.irreps_in)
            for (i, j), w in zip(self.paths, self.weights):
                outs[j] = torch.einsum("nim,io->nom", parts[i], w[element])
            return _assemble(outs, self.irreps_out, xe, xe.shape[0], self.channels_out)

        return groups.apply(x, per_element) * self.norm
