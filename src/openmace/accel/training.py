"""Pooled edge messages for training: the compiled kernels, with a first and a second derivative.

Training fits forces, ``F = -∂E/∂r``, so the gradient of the loss differentiates the model
twice. The reference (:class:`openmace.model.interaction.EdgeMessages`) leaves both derivatives
to autograd's generic formulas on edge-sized tensors: on rMD17 aspirin 69 % of a training step
was that double backward (benchmarks/README.md, "Where a training step's time goes").

The pooled messages of eq. 8 are linear in each of the node features ``x``, the harmonics ``Y``
and the radial weights ``W`` (the radial MLP's output). With the gradient ``g`` arriving at the
pooled messages,

    Φ(g, W, Y, x) = Σ_e g[receiver_e] · (W_e ⊗_CG Y_e ⊗ x[sender_e])

is linear in each of its four arguments. The forward pass is ``∂Φ/∂g`` (the kernel
``pooled_forward``, written F below), the backward pass the three other partial derivatives
(``pooled_backward``, B: ``∂Φ/∂x``, ``∂Φ/∂Y``, ``∂Φ/∂W`` in one pass over the edges). The
backward pass's own derivative, with incoming gradients ``δx, δY, δW`` of those three outputs,
is the derivative of

    L = Φ(g, W, Y, δx) + Φ(g, W, δY, x) + Φ(g, δW, Y, x),

which consists of the same two kernels with arguments substituted:

    ∂L/∂g = F(W, Y, δx) + F(W, δY, x) + F(δW, Y, x)
    ∂L/∂x = B_x(g, W, δY) + B_x(g, δW, Y)
    ∂L/∂Y = B_Y(g, W, δx) + B_Y(g, δW, x)
    ∂L/∂W = B_W(g, Y, δx) + B_W(g, δY, x)

(three forward and three backward kernel calls, each backward call giving two of the terms).
The radial MLP, the envelope and everything else stay in autograd. A third derivative is not
provided: asking for one (``create_graph=True`` through the backward of the backward) raises.

:class:`TrainingMessages` is the swap of :func:`openmace.accel.for_training`; it registers the
reference's ``tensor_product`` and ``radial_mlp`` under the same names (the state dict does not
change) and keeps the reference (unregistered) for :func:`openmace.accel.for_inference`.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch
from torch import nn

from openmace.accel.messages import _scatter_copies
from openmace.kernels import cpu_kernels
from openmace.model.interaction import EdgeMessages, paired_edge_count, receiver_rows


class KernelPlan(NamedTuple):
    """What the autograd Functions need: the compiled kernels and the coupling in their form."""

    kernels: ModuleType
    sparse_cg: tuple[torch.Tensor, ...]
    dim_mid: int
    receivers: int  # rows of the pooled messages (-1: every atom)


def _pairs(w: torch.Tensor, sh: torch.Tensor) -> int:
    return paired_edge_count(w.shape[0], sh.shape[0])


def _forward(plan: KernelPlan, x, sh, w, sender, receiver) -> torch.Tensor:
    """F: pooled messages ``[plan.receivers, dim_mid, c]`` (-1: all ``n``) of node features
    ``x [n, dim_in, c]``, harmonics ``sh [e, dim_sh]`` and radial weights ``w [rows, paths, c]``."""
    x, sh, w = x.contiguous(), sh.contiguous(), w.contiguous()
    parts = _scatter_copies(x, plan.dim_mid, w.shape[0])
    pooled = x.new_zeros((parts, receiver_rows(plan.receivers, x), plan.dim_mid, x.shape[2]))
    plan.kernels.pooled_forward(
        pooled, x, sh, w, sender, receiver, 0, _pairs(w, sh), *plan.sparse_cg
    )
    return pooled[0] if parts == 1 else pooled.sum(0)


def _backward(plan: KernelPlan, g, x, sh, w, sender, receiver):
    """B: ``(∂Φ/∂x, ∂Φ/∂Y, ∂Φ/∂W)`` for the gradient ``g [plan.receivers, dim_mid, c]``."""
    g, x, sh, w = g.contiguous(), x.contiguous(), sh.contiguous(), w.contiguous()
    parts = _scatter_copies(x, x.shape[1], w.shape[0])
    grad_x = x.new_zeros((parts, *x.shape))
    grad_sh = torch.zeros_like(sh)
    grad_w = torch.empty_like(w)
    plan.kernels.pooled_backward(
        grad_x, grad_sh, grad_w, x, sh, w, sender, receiver, 0, _pairs(w, sh), *plan.sparse_cg, g
    )
    return (grad_x[0] if parts == 1 else grad_x.sum(0)), grad_sh, grad_w


def _total(terms: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [t for t in terms if t is not None]
    if not present:
        return None
    total = present[0]
    for t in present[1:]:
        total = total + t
    return total


class KernelMessages(torch.autograd.Function):
    """``(x [n, dim_in, c], Y [e, dim_sh], W [rows, paths, c]) → pooled [receivers, dim_mid, c]``
    (``P = e - rows`` > 0: edge ``i + P`` is edge ``i`` reversed for ``i < P`` and shares its
    radial weights: interaction.edge_segments)."""

    @staticmethod
    def forward(ctx, x, sh, w, sender, receiver, plan: KernelPlan):  # type: ignore[override]
        ctx.save_for_backward(x, sh, w, sender, receiver)
        ctx.plan = plan
        return _forward(plan, x, sh, w, sender, receiver)

    @staticmethod
    def backward(ctx, grad_pooled):  # type: ignore[override]
        x, sh, w, sender, receiver = ctx.saved_tensors
        grads = KernelMessagesBackward.apply(grad_pooled, x, sh, w, sender, receiver, ctx.plan)
        return (*grads, None, None, None)


class KernelMessagesBackward(torch.autograd.Function):
    """B as a differentiable function of ``(g, x, Y, W)`` (its derivative: module docstring)."""

    @staticmethod
    def forward(ctx, g, x, sh, w, sender, receiver, plan: KernelPlan):  # type: ignore[override]
        ctx.save_for_backward(g, x, sh, w, sender, receiver)
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        return _backward(plan, g, x, sh, w, sender, receiver)

    @staticmethod
    def backward(ctx, dx, dsh, dw):  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(
                "third derivatives of the edge messages are not provided by the training "
                "kernels: evaluate the reference model (without openmace.accel.for_training)"
            )
        g, x, sh, w, sender, receiver = ctx.saved_tensors
        plan = ctx.plan
        need_g, need_x, need_sh, need_w = ctx.needs_input_grad[:4]
        edges = (sender, receiver)
        grad_g = None
        if need_g:
            grad_g = _total(
                [
                    _forward(plan, dx, sh, w, *edges) if dx is not None else None,
                    _forward(plan, x, dsh, w, *edges) if dsh is not None else None,
                    _forward(plan, x, sh, dw, *edges) if dw is not None else None,
                ]
            )
        # B(g, δx, Y, W) → (·, ∂/∂Y Φ(g, W, Y, δx), ∂/∂W Φ(g, W, Y, δx)), and so on
        b_dx = b_dsh = b_dw = None
        if dx is not None and (need_sh or need_w):
            b_dx = _backward(plan, g, dx, sh, w, *edges)
        if dsh is not None and (need_x or need_w):
            b_dsh = _backward(plan, g, x, dsh, w, *edges)
        if dw is not None and (need_x or need_sh):
            b_dw = _backward(plan, g, x, sh, dw, *edges)
        grad_x = _total([b_dsh and b_dsh[0], b_dw and b_dw[0]]) if need_x else None
        grad_sh = _total([b_dx and b_dx[1], b_dw and b_dw[1]]) if need_sh else None
        grad_w = _total([b_dx and b_dx[2], b_dsh and b_dsh[2]]) if need_w else None
        return grad_g, grad_x, grad_sh, grad_w, None, None, None


class TrainingMessages(nn.Module):
    """The swap of :class:`EdgeMessages` for training on CPUs: the radial MLP (and envelope) by
    autograd, the pooled sum by :class:`KernelMessages` (compiled kernels with a first and a
    second derivative). Other devices and dtypes use the reference."""

    def __init__(self, reference: EdgeMessages) -> None:
        super().__init__()
        self.tensor_product = reference.tensor_product
        self.radial_mlp = reference.radial_mlp
        self.channels = reference.channels
        self.edge_chunk = reference.edge_chunk
        self._reference = (reference,)  # a tuple: not registered as a child module

    @property
    def reference(self) -> EdgeMessages:
        return self._reference[0]

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
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return self.reference(x, sh, radial, sender, receiver, cutoff, receivers)
        tp = self.tensor_product
        weights = self.radial_mlp(radial)
        if cutoff is not None:
            weights = weights * cutoff
        weights = weights.reshape(radial.shape[0], tp.num_paths, self.channels)
        kernels = cpu_kernels()  # built (or loaded) once per process; not kept: deep copies
        if kernels is None:
            return self.reference(x, sh, radial, sender, receiver, cutoff, receivers)
        plan = KernelPlan(kernels, tp.sparse_cg(), tp.dim_mid, receivers)
        return KernelMessages.apply(
            x, sh, weights, sender.contiguous(), receiver.contiguous(), plan
        )

    def pooled(self, *args, **kwargs) -> torch.Tensor:
        return self.reference.pooled(*args, **kwargs)

    def working_memory(self, num_atoms: int, num_edges: int, itemsize: int) -> int:
        return self.reference.working_memory(num_atoms, num_edges, itemsize)

    def unfused_weights_memory(self, num_edges: int, itemsize: int) -> int:
        return self.reference.unfused_weights_memory(num_edges, itemsize)
