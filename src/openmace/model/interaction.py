"""Interaction block: A-features (paper eq. 8, eq. 9 for the first layer).

    A_i = Linear( Σ_{j ∈ N(i)} R(r_ij) ⊗_CG Y(r̂_ij) ⊗ Linear_up(h_j) ) / avg_num_neighbors

plus the element-dependent self-connection of eq. 12. In a residual block it acts on the block's
input features and is added after the product block; in the non-residual first block it acts on
the A-features themselves (mace-torch's ``RealAgnosticInteractionBlock``).

The sum over neighbours (:class:`EdgeMessages`) is the operator that
:func:`openmace.accel.for_inference` swaps for a fast implementation.
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.model.memory import TRAINING_MEMORY_FACTOR
from openmace.model.radial import MLP
from openmace.o3 import (
    ChannelwiseTensorProduct,
    ElementGroups,
    ElementLinear,
    EquivariantLinear,
    Irrep,
    irreps_dim,
)

EDGE_CHUNK_NUMBERS = 1 << 21  # numbers per edge-chunk tensor: 16 MiB in float64


def pair_offsets(num_radial: int, num_edges: int) -> list[int]:
    """Where each chunk of radial rows applies: its edges, and (when the radial rows cover half
    the edges, the second half being the first reversed) also the reverse edges."""
    return [0] if num_radial == num_edges else [0, num_radial]  # [-1]: 0 or the half


class EdgeMessages(nn.Module):
    """Pooled messages of eq. 8 before the linear map, in differentiable operations:

        M_i = Σ_{j ∈ N(i)} R(r_ij) ⊗_CG Y(r̂_ij) ⊗ x_j        →  [nodes, dim_mid, channels]

    with ``R`` the radial MLP of the radial features (one weight per tensor-product path and
    channel) and ``⊗_CG`` the channel-wise tensor product. Edges are processed in chunks of
    ``edge_chunk`` radial rows so that per-edge temporaries stay small.

    Args:
        irreps_in: irreps of the node features ``x``.
        irreps_sh: irreps of the spherical harmonics ``Y``.
        irreps_target: irreps kept from the tensor product.
        channels: channels of ``x``.
        num_radial: radial features per edge (Bessel functions).
        radial_mlp: hidden sizes of the radial MLP.
        dtype: dtype of weights and coefficients.
    """

    def __init__(
        self,
        irreps_in: tuple[Irrep, ...],
        irreps_sh: tuple[Irrep, ...],
        irreps_target: tuple[Irrep, ...],
        channels: int,
        num_radial: int,
        radial_mlp: list[int],
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.tensor_product = ChannelwiseTensorProduct(irreps_in, irreps_sh, irreps_target, dtype)
        sizes = [num_radial, *radial_mlp, self.tensor_product.num_paths * channels]
        self.radial_mlp = MLP(sizes, dtype)
        # per-edge tensors ([edges, channels, dim_mid] is the largest) stay small enough for
        # malloc to reuse freed blocks instead of mapping fresh pages for every temporary
        per_edge = channels * (self.tensor_product.dim_mid + self.tensor_product.num_paths)
        self.edge_chunk = max(256, EDGE_CHUNK_NUMBERS // per_edge)

    def forward(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        radial: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
    ) -> torch.Tensor:
        """``x [n, dim_in, c]``, ``Y [e, dim_sh]``, ``radial [e or e/2, num_radial]`` →
        ``[n, dim_mid, c]``. ``e/2`` radial rows: edge ``i + e/2`` is edge ``i`` reversed (the
        graphs of :mod:`openmace.data.graph`) and shares its radial weights."""
        tp = self.tensor_product
        pooled = x.new_zeros((x.shape[0], tp.dim_mid, self.channels))
        chunk = self.edge_chunk
        num_radial = radial.shape[0]
        offsets = pair_offsets(num_radial, sender.shape[0])
        for start in range(0, num_radial, chunk):
            stop = min(start + chunk, num_radial)
            weights = self.radial_mlp(radial[start:stop]).view(
                stop - start, tp.num_paths, self.channels
            )
            for offset in offsets:
                a, b = start + offset, stop + offset
                messages = tp(x[sender[a:b]], sh[a:b], weights)
                pooled.index_add_(0, receiver[a:b], messages)
        return pooled

    def working_memory(self, num_atoms: int, num_edges: int, itemsize: int) -> int:
        """Bytes autograd keeps per evaluation: per edge the messages, gathered features, radial
        weights and the MLP's layers."""
        tp = self.tensor_product
        dim_in = irreps_dim(tp.irreps_in)
        numbers = num_edges * self.channels * (tp.dim_mid + dim_in + tp.num_paths)
        numbers += num_edges * sum(self.radial_mlp.sizes)
        return int(numbers * itemsize * TRAINING_MEMORY_FACTOR)


class InteractionBlock(nn.Module):
    """A-features of one layer (eq. 8-9) and the self-connection of eq. 12.

    Args:
        irreps_in: irreps of the incoming node features ``h``.
        irreps_sh: irreps of the spherical harmonics.
        irreps_target: irreps of the A-features.
        irreps_skip_out: irreps of the residual (the product block's output irreps).
        channels: channels per irrep.
        num_radial: radial features per edge.
        radial_mlp: hidden sizes of the radial MLP.
        num_elements: elements of the model (the self-connection is per element).
        avg_num_neighbors: the normalisation of the neighbour sum.
        residual: self-connection of ``h`` added after the product block (True), or applied to
            the A-features (False: mace-torch's non-residual first block).
        dtype: dtype of the weights.
    """

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
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.irreps_in, self.irreps_target = irreps_in, irreps_target
        self.channels = channels
        self.dims_in = [ir.dim for ir in irreps_in]
        self.avg_num_neighbors = avg_num_neighbors
        self.residual = residual
        self.linear_up = EquivariantLinear(
            [(channels, ir) for ir in irreps_in], irreps_in, channels, dtype
        )
        self.messages = EdgeMessages(
            irreps_in, irreps_sh, irreps_target, channels, num_radial, radial_mlp, dtype
        )
        self.linear = EquivariantLinear(
            [(n * channels, ir) for n, ir in self.messages.tensor_product.irreps_mid],
            irreps_target,
            channels,
            dtype,
        )
        skip_in = irreps_in if residual else irreps_target
        skip_out = irreps_skip_out if residual else irreps_target
        self.skip = ElementLinear(skip_in, channels, skip_out, channels, num_elements, dtype)

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
        pooled = self.messages(x, sh, radial, sender, receiver)
        a = self.linear(self.messages.tensor_product.split_mid(pooled)) / self.avg_num_neighbors
        if not self.residual:
            a = self.skip(a, groups)
        return a, residual

    def working_memory(self, num_atoms: int, num_edges: int, itemsize: int) -> int:
        """Bytes of the block's largest intermediates (the edge messages report theirs)."""
        return int(self.messages.working_memory(num_atoms, num_edges, itemsize))
