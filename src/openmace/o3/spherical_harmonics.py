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
    """``Y_l^m(r̂)`` for ``l = 0..lmax`` of ``vectors [n, 3]`` → ``[n, (lmax + 1)^2]``."""

    def __init__(self, lmax: int) -> None:
        super().__init__()
        self.harmonics = _E3nnSphericalHarmonics(
            list(range(lmax + 1)), normalize=True, normalization="component"
        )

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.harmonics(vectors)
