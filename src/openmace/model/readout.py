"""Readouts: site energy contributions of each layer (paper eq. 13).

Linear on the invariant features for every layer but the last; a one-hidden-layer MLP (SiLU)
for the last layer.
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.model.radial import MLP
from openmace.o3 import Irrep


class Readout(nn.Module):
    """``[n, c, dim] → [n]`` from the even scalars; ``hidden`` sizes give an MLP (empty: linear)."""

    def __init__(
        self,
        irreps: tuple[Irrep, ...],
        channels: int,
        hidden: list[int],
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if Irrep(0, 1) not in irreps:
            raise ValueError("a readout needs even scalars (0e) among the features")
        self.scalar_index = sum(ir.dim for ir in irreps[: irreps.index(Irrep(0, 1))])
        self.mlp = MLP([channels, *hidden, 1], dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(h[:, :, self.scalar_index]).squeeze(-1)
