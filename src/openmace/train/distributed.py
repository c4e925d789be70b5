"""Data-parallel training over processes and nodes (PyTorch's ``torch.distributed``).

Launch::

    torchrun --nproc_per_node 2 -m openmace train ...          # one node, 2 processes
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 -m openmace train ...  # two nodes (run on each)
    srun python -m openmace train ...                           # SLURM (MASTER_ADDR/PORT set)

Each process trains on its share of every global batch; the result is the result of one
process with the same global batch (``--batch-size`` is global), to rounding:

* **batches**: the global order of structures is a function of ``seed`` and epoch only
  (:func:`global_batches`); rank ``r`` of ``W`` takes structures ``r, r + W, ...`` of each
  global batch (a DistributedSampler with per-epoch seeds, made so that the global batch is
  the same for every world size: a run may resume on another number of processes);
* **loss and gradients**: each rank's loss terms are sums over its structures divided by the
  global batch's label counts (all-reduced first), so the sum over ranks is the one-process
  loss; the gradients are summed over ranks with one flat all-reduce (also where a rank's share
  is empty: its gradient is zero, it still takes part). Every rank then takes the same optimiser
  step and EMA update: weights, optimiser and EMA state stay identical on every rank. This is
  what ``DistributedDataParallel`` does, written out: DDP averages gradients (exact only when
  every rank has the same number of labels) and hooks into the backward pass, while the forces
  here come from a double backward (``create_graph``), where an explicit all-reduce is simpler;
* **validation**: the evaluation batches are spread over ranks and their results gathered on
  every rank, in order: every rank sees the same validation loss (scheduler, early stopping);
* **files**: rank 0 alone takes the work dir's lock and writes logs, checkpoints, plots, the
  final tables and the model (the final evaluation runs on rank 0 alone, with no collective
  that could hang; the others exit when training ends).

gloo on CPUs, NCCL on CUDA (``cuda:LOCAL_RANK``). Collectives time out after
``--ddp-timeout`` seconds; torchrun stops every process when one fails.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(environ: Mapping[str, str] | None = None) -> World:
    """The world torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or SLURM's srun
    (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``) describes; one process otherwise.
    SLURM counts only with ``MASTER_ADDR`` set (srun of a single-process job sets the
    variables too)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "MASTER_ADDR" in env:
        return World(
            int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        )
    return World()


def start(world: World, device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group of ``world`` (gloo, or NCCL on CUDA); returns this rank's device
    (``cuda:LOCAL_RANK`` for CUDA)."""
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            rank=world.rank,
            world_size=world.size,
            timeout=timedelta(seconds=timeout_s),
        )
    return device


def stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def global_batches(
    sizes: np.ndarray,
    batch_size: int,
    seed: int,
    max_atoms: int | None = None,
    edges: np.ndarray | None = None,
    max_edges: int | None = None,
) -> list[np.ndarray]:
    """One epoch's global batches of structure indices: a permutation by ``seed`` cut every
    ``batch_size`` structures, or (``max_atoms`` and/or ``max_edges``) greedily into batches
    of at most ``max_atoms`` atoms and ``max_edges`` edges (``sizes``, ``edges``: atoms and
    edges per structure; a structure over a limit is a batch alone)."""
    order = np.random.default_rng(seed).permutation(len(sizes))
    if max_atoms is None and max_edges is None:
        return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    if max_edges is not None and edges is None:
        raise ValueError("batches by edges need the structures' edge counts")
    limits = [(np.asarray(sizes), max_atoms), (edges, max_edges)]
    limits = [(counts, limit) for counts, limit in limits if limit is not None]
    batches, current = [], []
    totals = [0] * len(limits)
    for i in order:
        over = any(t + int(c[i]) > limit for t, (c, limit) in zip(totals, limits))
        if current and over:
            batches.append(np.array(current))
            current, totals = [], [0] * len(limits)
        current.append(i)
        totals = [t + int(c[i]) for t, (c, _) in zip(totals, limits)]
    if current:
        batches.append(np.array(current))
    return batches


def share(indices: np.ndarray, world: World) -> np.ndarray:
    """This rank's share of a global batch."""
    return indices[world.rank :: world.size]


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum over ranks, in place (nothing to do on one process)."""
    if world.distributed:
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


def all_reduce_gradients(
    parameters: list[torch.nn.Parameter], world: World, extra: torch.Tensor
) -> torch.Tensor:
    """Sum every parameter's gradient over ranks, with ``extra`` (e.g. the loss), in one flat
    all-reduce; returns the summed ``extra``. A parameter that has a gradient on no rank keeps
    none (the optimiser skips it, as on one process); where some ranks have one, the others
    count as zero."""
    if not world.distributed:
        return extra
    grads = [
        p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
        for p in parameters
    ]
    present = torch.tensor([p.grad is not None for p in parameters], dtype=extra.dtype)
    flat = torch.cat(grads + [present.to(extra.device), extra.reshape(-1)])
    all_reduce_sum(flat, world)
    offset = 0
    for p, has in zip(parameters, flat[-len(parameters) - extra.numel() : -extra.numel()]):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone() if has > 0 else None
        offset += n
    return flat[-extra.numel() :].reshape(extra.shape)


def gather(value, world: World) -> list:
    """``value`` of every rank, in rank order, on every rank."""
    if not world.distributed:
        return [value]
    import torch.distributed as dist

    out: list = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def broadcast_parameters(module: torch.nn.Module, world: World) -> None:
    """Rank 0's weights and buffers on every rank."""
    if not world.distributed:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, 0)
