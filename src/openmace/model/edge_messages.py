"""Pooled edge messages for inference (paper eq. 8), with a hand-written backward.

    M_i = Σ_{j ∈ N(i)} R(r_ij) ⊗ Y(r̂_ij) ⊗ x_j          →  pooled [nodes, dim_mid, channels]

The autograd version (:meth:`InteractionBlock.messages_autograd`) keeps every per-edge
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
need. It is used only when no parameter of the block requires a gradient (inference); training
uses the autograd version. A second derivative (``create_graph=True``, e.g. a Hessian) falls back
to recomputing the autograd version, so the result stays exact there too.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch

from openmace.kernels import cpu_kernels_for
from openmace.o3 import ChannelwiseTensorProduct

if TYPE_CHECKING:
    from openmace.model.interaction import InteractionBlock


class _Workspace:
    """Buffers of one chunk's size; views ``[:k]`` serve a shorter chunk."""

    def __init__(self, like: torch.Tensor, rows: int, shapes: dict[str, tuple[int, ...]]) -> None:
        self.rows = rows
        self.buffers = {name: like.new_empty((rows, *shape)) for name, shape in shapes.items()}

    def __call__(self, name: str, k: int) -> torch.Tensor:
        return self.buffers[name][:k]


def _workspace(block: InteractionBlock, x: torch.Tensor, rows: int) -> _Workspace:
    """The block's workspace for this thread, device and dtype, kept from call to call: fresh
    buffers would be page-faulted in by the kernel at every call (3BPA, 702 edges: the first
    chunk's matrix product took 1.5 ms in fresh memory against 0.2 ms in reused memory). Only
    scratch lives here (nothing the backward pass needs is kept in it), so the forward and
    backward passes of different calls in one thread may share it."""
    tp, (dim_in, c) = block.tensor_product, x.shape[1:]
    key = (threading.get_ident(), x.device, x.dtype, dim_in, c)
    work = block.workspaces.get(key)
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
        work = block.workspaces[key] = _Workspace(x, rows, shapes)
    return work


def _coupled(
    tp: ChannelwiseTensorProduct,
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


def _scale_by_path(
    tp: ChannelwiseTensorProduct, slots: torch.Tensor, weights: torch.Tensor
) -> None:
    """``slots [k, mid, c] *= weights [k, paths, c]`` of each slot's path, in place."""
    k, c = slots.shape[0], slots.shape[2]
    for s0, s1, p0, p1, dim in tp.weight_blocks:
        block = slots[:, s0:s1].view(k, p1 - p0, dim, c)
        block.mul_(weights[:, p0:p1].unsqueeze(2))


def _sum_by_path(tp: ChannelwiseTensorProduct, slots: torch.Tensor, out: torch.Tensor) -> None:
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
# operations on it runs from the CPU cache. Measured on Cu 64 atoms (energy + forces + stress):
# 1 thread, 32x0e+32x1o float64: 256 edges (2.6 MB) 166 ms vs 198 ms with 1310 and 278 ms with
# all 4992 edges at once; 2 threads: 3 / 6 / 12 MiB chunks 100 / 89 / 99 ms; 128x0e+128x1o:
# 1 thread 3 / 6 MiB 457 / 435 ms, 2 threads 6 / 12 / 24 MiB 278 / 254 / 258 ms. Other devices
# use the block's (large) edge_chunk.
CACHE_CHUNK_BYTES = 3 << 20
MIN_CHUNK_EDGES = 128

# the radial weights [edges, paths · channels] are kept from the forward pass when they take at
# most this much memory, and recomputed from the kept last hidden layer otherwise
KEEP_WEIGHTS_BYTES = 1 << 30


def pair_offsets(num_radial: int, num_edges: int) -> list[int]:
    """Where each chunk of radial rows applies: its edges, and (when the radial rows cover half
    the edges, the second half being the first reversed) also the reverse edges."""
    return [0] if num_radial == num_edges else [0, num_radial]  # [-1]: 0 or the half


# radial weights of one chunk of radial rows in the compiled-kernel path when they are not all
# kept (more than KEEP_WEIGHTS_BYTES)
FUSED_CHUNK_BYTES = 64 << 20


# memory for the compiled kernels' per-thread scatter copies beyond the second copy: on many
# cores a large cell would otherwise hold one copy of the pooled features per core
SCATTER_COPIES_BYTES = 2 << 30
MIN_ROWS_PER_THREAD = 64  # as MIN_ROWS in edge_messages.cpp


def _scatter_copies(x: torch.Tensor, dim: int, rows: int) -> int:
    """Scatter targets for the kernels: one per thread that gets work, within the memory cap
    (two always; the kernels split the rows into at most this many parts)."""
    one_copy = x.shape[0] * dim * x.shape[2] * x.element_size()
    affordable = max(2, SCATTER_COPIES_BYTES // max(one_copy, 1))
    useful = max(1, rows // MIN_ROWS_PER_THREAD)
    return max(1, min(torch.get_num_threads(), useful, affordable))


def _chunk_weights(mlp, kept: list[torch.Tensor], radial: torch.Tensor, a: int, b: int, out=None):
    """The radial MLP's output for rows ``a:b`` from the kept last hidden pre-activation (or
    the radial features when the MLP has one layer): the backward passes' recomputation."""
    return mlp.output_from_kept(mlp.act(kept[-1][a:b]) if kept else radial[a:b], out)


def _fused_rows(x: torch.Tensor, width: int) -> int:
    return max(1, FUSED_CHUNK_BYTES // (width * x.element_size()))


def _fused_backward(
    kernels, block, grad_pooled, x, sh, radial, sender, receiver, all_weights, kept
):
    """Gradients with respect to (x, Y, radial features) through the compiled kernels."""
    tp, mlp = block.tensor_product, block.radial_mlp
    num_radial, c = radial.shape[0], x.shape[2]
    half = pair_offsets(num_radial, sh.shape[0])[-1]
    chunk = max(num_radial, 1) if all_weights is not None else _fused_rows(x, tp.num_paths * c)
    grad_pooled = grad_pooled.contiguous()
    parts = _scatter_copies(x, x.shape[1], num_radial)  # as in the forward pass
    grad_x = x.new_zeros((parts, *x.shape))
    grad_sh = torch.zeros_like(sh)
    grad_radial = torch.empty_like(radial)
    rows = min(chunk, num_radial)  # buffers reused by every chunk (see the forward pass)
    weights_buffer = x.new_empty((rows, tp.num_paths * c)) if all_weights is None else None
    grad_buffer = x.new_empty((rows, tp.num_paths, c))
    for a in range(0, num_radial, chunk):
        b = min(a + chunk, num_radial)
        if weights_buffer is None:
            weights = all_weights[a:b]
        else:
            weights = _chunk_weights(mlp, kept, radial, a, b, weights_buffer[: b - a])
        grad_weights = grad_buffer[: b - a].zero_()
        kernels.pooled_backward(
            grad_x,
            grad_sh,
            grad_weights,
            x,
            sh,
            weights.view(b - a, tp.num_paths, c),
            sender,
            receiver,
            a,
            half,
            *tp.sparse_cg(),
            grad_pooled,
        )
        grad_radial[a:b] = mlp.input_gradient([z[a:b] for z in kept], grad_weights.view(b - a, -1))
    return grad_x[0] if parts == 1 else grad_x.sum(0), grad_sh, grad_radial


def _chunk_edges(block: InteractionBlock, x: torch.Tensor) -> int:
    """Edges per chunk: cache-sized on CPUs, and never more than the block's ``edge_chunk``."""
    if x.device.type != "cpu":
        return block.edge_chunk
    threads = torch.get_num_threads()
    per_edge = block.tensor_product.dim_mid * x.shape[2] * x.element_size()
    cache_sized = max(MIN_CHUNK_EDGES * threads, CACHE_CHUNK_BYTES * threads // per_edge)
    return min(block.edge_chunk, cache_sized)


class PooledMessages(torch.autograd.Function):
    """``(x [n, dim_in, c], Y [e, dim_sh], radial [e or e/2, nb]) → pooled [n, dim_mid, c]``
    (``e/2`` radial rows: edge ``i + e/2`` is edge ``i`` reversed and shares its radial weights).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        sh: torch.Tensor,
        radial: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
        block: InteractionBlock,
    ) -> torch.Tensor:
        tp, mlp = block.tensor_product, block.radial_mlp
        n, dim_in, c = x.shape
        num_radial, width = radial.shape[0], tp.num_paths * c
        offsets = pair_offsets(num_radial, sh.shape[0])
        kernels = cpu_kernels_for(x)
        if kernels is not None:  # the kernels read raw memory: dense row-major inputs
            sh, sender, receiver = sh.contiguous(), sender.contiguous(), receiver.contiguous()
        # the compiled kernels scatter into one copy per thread, summed after the last chunk
        parts = _scatter_copies(x, tp.dim_mid, num_radial) if kernels is not None else 1
        pooled = x.new_zeros((parts, n, tp.dim_mid, c))
        # the MLP's hidden pre-activations (and its output while small) for the backward pass
        kept = [x.new_empty((num_radial, w.shape[1])) for w in mlp.weights[:-1]]
        keep_weights = num_radial * width * x.element_size() <= KEEP_WEIGHTS_BYTES
        all_weights = x.new_empty((num_radial, width)) if keep_weights else None
        # radial rows per chunk: cache-sized edge chunks, or (compiled kernels, which keep
        # nothing per edge) all rows when their weights are kept, else FUSED_CHUNK_BYTES
        if kernels is None:
            chunk = _chunk_edges(block, x)
        else:
            chunk = max(num_radial, 1) if keep_weights else _fused_rows(x, width)
        # one buffer for the radial weights of every chunk when they are not all kept (a fresh
        # one per chunk is page-faulted in each time: 16 000 Cu atoms, 128 channels, 45 -> 31 s)
        reused = None
        if all_weights is None and kernels is not None:
            reused = x.new_empty((min(chunk, num_radial), width))
        for a in range(0, num_radial, chunk):
            b = min(a + chunk, num_radial)
            out = all_weights[a:b] if all_weights is not None else None
            out = reused[: b - a] if reused is not None else out
            weights = mlp.forward_keeping(radial[a:b], [z[a:b] for z in kept], out)
            weights = weights.view(b - a, tp.num_paths, c)
            if kernels is not None:
                kernels.pooled_forward(
                    pooled, x, sh, weights, sender, receiver, a, offsets[-1], *tp.sparse_cg()
                )
                continue
            work = _workspace(block, x, chunk)
            for offset in offsets:  # the chunk's edges, then their reverses if paired
                e0, e1 = a + offset, b + offset
                _, _, product = _coupled(tp, x, sh[e0:e1], sender[e0:e1], work, b - a)
                _scale_by_path(tp, product, weights)
                pooled[0].index_add_(0, receiver[e0:e1], product)
        pooled = pooled[0] if parts == 1 else pooled.sum(0)
        ctx.kernels = kernels
        ctx.save_for_backward(x, sh, radial, sender, receiver, all_weights, *kept)
        ctx.block = block
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled: torch.Tensor):  # type: ignore[override]
        x, sh, radial, sender, receiver, all_weights, *kept = ctx.saved_tensors
        block = ctx.block
        tp, mlp = block.tensor_product, block.radial_mlp
        chunk = _chunk_edges(block, x)
        if torch.is_grad_enabled():  # a second derivative is wanted: recompute with autograd
            grads = _autograd_backward(ctx, x, sh, radial, sender, receiver, grad_pooled)
            return (*grads, None, None, None)
        if ctx.kernels is not None:
            grads = _fused_backward(
                ctx.kernels, block, grad_pooled, x, sh, radial, sender, receiver, all_weights, kept
            )
            return (*grads, None, None, None)
        need_x, need_sh, need_radial = ctx.needs_input_grad[:3]
        n, dim_in, c = x.shape
        num_radial, mid = radial.shape[0], tp.dim_mid
        offsets = pair_offsets(num_radial, sh.shape[0])
        grad_pooled = grad_pooled.contiguous()
        grad_x = torch.zeros_like(x) if need_x else None
        grad_sh = torch.empty_like(sh) if need_sh else None
        grad_radial = torch.empty_like(radial) if need_radial else None
        work = _workspace(block, x, chunk)
        for a in range(0, num_radial, chunk):
            b = min(a + chunk, num_radial)
            k = b - a
            if all_weights is not None:
                weights = all_weights[a:b]
            else:
                weights = _chunk_weights(mlp, kept, radial, a, b)
            weights = weights.view(k, tp.num_paths, c)
            grad_weights = work("grad_weights", k)
            for pass_index, offset in enumerate(offsets):
                e0, e1 = a + offset, b + offset
                xs, coupling, product = _coupled(tp, x, sh[e0:e1], sender[e0:e1], work, k)
                grad = torch.index_select(grad_pooled, 0, receiver[e0:e1], out=work("grad", k))
                if need_radial:  # radial weights' gradient, summed over an edge and its reverse
                    product.mul_(grad)
                    if pass_index == 0:
                        _sum_by_path(tp, product, grad_weights)
                    else:
                        reverse = work("grad_weights_reverse", k)
                        _sum_by_path(tp, product, reverse)
                        grad_weights.add_(reverse)
                _scale_by_path(tp, grad, weights)  # gradient with respect to the unweighted product
                if need_x:
                    if dim_in == 1:
                        grad_xs = torch.sum(coupling * grad, dim=1, keepdim=True)
                    else:
                        grad_xs = torch.bmm(coupling.transpose(1, 2), grad, out=work("grad_x", k))
                    grad_x.index_add_(0, sender[e0:e1], grad_xs)
                if need_sh:
                    grad_coupling = torch.bmm(
                        grad, xs.transpose(1, 2), out=work("grad_coupling", k)
                    )
                    torch.mm(
                        grad_coupling.view(k, mid * dim_in), tp.cg_matrix.t(), out=grad_sh[e0:e1]
                    )
            if need_radial:
                grad_radial[a:b] = mlp.input_gradient(
                    [z[a:b] for z in kept], grad_weights.view(k, -1)
                )
        return grad_x, grad_sh, grad_radial, None, None, None


def _autograd_backward(ctx, x, sh, radial, sender, receiver, grad_pooled):
    inputs = [t for t, need in zip((x, sh, radial), ctx.needs_input_grad[:3]) if need]
    pooled = ctx.block.messages_autograd(x, sh, radial, sender, receiver)
    grads = iter(torch.autograd.grad(pooled, inputs, grad_pooled, create_graph=True))
    return tuple(next(grads) if need else None for need in ctx.needs_input_grad[:3])
