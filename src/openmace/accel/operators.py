"""Swaps that call the compiled kernels as PyTorch operators (``torch.ops.openmace.*``,
registered by ``kernels/ops.cpp``), so that a TorchScript export runs them: what the LAMMPS
model file uses (``openmace export --lammps``), in Python and in the C++ plugin, which compiles
the same kernel sources.

* :class:`OperatorMessages` (for :class:`EdgeMessages`): the radial MLP (and envelope) in
  PyTorch operations, the pooled sums of eq. 8 by ``openmace::pooled_messages``;
  :class:`FusedOperatorMessages` where the radial MLP is a plain
  :class:`openmace.model.radial.MLP`: the MLP inside ``openmace::pooled_messages_mlp``, its
  wide last layer chunk by chunk.
* :class:`OperatorContraction` (for :class:`SymmetricContraction`): every element's weights
  contracted once at conversion (a scripted module cannot grow a cache), the contraction by
  ``openmace::symmetric_contraction``.

Both give first derivatives (forces, stress) through the operators' hand-written backward
kernels; second derivatives are refused by the operators (use the ``"reference"`` swap).
CPU tensors only, float32 or float64.
"""

import torch
from torch import nn

from openmace.model.interaction import EdgeMessages, paired_edge_count
from openmace.model.product import SymmetricContraction
from openmace.o3 import ElementGroups


class OperatorMessages(nn.Module):
    """:class:`EdgeMessages` through ``torch.ops.openmace.pooled_messages`` (frozen weights)."""

    def __init__(self, reference: EdgeMessages) -> None:
        super().__init__()
        tp = self.tensor_product = reference.tensor_product  # the interaction reads it
        self.radial_mlp = reference.radial_mlp
        self.channels = reference.channels
        self.num_paths = tp.num_paths
        names = ("slot_start", "slot_path", "nz_sh", "nz_in", "nz_val")
        for name, value in zip(names, tp.sparse_cg()):
            self.register_buffer(name, value.clone(), persistent=False)

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
        weights = self.radial_mlp(radial)
        if cutoff is not None:
            weights = weights * cutoff
        rows = weights.shape[0]
        pairs = paired_edge_count(rows, sh.shape[0])
        return torch.ops.openmace.pooled_messages(
            x,
            sh,
            weights.reshape(rows, self.num_paths, self.channels),
            sender,
            receiver,
            pairs,
            self.slot_start,
            self.slot_path,
            self.nz_sh,
            self.nz_in,
            self.nz_val,
            receivers,
        )


class FusedOperatorMessages(OperatorMessages):
    """:class:`OperatorMessages` for a radial MLP of plain layers (``MLP``): the MLP inside
    ``torch.ops.openmace.pooled_messages_mlp``, which keeps only its hidden pre-activations
    and makes the wide last layer's output chunk by chunk, forward and again backward (as the
    calculator's compiled path does): the radial weights ``[rows, paths · channels]`` are never
    held whole, and no autograd graph of the MLP is kept (LAMMPS memory per atom then matches
    the calculator's)."""

    def __init__(self, reference: EdgeMessages) -> None:
        super().__init__(reference)
        # fan-in normalisation and the activation's scale folded into the weights:
        # act(z) W = silu(z) (s W), so the operator's activation is the plain SiLU
        mlp = reference.radial_mlp
        scales = [1.0] + [float(mlp.act.scale)] * (len(mlp.weights) - 1)
        scaled = [(w * (w.shape[0] ** -0.5 * s)).detach() for w, s in zip(mlp.weights, scales)]
        hidden = [w.reshape(-1) for w in scaled[:-1]]
        flat = torch.cat(hidden) if hidden else scaled[-1].new_zeros(0)
        self.register_buffer("hidden_weights", flat.clone(), persistent=False)
        self.register_buffer("last_matrix", scaled[-1].clone(), persistent=False)
        self.sizes: list[int] = list(mlp.sizes)
        self.act_scale = 1.0
        # 0: the operator keeps the radial weights for the backward pass when they take at most
        # KEEP_WEIGHTS_BYTES, else makes them in chunks of FUSED_CHUNK_BYTES, forward and again
        # backward; their gradient is made in such chunks either way (openmace.kernels.limits,
        # as the calculator's compiled path). Tests set a few rows: > 0 chunks of that many rows
        # not kept, < 0 kept and the gradient in chunks of that many rows
        self.chunk_rows = 0

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
        pairs = paired_edge_count(radial.shape[0], sh.shape[0])
        return torch.ops.openmace.pooled_messages_mlp(
            x,
            sh,
            radial,
            cutoff,
            sender,
            receiver,
            self.hidden_weights,
            self.sizes,
            self.last_matrix,
            self.act_scale,
            pairs,
            self.slot_start,
            self.slot_path,
            self.nz_sh,
            self.nz_in,
            self.nz_val,
            self.chunk_rows,
            receivers,
        )


class OperatorContraction(nn.Module):
    """:class:`SymmetricContraction` through ``torch.ops.openmace.symmetric_contraction``, with
    the weights of all the model's elements contracted at conversion."""

    def __init__(self, reference: SymmetricContraction) -> None:
        super().__init__()
        from openmace.accel.contraction import CompiledContraction

        compiled = CompiledContraction(reference, kernels=None)  # only its weight layout
        compiled._contract(list(range(reference.num_elements)))  # slot k = element index k
        self.register_buffer("kernel_weights", compiled.kernel_weights, persistent=False)
        for name in ("first", "dst", "src", "last", "pos"):
            self.register_buffer(name, getattr(compiled, name), persistent=False)
        self.rows = compiled.rows

    def forward(self, a: torch.Tensor, groups: ElementGroups) -> torch.Tensor:
        out = torch.ops.openmace.symmetric_contraction(
            a.transpose(1, 2).contiguous(),  # [n, dim, c]: channels in SIMD lanes
            groups.species,
            self.kernel_weights,
            self.first,
            self.dst,
            self.src,
            self.last,
            self.pos,
            self.rows,
        )
        return out.transpose(1, 2)  # [n, c, M]


class OperatorHalo(nn.Module):
    """:class:`openmace.model.halo.HaloExchange` through ``torch.ops.openmace.halo_exchange``:
    inside LAMMPS the copies' features come from their owning MPI ranks (and their gradients go
    back to them); elsewhere it gathers by ``owners`` as the reference does."""

    def forward(self, h: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
        return torch.ops.openmace.halo_exchange(h, owners)
