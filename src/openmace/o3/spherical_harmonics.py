"""Real spherical harmonics of edge directions.

We use e3nn's implementation (the field's reference, identical between e3nn 0.4 and 0.6) with
"component" normalisation: each ``l`` block of ``Y(r̂)`` has squared norm ``2l + 1``. The ``l = 1``
block is proportional to ``(x, y, z)`` in e3nn's axis convention. The module form is built once
per model (the functional form builds it on every call) and is TorchScript-compatible.
"""

from __future__ import annotations

import torch
from e3nn.o3 import SphericalHarmonics as _E3nnSphericalHarmonics
from torch import nn


class SphericalHarmonics(nn.Module):
    """``Y_l^m(r̂)`` for ``l = 0..lmax`` of ``vectors [n, 3]`` → ``[n, (lmax + 1)^2]``.

    ``pairs = P > 0``: vector ``e + P`` is vector ``e`` negated for every ``e < P`` (edges in
    reversed halves, or pairs then one-way edges: :func:`openmace.data.graph.paired_edges`);
    the harmonics of the first ``P`` and of the vectors from ``2P`` on are computed and the
    reverses follow by parity, ``Y_l(-r̂) = (-1)^l Y_l(r̂)``: the same numbers (each ``Y_l`` is
    a homogeneous polynomial of degree ``l`` in the unit vector's components), gradients
    through the first ``P`` vectors."""

    def __init__(self, lmax: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.harmonics = _E3nnSphericalHarmonics(
            list(range(lmax + 1)), normalize=True, normalization="component"
        )
        signs = [(-1.0) ** l for l in range(lmax + 1) for _ in range(2 * l + 1)]
        self.register_buffer("parity", torch.tensor(signs, dtype=dtype), persistent=False)

    def forward(self, vectors: torch.Tensor, pairs: int = 0) -> torch.Tensor:
        if pairs <= 0 or 2 * pairs > vectors.shape[0]:
            return self.harmonics(vectors)
        if 2 * pairs == vectors.shape[0]:
            half = self.harmonics(vectors[:pairs])
            return torch.cat([half, half * self.parity.to(half.dtype)])
        rows = self.harmonics(torch.cat([vectors[:pairs], vectors[2 * pairs :]]))
        half = rows[:pairs]
        return torch.cat([half, half * self.parity.to(half.dtype), rows[pairs:]])
