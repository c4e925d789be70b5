"""Weighted loss (paper eq. 15): energy per atom, forces, stress, virials.

    L = λ_E mean_g w_g ((E_g - Ê_g) / N_g)²  + λ_F mean_{i,α} w_i (F_iα - F̂_iα)²
      + λ_σ mean_{g,αβ} w_g (σ - σ̂)²       + λ_V mean_{g,αβ} w_g ((V - V̂) / N_g)²

Means run over labelled items only: a structure without forces (or stress) simply does not enter
that term. ``huber_delta`` replaces each square by a Huber function with that threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openmace.data.dataset import Batch


@dataclass
class LossWeights:
    energy: float = 1.0
    forces: float = 100.0
    stress: float = 1.0
    virials: float = 1.0


def _penalty(diff: torch.Tensor, huber_delta: float | None) -> torch.Tensor:
    if huber_delta is None:
        return diff.square()
    return torch.nn.functional.huber_loss(
        diff, torch.zeros_like(diff), reduction="none", delta=huber_delta
    )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum()
    return (values * mask).sum() / count.clamp(min=1)


def compute_loss(
    out: dict[str, torch.Tensor],
    batch: Batch,
    weights: LossWeights,
    huber_delta: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    parts: dict[str, torch.Tensor] = {}
    n = batch.num_atoms
    if weights.energy and bool(batch.has_energy.any()):
        diff = (out["energy"] - batch.energy) / n
        parts["energy"] = _masked_mean(batch.weight * _penalty(diff, huber_delta), batch.has_energy)
    if weights.forces and "forces" in out and bool(batch.has_forces.any()):
        atom_weight = batch.weight[batch.graph.batch].unsqueeze(-1)
        penalty = atom_weight * _penalty(out["forces"] - batch.forces, huber_delta)
        mask = batch.has_forces.unsqueeze(-1).expand_as(penalty)
        parts["forces"] = _masked_mean(penalty, mask)
    if weights.stress and "stress" in out and bool(batch.has_stress.any()):
        penalty = batch.weight.view(-1, 1, 1) * _penalty(out["stress"] - batch.stress, huber_delta)
        parts["stress"] = _masked_mean(penalty, batch.has_stress.view(-1, 1, 1).expand_as(penalty))
    if weights.virials and "virials" in out and bool(batch.has_virials.any()):
        diff = (out["virials"] - batch.virials) / n.view(-1, 1, 1)
        penalty = batch.weight.view(-1, 1, 1) * _penalty(diff, huber_delta)
        parts["virials"] = _masked_mean(
            penalty, batch.has_virials.view(-1, 1, 1).expand_as(penalty)
        )
    total = sum(getattr(weights, k) * v for k, v in parts.items())
    if not isinstance(total, torch.Tensor):
        total = out["energy"].sum() * 0.0
    return total, {k: float(v.detach()) for k, v in parts.items()}
