"""Forces, stress and virials from the energy: the one place where they are derived.

    F_i = -∂E/∂r_i
    W   = -∂E/∂ε                (virials, eV)
    σ   = (1/V) ∂E/∂ε           (stress, eV/Å³, ASE's sign; zero unless periodic in x, y and z)

with ``ε`` a symmetric strain applied to positions and cell, ``r → r (1 + ε)``,
``cell → cell (1 + ε)``, evaluated at ``ε = 0``. Every path (the eager model, the inference
copies and the TorchScript export) goes through these two functions: :func:`apply_strain`
before the energy, :func:`energy_derivatives` after it.
"""

from typing import NamedTuple

import torch


class Strained(NamedTuple):
    """Inputs of the energy with the strain applied, and the leaves to differentiate."""

    positions: torch.Tensor  # [n, 3] strained positions (the energy's input)
    cell: torch.Tensor  # [G, 3, 3] strained cell (the energy's input)
    leaf: torch.Tensor  # [n, 3] unstrained positions: forces are the gradient here
    strain: torch.Tensor | None  # [G, 3, 3] zero strain, when stress is wanted
    unstrained_cell: torch.Tensor  # [G, 3, 3] for the volume


def apply_strain(
    positions: torch.Tensor,
    cell: torch.Tensor,
    batch: torch.Tensor,
    num_graphs: int,
    compute_forces: bool,
    compute_stress: bool,
) -> Strained:
    """Positions as a leaf that records gradients (when forces or stress are wanted) and, for
    stress, a zero symmetric strain per structure applied to positions and cell."""
    leaf = positions.detach()
    if compute_forces or compute_stress:
        leaf.requires_grad_(True)
    strain: torch.Tensor | None = None
    strained_positions, strained_cell = leaf, cell
    if compute_stress:
        strain = torch.zeros(
            (num_graphs, 3, 3), dtype=positions.dtype, device=positions.device
        ).requires_grad_(True)
        symmetric = 0.5 * (strain + strain.transpose(1, 2))
        strained_positions = leaf + torch.einsum("ni,nij->nj", leaf, symmetric[batch])
        strained_cell = cell + torch.bmm(cell, symmetric)
    return Strained(strained_positions, strained_cell, leaf, strain, cell)


def energy_derivatives(
    energy: torch.Tensor,
    strained: Strained,
    pbc: torch.Tensor,
    compute_forces: bool,
    compute_stress: bool,
    create_graph: bool,
) -> dict[str, torch.Tensor]:
    """``forces`` [n, 3] (eV/Å) and, with a strain, ``virials`` and ``stress`` [G, 3, 3] of
    ``energy`` [G]. ``create_graph`` keeps the derivatives differentiable (training on forces,
    Hessians)."""
    out: dict[str, torch.Tensor] = {}
    if not (compute_forces or compute_stress):
        return out
    leaf, strain = strained.leaf, strained.strain
    inputs = [leaf]
    if strain is not None:
        inputs.append(strain)
    grads = torch.autograd.grad(
        [energy.sum()], inputs, create_graph=create_graph, allow_unused=True
    )
    force_grad = grads[0]
    out["forces"] = -force_grad if force_grad is not None else torch.zeros_like(leaf)
    if strain is not None:
        strain_grad = grads[1]
        de_dstrain = strain_grad if strain_grad is not None else torch.zeros_like(strain)
        periodic = pbc.all(dim=1)
        volume = torch.linalg.det(strained.unstrained_cell).abs()
        volume = torch.where(periodic, volume, torch.ones_like(volume))
        out["virials"] = -de_dstrain
        # stress is defined for fully periodic structures only; zero elsewhere
        out["stress"] = torch.where(
            periodic.view(-1, 1, 1),
            de_dstrain / volume.view(-1, 1, 1),
            torch.zeros_like(de_dstrain),
        )
    return out
