"""Interaction block: A-features (paper eq. 8, eq. 9 for the first layer).

    A_i = Linear( Σ_{j ∈ N(i)} R(r_ij) ⊗_CG Y(r̂_ij) ⊗ Linear_up(h_j) ) / avg_num_neighbors

plus the element-dependent self-connection of eq. 12. In a residual block it acts on the block's
input features and is added after the product block; in the non-residual first block it acts on
the A-features themselves (mace-torch's ``RealAgnosticInteractionBlock``).
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.model.edge_messages import PooledMessages, pair_offsets
from openmace.model.radial import MLP
from openmace.o3 import (
    ChannelwiseTensorProduct,
    ElementGroups,
    ElementLinear,
    EquivariantLinear,
    Irrep,
)

EDGE_CHUNK_NUMBERS = 1 << 21  # numbers per edge-chunk tensor: 16 MiB in float64


class InteractionBlock(nn.Module):
    def __init__(
        self,
        irreps_in: tuple[Irrep, ...],
        irreps_sh: tuple[Irrep, ...],
        irreps_target: tuple[Irrep, ...],
        irreps_skip_out: tuple[Irrep, ...],
        channels: int,
        num_radial: int,
        radial_mlp: list[int],
        num_elements: int,
        avg_num_neighbors: float,
        residual: bool,
    ) -> None:
        super().__init__()
        self.irreps_in, self.irreps_target = irreps_in, irreps_target
        self.channels = channels
        self.dims_in = [ir.dim for ir in irreps_in]
        self.avg_num_neighbors = avg_num_neighbors
        self.residual = residual
        self.linear_up = EquivariantLinear(
            [(channels, ir) for ir in irreps_in], irreps_in, channels
        )
        self.tensor_product = ChannelwiseTensorProduct(irreps_in, irreps_sh, irreps_target)
        self.radial_mlp_sizes = [num_radial, *radial_mlp, self.tensor_product.num_paths * channels]
        self.radial_mlp = MLP(self.radial_mlp_sizes)
        # edges are processed in chunks: per-edge tensors ([edges, channels, dim_mid] is the
        # largest) stay small enough for malloc to reuse freed blocks instead of mapping fresh
        # pages from the kernel for every temporary (on 1000-atom cells that cost more than
        # the arithmetic: 14.6 s → 6.1 s for Cu 1000 atoms, small model, 1 thread)
        per_edge = channels * (self.tensor_product.dim_mid + self.tensor_product.num_paths)
        self.edge_chunk = max(256, EDGE_CHUNK_NUMBERS // per_edge)
        # scratch buffers of the inference edge messages, kept between calls (edge_messages.py)
        self.workspaces: dict = {}
        self.linear = EquivariantLinear(
            [(n * channels, ir) for n, ir in self.tensor_product.irreps_mid],
            irreps_target,
            channels,
        )
        if residual:
            self.skip = ElementLinear(irreps_in, channels, irreps_skip_out, channels, num_elements)
        else:
            self.skip = ElementLinear(
                irreps_target, channels, irreps_target, channels, num_elements
            )

    def forward(
        self,
        h: torch.Tensor,
        groups: ElementGroups,
        sh: torch.Tensor,
        radial: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``h [n, c, dim_in]`` → (A-features ``[n, c, dim_target]``, residual or None).

        ``radial`` holds the radial features of every edge, or of the first half of the edges
        only when the second half are their reverses in the same order (same lengths)."""
        residual: torch.Tensor | None = None
        if self.residual:
            residual = self.skip(h, groups)
        x = self.linear_up(h.split(self.dims_in, dim=-1))
        x = x.transpose(1, 2).contiguous()  # [n, dim_in, c]: channels last for the edges
        if torch.jit.is_scripting():
            pooled = self.messages_autograd(x, sh, radial, sender, receiver)
        else:
            pooled = self._messages_eager(x, sh, radial, sender, receiver)
        a = self.linear(self.tensor_product.split_mid(pooled)) / self.avg_num_neighbors
        if not self.residual:
            a = self.skip(a, groups)
        return a, residual

    def messages_autograd(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        radial: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
    ) -> torch.Tensor:
        """Pooled messages ``Σ_j R ⊗ Y ⊗ x_j`` (eq. 8, before the linear) ``[n, mid, c]`` with
        differentiable operations: training, TorchScript and second derivatives."""
        pooled = x.new_zeros((x.shape[0], self.tensor_product.dim_mid, self.channels))
        chunk = self.edge_chunk
        num_radial = radial.shape[0]
        # radial rows for half the edges: edge e and its reverse e + num_radial share them
        offsets = pair_offsets(num_radial, sender.shape[0])
        for start in range(0, num_radial, chunk):
            stop = min(start + chunk, num_radial)
            weights = self.radial_mlp(radial[start:stop]).view(
                stop - start, self.tensor_product.num_paths, self.channels
            )
            for offset in offsets:
                a, b = start + offset, stop + offset
                messages = self.tensor_product(x[sender[a:b]], sh[a:b], weights)
                pooled.index_add_(0, receiver[a:b], messages)
        return pooled

    @torch.jit.unused
    def _messages_eager(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        radial: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
    ) -> torch.Tensor:
        """Training (weights that need gradients): :meth:`messages_autograd`; inference: the
        same with workspace buffers and a hand-written backward (edge_messages.py)."""
        if not self.uses_inference_path():
            return self.messages_autograd(x, sh, radial, sender, receiver)
        return PooledMessages.apply(x, sh, radial, sender, receiver, self)

    @torch.jit.unused
    def uses_inference_path(self) -> bool:
        """True when no radial weight needs a gradient: the edge messages then run in
        edge_messages.py (the memory estimate asks the same question)."""
        return not any(w.requires_grad for w in self.radial_mlp.weights)
