"""Real spherical harmonics of edge directions.

We use e3nn's implementation (the field's reference, identical between e3nn 0.4 and 0.6) with
"component" normalisation: each ``l`` block of ``Y(r̂)`` has squared norm ``2l + 1``. The ``l = 1``
block is proportional to ``(x, y, z)`` in e3nn's axis convention.
"""

from __future__ import annotations

import torch
from e3nn.o3 import spherical_harmonics as _e3nn_spherical_harmonics


def spherical_harmonics(lmax: int, vectors: torch.Tensor) -> torch.Tensor:
    """``Y_l^m(r̂)`` for ``l = 0..lmax`` of ``vectors [n, 3]``; returns ``[n, (lmax + 1)^2]``."""
    return _e3nn_spherical_harmonics(
        list(range(lmax + 1)), vectors, normalize=True, normalization="component"
    )
