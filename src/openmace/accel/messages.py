"""Pooled edge messages for inference (paper eq. 8), with a hand-written backward.

    M_i = Σ_{j ∈ N(i)} R(r_ij) ⊗ Y(r̂_ij) ⊗ x_j          →  pooled [nodes, dim_mid, channels]

The reference (:class:`openmace.model.interaction.EdgeMessages`) keeps every per-edge
temporary of every edge chunk alive for the backward pass and allocates fresh ones for each
operation; on this kind of machine a fresh 13 MB temporary costs more than the arithmetic done
on it (the kernel hands out zeroed pages). This version has two implementations of the same sums.

On CPUs, when the compiled kernels are available (:mod:`openmace.kernels`), the radial MLP runs
here (once per radial row, i.e. per edge pair when the edges come in reversed halves) and the
kernels do the rest in one pass over the edges forward and one backward, storing nothing per
edge. Otherwise, in PyTorch operations, it

* keeps per edge only the inputs (harmonics ``Y``, radial features), the radial MLP's hidden
  pre-activations and (when they fit in ``KEEP_WEIGHTS_BYTES``) its output; the coupled
  features ``[edges, dim_mid, channels]`` are recomputed chunk by chunk in the backward pass;
* runs in cache-sized chunks, writing every per-edge intermediate into a few workspace buffers
  allocated once per call and reused for every chunk (``out=`` and in-place operations);
* multiplies the radial weights per output irrep block with broadcasting instead of expanding
  them to every output slot.

The backward pass gives the gradients with respect to the node features ``x``, the harmonics
``Y`` and the radial features (through the MLP, by its own chain rule): what forces and stress
need. :class:`InferenceMessages` is the swap of :func:`openmace.accel.for_inference` (frozen
weights); training uses the reference. A second derivative (``create_graph=True``, e.g. a
Hessian) falls back to recomputing the reference, so the result stays exact there too. The
autograd Function receives tensors and a :class:`MessagePlan`, never a module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import NamedTuple

import torch
from torch import nn

from openmace.kernels.limits import FUSED_CHUNK_BYTES, KEEP_WEIGHTS_BYTES
from openmace.model.interaction import (
    EdgeMessages,
    edge_segments,
    paired_edge_count,
    receiver_rows,
)
from openmace.model.radial import MLP, LayerNormMLP
from openmace.o3 import irreps_dim


class MessagePlan(NamedTuple):
    """What the autograd Function needs, frozen: the tensor product's constants, the radial
    MLP's weights (already scaled by ``1/sqrt(fan_in)``), the chunk size, the scratch
    workspaces, the compiled kernels (or None) and the reference for second derivatives."""

    cg_matrix: torch.Tensor  # [dim_sh, dim_mid · dim_in]
    sparse_cg: tuple[torch.Tensor, ...]  # the coupling in the compiled kernels' form
    weight_blocks: list[tuple[int, int, int, int, int]]
    dim_mid: int
    num_paths: int
    mlp_weights: tuple[torch.Tensor, ...]
    act_scale: float
    edge_chunk: int
    workspaces: dict
    kernels: ModuleType | None
    fallback: Callable[..., torch.Tensor]


def _act(plan: MessagePlan, x: torch.Tensor) -> torch.Tensor:
    out = torch.nn.functional.silu(x)
    return out if plan.act_scale == 1.0 else out * plan.act_scale


def _forward_keeping(
    plan: MessagePlan, x: torch.Tensor, keep: list[torch.Tensor], out: torch.Tensor | None = None
) -> torch.Tensor:
    """The radial MLP without autograd, writing each hidden layer's pre-activation into
    ``keep`` (one preallocated tensor per hidden layer) for :func:`_input_gradient`, and the
    result into ``out`` when given."""
    for i, w in enumerate(plan.mlp_weights[:-1]):
        x = _act(plan, torch.mm(x, w, out=keep[i]))
    return _output_from_kept(plan, x, out)


def _output_from_kept(
    plan: MessagePlan, activation: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The MLP's last layer, from the last hidden layer's activation (``act(kept[-1])``)."""
    w = plan.mlp_weights[-1]
    return torch.mm(activation, w) if out is None else torch.mm(activation, w, out=out)


def _input_gradient(
    plan: MessagePlan, kept: list[torch.Tensor], grad_out: torch.Tensor
) -> torch.Tensor:
    """``∂(grad_out · MLP(x)) / ∂x`` from the pre-activations kept by :func:`_forward_keeping`:
    the chain rule layer by layer, no autograd graph."""
    grad = grad_out
    for i in range(len(plan.mlp_weights) - 1, -1, -1):
        grad = grad @ plan.mlp_weights[i].t()
        if i > 0:  # through the normalised SiLU of the layer below
            grad = torch.ops.aten.silu_backward(grad, kept[i - 1])
            if plan.act_scale != 1.0:
                grad = grad * plan.act_scale
    return grad


class _Workspace:
    """Buffers of one chunk's size; views ``[:k]`` serve a shorter chunk."""

    def __init__(self, like: torch.Tensor, rows: int, shapes: dict[str, tuple[int, ...]]) -> None:
        self.rows = rows
        self.buffers = {name: like.new_empty((rows, *shape)) for name, shape in shapes.items()}

    def __call__(self, name: str, k: int) -> torch.Tensor:
        return self.buffers[name][:k]


def _workspace(plan: MessagePlan, x: torch.Tensor, rows: int) -> _Workspace:
    """The module's workspace for this thread, device and dtype, kept from call to call: fresh
    buffers would be page-faulted in by the kernel at every call (benchmarks/README.md, "Design
    measurements"). Only
    scratch lives here (nothing the backward pass needs is kept in it), so the forward and
    backward passes of different calls in one thread may share it."""
    tp, (dim_in, c) = plan, x.shape[1:]
    key = (threading.get_ident(), x.device, x.dtype, dim_in, c)
    work = plan.workspaces.get(key)
    if work is None or work.rows < rows:
        mid = tp.dim_mid
        shapes = {
            "x": (dim_in, c),
            "coupling": (mid * dim_in,),
            "product": (mid, c),
            "grad": (mid, c),
            "grad_weights": (tp.num_paths, c),
            "grad_weights_reverse": (tp.num_paths, c),
            "grad_x": (dim_in, c),
            "grad_coupling": (mid, dim_in),
        }
        work = plan.workspaces[key] = _Workspace(x, rows, shapes)
    return work


def _coupled(
    tp: MessagePlan,
    x: torch.Tensor,
    sh: torch.Tensor,
    sender: torch.Tensor,
    work: _Workspace,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gathered features ``x_j [k, dim_in, c]``, the coupling matrices
    ``Σ_m2 C Y_m2 [k, mid, dim_in]`` and their product ``[k, mid, c]`` (before radial weights)."""
    dim_in = x.shape[1]
    xs = torch.index_select(x, 0, sender, out=work("x", k))
    coupling = torch.mm(sh, tp.cg_matrix, out=work("coupling", k)).view(k, tp.dim_mid, dim_in)
    product = work("product", k)
    if dim_in == 1:  # scalars in (first layer): bmm with an inner size of 1 is a slow loop
        torch.mul(coupling, xs, out=product)
    else:
        torch.bmm(coupling, xs, out=product)
    return xs, coupling, product


def _scale_by_path(tp: MessagePlan, slots: torch.Tensor, weights: torch.Tensor) -> None:
    """``slots [k, mid, c] *= weights [k, paths, c]`` of each slot's path, in place."""
    k, c = slots.shape[0], slots.shape[2]
    for s0, s1, p0, p1, dim in tp.weight_blocks:
        block = slots[:, s0:s1].view(k, p1 - p0, dim, c)
        block.mul_(weights[:, p0:p1].unsqueeze(2))


def _sum_by_path(tp: MessagePlan, slots: torch.Tensor, out: torch.Tensor) -> None:
    """``out [k, paths, c] = Σ_{slots of a path} slots [k, mid, c]``."""
    k, c = slots.shape[0], slots.shape[2]
    for s0, s1, p0, p1, dim in tp.weight_blocks:
        block = slots[:, s0:s1].view(k, p1 - p0, dim, c)
        if dim > 1:
            torch.sum(block, dim=2, out=out[:, p0:p1])
        else:
            out[:, p0:p1].copy_(block.squeeze(2))


# edges per chunk on CPUs: the largest per-edge buffer ([edges, dim_mid, channels]) is kept near
# CACHE_CHUNK_BYTES per thread, and at least MIN_CHUNK_EDGES per thread, so that the chain of
# operations on it runs from the CPU cache (the chunk sizes tried: benchmarks/README.md, "Design
# measurements"). Other devices use the module's (large) edge_chunk.
CACHE_CHUNK_BYTES = 3 << 20
MIN_CHUNK_EDGES = 128


# memory for the compiled kernels' per-thread scatter copies beyond the second copy: on many
# cores a large cell would otherwise hold one copy of the pooled features per core
SCATTER_COPIES_BYTES = 2 << 30
MIN_ROWS_PER_THREAD = 64  # as edge_parts in edge_messages.cpp


def _scatter_copies(x: torch.Tensor, dim: int, rows: int) -> int:
    """Scatter targets for the kernels: one per thread that gets work, within the memory cap
    (two always; the kernels split the rows into at most this many parts)."""
    one_copy = x.shape[0] * dim * x.shape[2] * x.element_size()
    affordable = max(2, SCATTER_COPIES_BYTES // max(one_copy, 1))
    useful = max(1, rows // MIN_ROWS_PER_THREAD)
    return max(1, min(torch.get_num_threads(), useful, affordable))


def _chunk_weights(
    plan: MessagePlan,
    kept: list[torch.Tensor],
    radial: torch.Tensor,
    a: int,
    b: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The radial MLP's output for rows ``a:b`` from the kept last hidden pre-activation (or
    the radial features when the MLP has one layer): the backward passes' recomputation."""
    return _output_from_kept(plan, _act(plan, kept[-1][a:b]) if kept else radial[a:b], out)


def _fused_rows(x: torch.Tensor, width: int) -> int:
    return max(1, FUSED_CHUNK_BYTES // (width * x.element_size()))


_scratch_buffers = threading.local()


def _scratch(like: torch.Tensor, numel: int) -> torch.Tensor:
    """A flat buffer of at least ``numel`` numbers (at most FUSED_CHUNK_BYTES), kept per thread,
    device and dtype from call to call and shared by every layer: the weight gradient of one
    chunk, consumed before the backward pass of the layer returns. A fresh buffer of this size
    is page-faulted in at every call (~20 ms per layer for MH-1 on 64 atoms)."""
    buffers = getattr(_scratch_buffers, "buffers", None)
    if buffers is None:
        buffers = _scratch_buffers.buffers = {}
    key = (like.device, like.dtype)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[key] = like.new_empty(numel)
    return buffer[:numel]


def _fused_backward(plan, grad_pooled, x, sh, radial, sender, receiver, all_weights, kept):
    """Gradients with respect to (x, Y, radial features) through the compiled kernels."""
    tp, kernels = plan, plan.kernels
    num_radial, c = radial.shape[0], x.shape[2]
    pairs = paired_edge_count(num_radial, sh.shape[0])
    width = tp.num_paths * c
    # cache-friendly chunks whose weight gradient lives in a scratch buffer kept per thread
    chunk = _fused_rows(x, width)
    grad_pooled = grad_pooled.contiguous()
    parts = _scatter_copies(x, x.shape[1], num_radial)  # as in the forward pass
    grad_x = x.new_zeros((parts, *x.shape))
    grad_sh = torch.zeros_like(sh)
    # several chunks write into one gradient; one chunk's gradient is taken as it is
    grad_radial = radial.new_empty(radial.shape) if chunk < num_radial else None
    rows = min(chunk, num_radial)  # buffers reused by every chunk (see the forward pass)
    weights_buffer = x.new_empty((rows, width)) if all_weights is None else None
    grad_buffer = _scratch(x, rows * width)
    for a in range(0, num_radial, chunk):
        b = min(a + chunk, num_radial)
        if weights_buffer is None:
            weights = all_weights[a:b]
        else:
            weights = _chunk_weights(plan, kept, radial, a, b, weights_buffer[: b - a])
        grad_weights = grad_buffer[: (b - a) * width].view(b - a, tp.num_paths, c)
        kernels.pooled_backward(  # writes grad_weights
            grad_x,
            grad_sh,
            grad_weights,
            x,
            sh,
            weights.view(b - a, tp.num_paths, c),
            sender,
            receiver,
            a,
            pairs,
            *tp.sparse_cg,
            grad_pooled,
        )
        grad = _input_gradient(plan, [z[a:b] for z in kept], grad_weights.view(b - a, -1))
        if b - a == num_radial:  # one chunk: its gradient as it is
            grad_radial = grad
        else:
            grad_radial[a:b] = grad
    if grad_radial is None:  # no radial rows
        grad_radial = torch.zeros_like(radial)
    return grad_x[0] if parts == 1 else grad_x.sum(0), grad_sh, grad_radial


def _chunk_edges(plan: MessagePlan, x: torch.Tensor) -> int:
    """Edges per chunk: cache-sized on CPUs, and never more than the plan's ``edge_chunk``."""
    if x.device.type != "cpu":
        return plan.edge_chunk
    threads = torch.get_num_threads()
    per_edge = plan.dim_mid * x.shape[2] * x.element_size()
    cache_sized = max(MIN_CHUNK_EDGES * threads, CACHE_CHUNK_BYTES * threads // per_edge)
    return min(plan.edge_chunk, cache_sized)


class PooledMessages(torch.autograd.Function):
    """``(x [n, dim_in, c], Y [e, dim_sh], radial [rows, nb]) → pooled [receivers, dim_mid, c]``
    (all ``n`` atoms for ``receivers`` -1; with ``P = e - rows`` > 0 edge ``i + P`` is edge ``i``
    reversed for ``i < P`` and shares its radial weights: :func:`edge_segments`).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        sh: torch.Tensor,
        radial: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
        plan: MessagePlan,
        receivers: int = -1,
    ) -> torch.Tensor:
        tp = plan
        c = x.shape[2]
        num_radial, num_edges, width = radial.shape[0], sh.shape[0], tp.num_paths * c
        pairs = paired_edge_count(num_radial, num_edges)
        kernels = plan.kernels
        if kernels is not None:  # the kernels read raw memory: dense row-major inputs
            sh, sender, receiver = sh.contiguous(), sender.contiguous(), receiver.contiguous()
        # the compiled kernels scatter into one copy per thread, summed after the last chunk
        parts = _scatter_copies(x, tp.dim_mid, num_radial) if kernels is not None else 1
        pooled = x.new_zeros((parts, receiver_rows(receivers, x), tp.dim_mid, c))
        # the MLP's hidden pre-activations (and its output while small) for the backward pass
        kept = [x.new_empty((num_radial, w.shape[1])) for w in plan.mlp_weights[:-1]]
        keep_weights = num_radial * width * x.element_size() <= KEEP_WEIGHTS_BYTES
        all_weights = x.new_empty((num_radial, width)) if keep_weights else None
        # radial rows per chunk: cache-sized edge chunks, or (compiled kernels, which keep
        # nothing per edge) all rows when their weights are kept, else FUSED_CHUNK_BYTES
        if kernels is None:
            chunk = _chunk_edges(plan, x)
        else:
            chunk = max(num_radial, 1) if keep_weights else _fused_rows(x, width)
        # one buffer for the radial weights of every chunk when they are not all kept (a fresh
        # one per chunk is page-faulted in each time; benchmarks/README.md)
        reused = None
        if all_weights is None and kernels is not None:
            reused = x.new_empty((min(chunk, num_radial), width))
        for a in range(0, num_radial, chunk):
            b = min(a + chunk, num_radial)
            out = all_weights[a:b] if all_weights is not None else None
            out = reused[: b - a] if reused is not None else out
            weights = _forward_keeping(plan, radial[a:b], [z[a:b] for z in kept], out)
            weights = weights.view(b - a, tp.num_paths, c)
            if kernels is not None:
                kernels.pooled_forward(
                    pooled, x, sh, weights, sender, receiver, a, pairs, *tp.sparse_cg
                )
                continue
            work = _workspace(plan, x, chunk)
            for r0, r1, offset, _ in edge_segments(a, b, num_radial, num_edges):
                e0, e1 = r0 + offset, r1 + offset
                _, _, product = _coupled(tp, x, sh[e0:e1], sender[e0:e1], work, r1 - r0)
                _scale_by_path(tp, product, weights[r0 - a : r1 - a])
                pooled[0].index_add_(0, receiver[e0:e1], product)
        pooled = pooled[0] if parts == 1 else pooled.sum(0)
        ctx.save_for_backward(x, sh, radial, sender, receiver, all_weights, *kept)
        ctx.plan = plan
        ctx.receivers = receivers
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled: torch.Tensor):  # type: ignore[override]
        x, sh, radial, sender, receiver, all_weights, *kept = ctx.saved_tensors
        plan = tp = ctx.plan
        chunk = _chunk_edges(plan, x)
        if torch.is_grad_enabled():  # a second derivative is wanted: recompute with autograd
            grads = _autograd_backward(ctx, x, sh, radial, sender, receiver, grad_pooled)
            return (*grads, None, None, None, None)
        if plan.kernels is not None:
            grads = _fused_backward(
                plan, grad_pooled, x, sh, radial, sender, receiver, all_weights, kept
            )
            return (*grads, None, None, None, None)
        need_x, need_sh, need_radial = ctx.needs_input_grad[:3]
        dim_in, c = x.shape[1:]
        num_radial, mid = radial.shape[0], tp.dim_mid
        grad_pooled = grad_pooled.contiguous()
        grad_x = torch.zeros_like(x) if need_x else None
        grad_sh = torch.empty_like(sh) if need_sh else None
        grad_radial = torch.empty_like(radial) if need_radial else None
        work = _workspace(plan, x, chunk)
        for a in range(0, num_radial, chunk):
            b = min(a + chunk, num_radial)
            k = b - a
            if all_weights is not None:
                weights = all_weights[a:b]
            else:
                weights = _chunk_weights(plan, kept, radial, a, b)
            weights = weights.view(k, tp.num_paths, c)
            grad_weights = work("grad_weights", k)
            for r0, r1, offset, reverse in edge_segments(a, b, num_radial, sh.shape[0]):
                e0, e1, m = r0 + offset, r1 + offset, r1 - r0
                xs, coupling, product = _coupled(tp, x, sh[e0:e1], sender[e0:e1], work, m)
                grad = torch.index_select(grad_pooled, 0, receiver[e0:e1], out=work("grad", m))
                if need_radial:  # radial weights' gradient, summed over an edge and its reverse
                    product.mul_(grad)
                    rows = grad_weights[r0 - a : r1 - a]
                    if not reverse:
                        _sum_by_path(tp, product, rows)
                    else:
                        summed = work("grad_weights_reverse", m)
                        _sum_by_path(tp, product, summed)
                        rows.add_(summed)
                # gradient with respect to the unweighted product
                _scale_by_path(tp, grad, weights[r0 - a : r1 - a])
                if need_x:
                    if dim_in == 1:
                        grad_xs = torch.sum(coupling * grad, dim=1, keepdim=True)
                    else:
                        grad_xs = torch.bmm(coupling.transpose(1, 2), grad, out=work("grad_x", m))
                    grad_x.index_add_(0, sender[e0:e1], grad_xs)
                if need_sh:
                    grad_coupling = torch.bmm(
                        grad, xs.transpose(1, 2), out=work("grad_coupling", m)
                    )
                    torch.mm(
                        grad_coupling.view(m, mid * dim_in), tp.cg_matrix.t(), out=grad_sh[e0:e1]
                    )
            if need_radial:
                grad_radial[a:b] = _input_gradient(
                    plan, [z[a:b] for z in kept], grad_weights.view(k, -1)
                )
        return grad_x, grad_sh, grad_radial, None, None, None, None


def _autograd_backward(ctx, x, sh, radial, sender, receiver, grad_pooled):
    inputs = [t for t, need in zip((x, sh, radial), ctx.needs_input_grad[:3]) if need]
    pooled = ctx.plan.fallback(x, sh, radial, sender, receiver, receivers=ctx.receivers)
    grads = iter(torch.autograd.grad(pooled, inputs, grad_pooled, create_graph=True))
    return tuple(next(grads) if need else None for need in ctx.needs_input_grad[:3])


class InferenceMessages(nn.Module):
    """The swap of :class:`EdgeMessages` for frozen weights: the same sums through
    :class:`PooledMessages` (compiled kernels when ``kernels`` is given, else PyTorch
    operations with workspaces and a hand-written backward).

    It registers the reference's ``tensor_product`` and ``radial_mlp`` under the same names, so
    the model's state dict does not change, and owns its workspaces. The reference stays
    reachable (not registered) for second derivatives.
    """

    def __init__(self, reference: EdgeMessages, kernels: ModuleType | None) -> None:
        super().__init__()
        self.tensor_product = reference.tensor_product
        self.radial_mlp = reference.radial_mlp
        self.channels = reference.channels
        self.edge_chunk = reference.edge_chunk
        self.kernels = kernels
        self.workspaces: dict = {}
        self._reference = (reference,)  # a tuple: not registered as a child module
        self._plan: tuple | None = None  # (weights' identity and versions, plan)

    def plan(self, last_layer: torch.Tensor | None = None) -> MessagePlan:
        """The frozen plan: the whole (plain) radial MLP, or with ``last_layer`` (a matrix) only
        that layer, whose inputs are passed in place of the radial features
        (:func:`last_layer_inputs`)."""
        tp, mlp = self.tensor_product, self.radial_mlp
        reference = self._reference[0]
        if last_layer is not None:
            weights, act_scale = (last_layer,), 1.0
            fallback = partial(_pooled_from_last_layer, reference, last_layer)
        else:
            # frozen weights: the plan is kept until a weight changes (in place or replaced)
            key = tuple((w.data_ptr(), w._version) for w in mlp.weights)
            if self._plan is not None and self._plan[0] == key:
                return self._plan[1]
            # fan-in normalisation and the activation's scale folded into the weights:
            # act(z) W = silu(z) (s W), one product fewer per layer and in the backward pass
            scales = [1.0] + [float(mlp.act.scale)] * (len(mlp.weights) - 1)
            weights = tuple(
                w.detach() * (w.shape[0] ** -0.5 * s) for w, s in zip(mlp.weights, scales)
            )
            act_scale, fallback = 1.0, reference
        plan = MessagePlan(
            cg_matrix=tp.cg_matrix,
            sparse_cg=tp.sparse_cg(),
            weight_blocks=tp.weight_blocks,
            dim_mid=tp.dim_mid,
            num_paths=tp.num_paths,
            mlp_weights=weights,
            act_scale=act_scale,
            edge_chunk=self.edge_chunk,
            workspaces=self.workspaces,
            kernels=self.kernels,
            fallback=fallback,
        )
        if last_layer is None:
            self._plan = (key, plan)
        return plan

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
        if self.kernels is not None and x.device.type != "cpu":
            raise RuntimeError(
                "this model was converted for the compiled CPU kernels: call "
                "openmace.accel.for_inference again after moving it to another device"
            )
        if cutoff is None and isinstance(self.radial_mlp, MLP):
            return PooledMessages.apply(x, sh, radial, sender, receiver, self.plan(), receivers)
        split = last_layer_inputs(self.radial_mlp, radial, cutoff)
        if split is None:  # a radial MLP this swap does not know: the reference, by autograd
            return self._reference[0](x, sh, radial, sender, receiver, cutoff, receivers)
        # the narrow layers by autograd, the wide last one in the plan
        inputs, matrix = split
        plan = self.plan(last_layer=matrix)
        return PooledMessages.apply(x, sh, inputs, sender, receiver, plan, receivers)

    def working_memory(self, num_atoms: int, num_edges: int, itemsize: int) -> int:
        """Bytes kept per evaluation: per radial row the MLP's hidden layers and (up to
        KEEP_WEIGHTS_BYTES) its output; the PyTorch path also keeps the harmonics and their
        gradient per edge, the compiled kernels the node features they read and write."""
        tp, c = self.tensor_product, self.channels
        hidden = sum(self.radial_mlp.sizes[1:-1])
        if self.kernels is not None:
            rows = num_edges // 2  # the graphs openmace builds are paired (data/graph.py)
            weights = rows * tp.num_paths * c * itemsize
            total = weights if weights <= KEEP_WEIGHTS_BYTES else FUSED_CHUNK_BYTES
            total += rows * hidden * itemsize
            target = sum(ir.dim for _, ir in tp.irreps_mid)  # the A-features' irreps
            node = tp.dim_mid + irreps_dim(tp.irreps_in) + target
            total += num_atoms * c * node * itemsize
            return int(total * COMPILED_MEMORY_FACTOR)
        kept = min(num_edges * tp.num_paths * c * itemsize, KEEP_WEIGHTS_BYTES) // itemsize
        numbers = kept + num_edges * (2 * sum(self.radial_mlp.sizes[:-1]) + 2 * SH_WIDTH)
        return int(numbers * itemsize * INFERENCE_MEMORY_FACTOR)

    def unfused_weights_memory(self, num_edges: int, itemsize: int) -> int:
        """Bytes of radial weights computed per edge outside the kernels (the nonlinear
        block): the radial input and hidden layers autograd keeps and the weights, once per
        edge (the gradients of the wide weights live one block at a time). MH-1 look-alike,
        Cu 1000 atoms (86 000 edges), float32: peak 3.8 GB, estimate of the whole model 6.7 GB
        (this term counted with the training factor it was 27 GB)."""
        wide = self.tensor_product.num_paths * self.channels
        numbers = 2 * sum(self.radial_mlp.sizes[:-1]) + wide
        factor = COMPILED_MEMORY_FACTOR if self.kernels is not None else INFERENCE_MEMORY_FACTOR
        return int(num_edges * numbers * itemsize * factor)


SH_WIDTH = 16  # spherical harmonics and their intermediates per edge (max_ell 3)
# what is kept is counted above; gradients and chunk buffers on top (measured peak RSS above
# an idle process, Cu 1000 atoms, float64: 32 channels 1.2 GB, estimate 1.4 GB; 128 channels
# 3.0 GB, estimate 3.5 GB)
INFERENCE_MEMORY_FACTOR = 1.5
# compiled kernels: the estimate x 1.5 is at or above every measured peak (Cu 1000 / 4000 /
# 16000 atoms, 32 and 128 channels, float32 and float64) and at most 2.2x above it
COMPILED_MEMORY_FACTOR = 1.5


def _pooled_from_last_layer(reference, matrix, x, sh, inputs, sender, receiver, receivers=-1):
    """The reference's pooled messages from the last layer's inputs (second derivatives)."""
    weights = inputs @ matrix
    return reference.pooled(x, sh, weights, sender, receiver, None, False, receivers)


def last_layer_inputs(
    mlp: nn.Module, radial: torch.Tensor, cutoff: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(inputs [rows, k], matrix [k, width])`` with ``mlp(radial) · cutoff = inputs @
    matrix``: the narrow layers by autograd, the envelope applied to the last layer's input
    where rows are narrow (``(h c) W + c b = [h c, c] @ [W; b]``: the same numbers up to
    rounding, without a product of the wide output and its gradient), the wide last layer
    left to the kernels' plan (its product and gradient without autograd, chunk by chunk).
    For the LayerNorm MLP the bias is a last input column (the envelope, or ones); None for
    other radial MLPs."""
    if isinstance(mlp, LayerNormMLP):
        h = radial
        for layer in mlp.layers[:-1]:
            h = layer(h)
        last = mlp.layers[-1]
        scale = cutoff if cutoff is not None else h.new_ones((h.shape[0], 1))
        inputs = torch.cat([h * scale, scale], dim=1)
        return inputs, torch.cat([last.weight, last.bias.unsqueeze(0)], dim=0).detach()
    if isinstance(mlp, MLP) and cutoff is not None:
        h = radial
        for w in list(mlp.weights)[:-1]:
            h = mlp.act(h @ (w * w.shape[0] ** -0.5))
        w = mlp.weights[-1]
        return h * cutoff, (w * w.shape[0] ** -0.5).detach()
    return None
