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


def loss_terms(
    out: dict[str, torch.Tensor],
    batch: Batch,
    weights: LossWeights,
    huber_delta: float | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each loss term's sum over the labelled items of ``batch`` and their count: the mean is
    ``sum / count``. Split so that processes sharing a batch (:mod:`openmace.train.distributed`)
    divide by the whole batch's counts."""
    terms: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    n = batch.num_atoms

    def masked(values: torch.Tensor, mask: torch.Tensor):
        return (values * mask).sum(), mask.sum().to(values.dtype)

    if weights.energy and bool(batch.has_energy.any()):
        diff = (out["energy"] - batch.energy) / n
        terms["energy"] = masked(batch.weight * _penalty(diff, huber_delta), batch.has_energy)
    if weights.forces and "forces" in out and bool(batch.has_forces.any()):
        atom_weight = batch.weight[batch.graph.batch].unsqueeze(-1)
        penalty = atom_weight * _penalty(out["forces"] - batch.forces, huber_delta)
        terms["forces"] = masked(penalty, batch.has_forces.unsqueeze(-1).expand_as(penalty))
    if weights.stress and "stress" in out and bool(batch.has_stress.any()):
        penalty = batch.weight.view(-1, 1, 1) * _penalty(out["stress"] - batch.stress, huber_delta)
        terms["stress"] = masked(penalty, batch.has_stress.view(-1, 1, 1).expand_as(penalty))
    if weights.virials and "virials" in out and bool(batch.has_virials.any()):
        diff = (out["virials"] - batch.virials) / n.view(-1, 1, 1)
        penalty = batch.weight.view(-1, 1, 1) * _penalty(diff, huber_delta)
        terms["virials"] = masked(penalty, batch.has_virials.view(-1, 1, 1).expand_as(penalty))
    return terms


TERMS = ("energy", "forces", "stress", "virials")


def combine(
    terms: dict[str, tuple[torch.Tensor, torch.Tensor]],
    weights: LossWeights,
    counts: dict[str, float] | None = None,
) -> torch.Tensor | None:
    """Σ_k λ_k sum_k / count_k over the terms present; ``counts`` overrides each term's count
    (the whole batch's, when processes share it); None when no term is present."""
    total = None
    for name, (value, count) in terms.items():
        denominator = count.clamp(min=1) if counts is None else max(counts[name], 1.0)
        part = getattr(weights, name) * (value / denominator)
        total = part if total is None else total + part
    return total


def compute_loss(
    out: dict[str, torch.Tensor],
    batch: Batch,
    weights: LossWeights,
    huber_delta: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    terms = loss_terms(out, batch, weights, huber_delta)
    total = combine(terms, weights)
    if total is None:
        total = out["energy"].sum() * 0.0
    parts = {k: float((v / c.clamp(min=1)).detach()) for k, (v, c) in terms.items()}
    return total, parts
