"""Interaction block: A-features (paper eq. 8, eq. 9 for the first layer).

    A_i = Linear( Σ_{j ∈ N(i)} R(r_ij) ⊗_CG Y(r̂_ij) ⊗ Linear_up(h_j) ) / avg_num_neighbors

plus the element-dependent self-connection of eq. 12. In a residual block it acts on the block's
input features and is added after the product block; in the non-residual first block it acts on
the A-features themselves (mace-torch's ``RealAgnosticInteractionBlock``).

Three kinds of block (``MACEConfig.interaction``), one class:

* ``standard``: the sum divided by ``avg_num_neighbors`` (above).
* ``density``: divided by ``1 + ρ_i`` instead, ``ρ_i = Σ_j tanh((R(r_ij) · w)²)`` a learned edge
  density (mace-torch's ``RealAgnosticDensity[Residual]InteractionBlock``).
* ``nonlinear``: the radial MLP (Linear+bias, LayerNorm, SiLU) also reads learned embeddings of
  the sender's and receiver's elements; the sum is divided by ``α + β ρ_i`` (learned α, β; ρ from
  a second such MLP), a linear map of the sent features is added, then a gated non-linearity
  (SiLU on scalars, sigmoid gates on l > 0) and a linear map; the self-connection is a plain
  linear map (mace-torch's ``RealAgnosticResidualNonLinearInteractionBlock``).

The features sent along edges may have their own irreps and channels (``edge_irreps``).

The sum over neighbours (:class:`EdgeMessages`) is the operator that
:func:`openmace.accel.for_inference` swaps for a fast implementation.
"""

from __future__ import annotations

import torch
from torch import nn

from openmace.model.memory import TRAINING_MEMORY_FACTOR
from openmace.model.radial import MLP, LayerNormMLP, sigmoid_normalisation, silu_normalisation
from openmace.o3 import (
    ChannelwiseTensorProduct,
    ElementGroups,
    ElementLinear,
    EquivariantLinear,
    Irrep,
    irreps_dim,
)

EDGE_CHUNK_NUMBERS = 1 << 21  # numbers per edge-chunk tensor: 16 MiB in float64


def paired_edge_count(num_radial: int, num_edges: int) -> int:
    """``P = E - R``: with ``R`` radial rows for ``E`` edges, edges ``0..P`` and ``P..2P`` are
    reversed halves sharing rows ``0..P``, and each edge after them has a row of its own (the
    one declaration of this layout; :func:`edge_segments`)."""
    return num_edges - num_radial


def edge_segments(
    start: int, stop: int, num_radial: int, num_edges: int
) -> list[tuple[int, int, int, bool]]:
    """The edges of radial rows ``start:stop`` as ``(row_start, row_stop, offset, reverse)``:
    row ``r`` of a segment serves edge ``r + offset``. With ``R`` radial rows for ``E`` edges
    the first ``P = E - R`` rows serve a pair each, edge ``r`` and its reverse ``r + P``, the
    others one edge each, ``r + P`` (:func:`openmace.data.graph.radial_rows`: all edges in
    reversed halves, ``P = R``; none paired, ``P = 0``; a LAMMPS domain's own pairs then
    one-way edges). The segments that are not ``reverse`` cover ``start:stop`` once."""
    pairs = paired_edge_count(num_radial, num_edges)
    segments: list[tuple[int, int, int, bool]] = []
    paired_stop = min(stop, pairs)
    if start < paired_stop:
        segments.append((start, paired_stop, 0, False))
        segments.append((start, paired_stop, pairs, True))
    single_start = max(start, pairs)
    if single_start < stop:
        segments.append((single_start, stop, pairs, False))
    return segments


def receiver_rows(receivers: int, x: torch.Tensor) -> int:
    """Rows of the pooled messages: ``receivers`` (the edges end on atoms ``0..receivers-1``,
    a domain's own atoms), or every atom of ``x`` for -1."""
    return x.shape[0] if receivers < 0 else receivers


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
        num_radial: radial features per edge (Bessel functions, and element embeddings in the
            nonlinear block).
        radial_mlp: hidden sizes of the radial MLP.
        layer_norm: the radial MLP is a :class:`LayerNormMLP` (nonlinear block) instead of the
            bias-free :class:`MLP`.
        dtype: dtype of weights and coefficients.

    ``cutoff`` (``apply_cutoff=False`` models): the envelope per radial row, multiplying the
    MLP's output instead of its input.
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
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.tensor_product = ChannelwiseTensorProduct(irreps_in, irreps_sh, irreps_target, dtype)
        sizes = [num_radial, *radial_mlp, self.tensor_product.num_paths * channels]
        self.radial_mlp = LayerNormMLP(sizes, dtype) if layer_norm else MLP(sizes, dtype)
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
        cutoff: torch.Tensor | None = None,
        receivers: int = -1,
    ) -> torch.Tensor:
        """``x [n, dim_in, c]``, ``Y [e, dim_sh]``, ``radial [rows, num_radial]`` →
        ``[receivers, dim_mid, c]`` (all ``n`` atoms for -1; every receiver below it). With
        fewer radial rows than edges the first ``e - rows`` edges are paired: edge
        ``i + e - rows`` is edge ``i`` reversed and shares its radial weights
        (:func:`edge_segments`: the graphs of :mod:`openmace.data.graph`, all paired, and a
        LAMMPS domain's, paired then one way)."""
        return self.pooled(x, sh, radial, sender, receiver, cutoff, True, receivers)

    def pooled(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        radial: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
        cutoff: torch.Tensor | None,
        apply_mlp: bool,
        receivers: int = -1,
    ) -> torch.Tensor:
        """:meth:`forward`; with ``apply_mlp=False`` ``radial`` holds the radial weights
        ``[rows, paths · c]`` themselves (the inference swap computes them separately)."""
        tp = self.tensor_product
        pooled = x.new_zeros((receiver_rows(receivers, x), tp.dim_mid, self.channels))
        chunk = self.edge_chunk
        num_radial = radial.shape[0]
        for start in range(0, num_radial, chunk):
            stop = min(start + chunk, num_radial)
            weights = radial[start:stop]
            if apply_mlp:
                weights = self.radial_mlp(weights)
            if cutoff is not None:
                weights = weights * cutoff[start:stop]
            weights = weights.reshape(stop - start, tp.num_paths, self.channels)
            for r0, r1, offset, _ in edge_segments(start, stop, num_radial, sender.shape[0]):
                a, b = r0 + offset, r1 + offset
                messages = tp(x[sender[a:b]], sh[a:b], weights[r0 - start : r1 - start])
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

    def unfused_weights_memory(self, num_edges: int, itemsize: int) -> int:
        """Bytes of radial weights computed per edge outside :meth:`pooled` (the nonlinear
        block: its radial input, the MLP's layers and output, their gradients)."""
        numbers = 2 * sum(self.radial_mlp.sizes) + self.tensor_product.num_paths * self.channels
        return int(num_edges * numbers * itemsize * TRAINING_MEMORY_FACTOR)


class Gate(nn.Module):
    """Gated equivariant non-linearity: ``[SiLU(s), σ(g_1) v_1, σ(g_2) v_2, ...]`` with ``s``
    the scalars, ``g_k`` one gate per channel of each ``l > 0`` irrep ``v_k`` (both
    activations normalised to unit second moment, as e3nn's ``Gate``)."""

    def __init__(self, irreps: tuple[Irrep, ...], channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.num_gated = len(irreps) - 1
        self.dims = [ir.dim for ir in irreps[1:]]
        self.silu_scale = silu_normalisation()
        self.gate_scale = sigmoid_normalisation()

    def forward(self, scalars: torch.Tensor, gated: torch.Tensor) -> torch.Tensor:
        """``scalars [n, c · (1 + gated irreps)]`` (the scalars, then the gates of each gated
        irrep), ``gated [n, c, dim_gated]`` → ``[n, c, 1 + dim_gated]``."""
        c = self.channels
        out = [torch.nn.functional.silu(scalars[:, :c]).unsqueeze(-1) * self.silu_scale]
        gates = torch.sigmoid(scalars[:, c:]) * self.gate_scale
        for k, part in enumerate(gated.split(self.dims, dim=-1)):
            out.append(part * gates[:, k * c : (k + 1) * c].unsqueeze(-1))
        return torch.cat(out, dim=-1)


def _paired_rows(rows: torch.Tensor, num_edges: int) -> torch.Tensor:
    """Per-edge values from per-radial-row values: with ``R`` rows and ``E`` edges, the first
    ``P = E - R`` rows serve the ``P`` paired edges and again their reverses, the rest one
    edge each (:func:`openmace.data.graph.radial_rows` is the inverse)."""
    pairs = paired_edge_count(rows.shape[0], num_edges)
    if pairs == 0:
        return rows
    return torch.cat([rows[:pairs], rows], dim=0)


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
        kind: ``"standard"``, ``"density"`` or ``"nonlinear"`` (module docstring).
        irreps_edge: irreps of the features sent along edges (default ``irreps_in``).
        edge_channels: their channels (default ``channels``).
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
        kind: str = "standard",
        irreps_edge: tuple[Irrep, ...] | None = None,
        edge_channels: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("standard", "density", "nonlinear"):
            raise ValueError(f"unknown interaction {kind!r}")
        if kind == "nonlinear" and not residual:
            raise ValueError("the nonlinear interaction block is residual")
        irreps_edge = tuple(irreps_edge or irreps_in)
        edge_channels = edge_channels or channels
        self.irreps_in, self.irreps_target = irreps_in, irreps_target
        self.kind = kind
        self.channels = channels
        self.dims_in = [ir.dim for ir in irreps_in]
        self.dims_edge = [ir.dim for ir in irreps_edge]
        self.dims_target = [ir.dim for ir in irreps_target]
        self.avg_num_neighbors = avg_num_neighbors
        self.residual = residual
        self.num_elements = num_elements
        self.linear_up = EquivariantLinear(
            [(channels, ir) for ir in irreps_in], irreps_edge, edge_channels, dtype
        )
        nonlinear = kind == "nonlinear"
        radial_in = num_radial + (2 * channels if nonlinear else 0)
        self.messages = EdgeMessages(
            irreps_edge,
            irreps_sh,
            irreps_target,
            edge_channels,
            radial_in,
            radial_mlp,
            dtype,
            layer_norm=nonlinear,
        )
        mid = [(n * edge_channels, ir) for n, ir in self.messages.tensor_product.irreps_mid]
        # the learned edge density of the density and nonlinear blocks
        self.density: nn.Module | None = None
        if kind == "density":
            self.density = MLP([num_radial, 1], dtype)
        elif nonlinear:
            self.density = LayerNormMLP([radial_in, 64, 1], dtype)
        self.linear: EquivariantLinear | None = None
        self.skip: ElementLinear | None = None
        self.plain_skip: EquivariantLinear | None = None
        self.gate: Gate | None = None
        if not nonlinear:
            self.linear = EquivariantLinear(mid, irreps_target, channels, dtype)
            skip_in = irreps_in if residual else irreps_target
            skip_out = irreps_skip_out if residual else irreps_target
            self.skip = ElementLinear(skip_in, channels, skip_out, channels, num_elements, dtype)
            return
        if irreps_target[0] != Irrep(0, 1) or any(ir.l == 0 for ir in irreps_target[1:]):
            raise ValueError("the nonlinear block needs A-features with even scalars only at l=0")
        gated = irreps_target[1:]
        scalar_channels = channels * (1 + len(gated))  # scalars, then one gate per irrep
        scalar = (Irrep(0, 1),)
        edge_blocks = [(edge_channels, ir) for ir in irreps_edge]
        self.source_embedding = nn.Parameter(torch.randn(num_elements, channels, dtype=dtype))
        self.target_embedding = nn.Parameter(torch.randn(num_elements, channels, dtype=dtype))
        self.linear_scalars = EquivariantLinear(mid, scalar, scalar_channels, dtype)
        self.linear_gated = EquivariantLinear(mid, gated, channels, dtype)
        self.residual_scalars = EquivariantLinear(edge_blocks, scalar, scalar_channels, dtype)
        self.residual_gated = EquivariantLinear(edge_blocks, gated, channels, dtype)
        self.gate = Gate(irreps_target, channels)
        self.linear_out = EquivariantLinear(
            [(channels, ir) for ir in irreps_target], irreps_target, channels, dtype
        )
        self.plain_skip = EquivariantLinear(
            [(channels, ir) for ir in irreps_in], irreps_skip_out, channels, dtype
        )
        self.alpha = nn.Parameter(torch.tensor(20.0, dtype=dtype))
        self.beta = nn.Parameter(torch.tensor(0.0, dtype=dtype))

    def forward(
        self,
        h: torch.Tensor,
        groups: ElementGroups,
        sh: torch.Tensor,
        radial: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
        cutoff: torch.Tensor | None = None,
        receiver_groups: ElementGroups | None = None,
        receivers: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``h [n, c, dim_in]`` → (A-features ``[n, c, dim_target]``, residual or None).

        ``radial`` holds the radial features of every edge, or one row per pair when the
        first ``2 P`` edges come in reversed halves, ``P`` = edges - rows (same lengths; the
        edges after them one row each: :func:`edge_segments`); ``cutoff`` (same rows) the
        envelope when it multiplies the radial MLP's output.
        ``receiver_groups``: the first atoms only (a domain's own atoms, which the edges end
        on): A-features and residual are then computed for them alone. ``receivers``: the
        edges end on atoms ``0..receivers-1`` (-1: any atom), whose messages are summed."""
        own = groups if receiver_groups is None else receiver_groups
        local = own.species.shape[0]
        h_own = h if local == h.shape[0] else h[:local]
        residual: torch.Tensor | None = None
        if self.residual:
            if self.plain_skip is not None:
                residual = self.plain_skip(h_own.split(self.dims_in, dim=-1))
            elif self.skip is not None:
                residual = self.skip(h_own, own)
        x = self.linear_up(h.split(self.dims_in, dim=-1))  # [n, c_edge, dim_edge]
        num_nodes, num_edges = h.shape[0], sender.shape[0]
        if self.gate is not None:  # nonlinear: per-edge radial input with element embeddings
            norm = self.num_elements**-0.5
            source = (self.source_embedding * norm)[groups.species][sender]
            target = (self.target_embedding * norm)[groups.species][receiver]
            radial = torch.cat([_paired_rows(radial, num_edges), source, target], dim=-1)
            if cutoff is not None:
                cutoff = _paired_rows(cutoff, num_edges)
        xt = x.transpose(1, 2).contiguous()  # [n, dim_edge, c_edge]: channels last for edges
        receivers = receiver_rows(receivers, h)
        pooled = self.messages(xt, sh, radial, sender, receiver, cutoff, receivers)
        density = self._density(radial, cutoff, receiver, receivers, num_edges)
        if local != receivers:  # messages to copies of atoms: not needed
            pooled = pooled[:local]
            density = density if density is None else density[:local]
        if local != num_nodes:
            x = x[:local]
        mid = self.messages.tensor_product.split_mid(pooled)
        if self.gate is not None:
            assert density is not None  # the nonlinear block has an edge density
            denominator = (density * self.beta + self.alpha).view(-1, 1)
            edge_blocks = x.split(self.dims_edge, dim=-1)
            scalars = self.linear_scalars(mid).squeeze(-1) / denominator
            scalars = scalars + self.residual_scalars(edge_blocks).squeeze(-1)
            gated = self.linear_gated(mid) / denominator.unsqueeze(-1)
            gated = gated + self.residual_gated(edge_blocks)
            a = self.gate(scalars, gated)
            return self.linear_out(a.split(self.dims_target, dim=-1)), residual
        assert self.linear is not None and self.skip is not None
        if density is not None:
            a = self.linear(mid) / (density + 1.0).view(-1, 1, 1)
        else:
            a = self.linear(mid) / self.avg_num_neighbors
        if not self.residual:
            a = self.skip(a, own)
        return a, residual

    def _density(
        self,
        radial: torch.Tensor,
        cutoff: torch.Tensor | None,
        receiver: torch.Tensor,
        num_nodes: int,
        num_edges: int,
    ) -> torch.Tensor | None:
        """``ρ_i = Σ_j tanh(d(r_ij)²) [· f_cut(r_ij)]`` per node, or None (standard block)."""
        if self.density is None:
            return None
        edge_density = torch.tanh(self.density(radial) ** 2)
        if cutoff is not None:
            edge_density = edge_density * cutoff
        edge_density = _paired_rows(edge_density, num_edges).squeeze(-1)
        return radial.new_zeros(num_nodes).index_add(0, receiver, edge_density)

    def working_memory(self, num_atoms: int, num_edges: int, itemsize: int) -> int:
        """Bytes of the block's largest intermediates (the edge messages report theirs; the
        nonlinear block also keeps per edge its radial input and weights)."""
        total = self.messages.working_memory(num_atoms, num_edges, itemsize)
        if self.gate is not None:
            total += self.messages.unfused_weights_memory(num_edges, itemsize)
        return int(total)
