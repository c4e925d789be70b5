"""Node features of copied atoms from their owners, between message-passing layers.

Under domain decomposition (LAMMPS over MPI ranks) each process holds its own atoms followed by
copies of atoms it does not own (periodic images and atoms of neighbouring domains, "ghosts"),
out to one cutoff r_max. The edges end on the process's own atoms. Layer t updates
h_i^(t) = U(h_i^(t-1), Σ_j m_ij) (eq. 8-11) correctly for the own atoms only: a copy's
neighbourhood is cut at the domain's edge. Before the next layer, each copy's features are
therefore replaced by its owner's,

    h_k^(t) ← h_{owner(k)}^(t),

which is exact because MACE features are invariant under translation (an image is its owner
translated by a lattice vector). The gradient of this copy is the reverse: a copy's gradient is
added to its owner's (autograd of the gather below; in LAMMPS, a reverse communication).
"""

from __future__ import annotations

import torch
from torch import nn


class HaloExchange(nn.Module):
    """``h [local, ...]`` → ``h[owners]`` ``[n, ...]``: the features of a domain's own atoms
    (the first ``local`` of its ``n`` atoms) followed by those of the copies, whose owners are
    own atoms (one process). The reference; the LAMMPS model file swaps in
    :class:`openmace.accel.operators.OperatorHalo`, which takes the copies' features from the
    owning MPI ranks."""

    def forward(self, h: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
        return h.index_select(0, owners)
