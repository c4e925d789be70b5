"""Readouts: site energy contributions of each layer (paper eq. 13).

Linear on the invariant features for every layer but the last; a one-hidden-layer MLP (SiLU)
for the last layer. With ``bias`` the last readout has a second hidden layer and biases on the
layers after the first (mace-torch's ``NonLinearBiasReadoutBlock``):

    E_i = W_3ᵀ σ(W_2ᵀ σ(W_1ᵀ h_i / √c) / √h + b_2) / √h + b_3

A model with several heads has one such readout per head (``[heads, ...]`` weights; mace-torch
stores them as one wide layer whose off-head blocks are masked away, which is the same map).
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.model.radial import MLP, NormalizedSiLU
from openmace.o3 import Irrep


class _HeadLayer(nn.Module):
    """One layer of every head: ``[n, heads, a] → [n, heads, b]`` (``y = σ(x) W / √a + b``,
    the activation before all but the first layer)."""

    def __init__(
        self, heads: int, a: int, b: int, activate: bool, bias: bool, dtype: torch.dtype | None
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(heads, a, b, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(heads, b, dtype=dtype)) if bias else None
        self.activate = activate
        self.act = NormalizedSiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            x = self.act(x)
        y = torch.einsum("nha,hab->nhb", x, self.weight) * self.weight.shape[1] ** -0.5
        bias = self.bias
        if bias is not None:
            y = y + bias
        return y


class HeadMLP(nn.Module):
    """One MLP per head: ``[n, a] → [n, heads]`` (bias-free first layer, optional biases
    after it; SiLU normalised to unit second moment between layers)."""

    def __init__(
        self, sizes: list[int], heads: int, bias: bool, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.sizes = list(sizes)
        pairs = list(zip(sizes[:-1], sizes[1:]))
        if bias and len(pairs) < 2:
            raise ValueError("a biased readout needs a hidden layer")
        self.layers = nn.ModuleList(
            [
                _HeadLayer(heads, a, b, i > 0, bias and i > 0, dtype)
                for i, (a, b) in enumerate(pairs)
            ]
        )
        self.num_heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.unsqueeze(1).expand(-1, self.num_heads, -1)
        for layer in self.layers:
            y = layer(y)
        return y.squeeze(-1)


class Readout(nn.Module):
    """``[n, c, dim] → [n]`` (one head) or ``[n, heads]`` from the even scalars; ``hidden``
    sizes give an MLP (empty: linear).

    A single bias-free head keeps the plain :class:`MLP` (state-dict name ``mlp``); several
    heads or biases use :class:`HeadMLP` (``heads_mlp``)."""

    def __init__(
        self,
        irreps: tuple[Irrep, ...],
        channels: int,
        hidden: list[int],
        dtype: torch.dtype | None = None,
        heads: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if Irrep(0, 1) not in irreps:
            raise ValueError("a readout needs even scalars (0e) among the features")
        self.scalar_index = sum(ir.dim for ir in irreps[: irreps.index(Irrep(0, 1))])
        self.num_heads = heads
        sizes = [channels, *hidden, 1]
        if heads == 1 and not bias:
            self.mlp: MLP | None = MLP(sizes, dtype)
            self.heads_mlp: HeadMLP | None = None
        else:
            self.mlp = None
            self.heads_mlp = HeadMLP(sizes, heads, bias, dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h[:, :, self.scalar_index]
        if self.mlp is not None:
            return self.mlp(x).squeeze(-1)
        assert self.heads_mlp is not None
        out = self.heads_mlp(x)
        return out.squeeze(-1) if self.num_heads == 1 else out
