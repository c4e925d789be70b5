"""Real Clebsch-Gordan coefficients and the e3nn 0.4 sign convention.

``clebsch_gordan(l1, l2, l3)`` returns ``C[m1, m2, m3]`` such that
``z_m3 = Σ C[m1, m2, m3] x_m1 y_m2`` maps irreps ``l1 ⊗ l2 → l3`` equivariantly, in the basis of
our spherical harmonics. Its Frobenius norm is ``sqrt(2 l3 + 1)`` ("component" normalisation:
unit-variance inputs give unit-variance outputs).

For fixed ``(l1, l2, l3)`` the coupling is unique up to normalisation and *sign*. e3nn 0.5
changed how the real coefficients are computed, which flipped the sign of some triples relative
to e3nn 0.4.4, the version mace-torch pins. We use the current e3nn coefficients and keep the
difference as data: :data:`E3NN_044_FLIPPED` lists (sorted) the triples whose sign differs.
It was measured by comparing ``e3nn.o3.wigner_3j`` of both versions for every triple with
``l <= 11`` (e3nn 0.4.4's limit); the set is closed under permutations of the triple.
``tests/o3/test_clebsch_gordan.py`` proves it against the coupling tensors stored in real
mace-torch state dicts.
"""

from __future__ import annotations

from functools import cache

import e3nn
import torch
from e3nn.o3 import wigner_3j

# Sorted (l1 <= l2 <= l3) triples, one hex digit per l, whose e3nn 0.4.4 sign is opposite.
_FLIPPED_HEX = (
    "122 133 144 155 166 177 188 199 1aa 1bb 346 357 368 379 38a 39b 445 456 467 478 489 49a "
    "4ab 555 566 56a 577 57b 588 599 5aa 5bb 669 67a 68b 779 78a 79b 889 89a 8ab 999 9aa 9bb"
)
E3NN_044_FLIPPED: frozenset[tuple[int, int, int]] = frozenset(
    tuple(int(c, 16) for c in word) for word in _FLIPPED_HEX.split()
)
E3NN_044_LMAX = 11


def e3nn_044_sign(l1: int, l2: int, l3: int) -> int:
    """Sign of e3nn 0.4.4's ``wigner_3j(l1, l2, l3)`` relative to :func:`clebsch_gordan`."""
    if max(l1, l2, l3) > E3NN_044_LMAX:
        raise ValueError(
            f"e3nn 0.4.4 has no Clebsch-Gordan coefficients beyond l = {E3NN_044_LMAX}"
        )
    a, b, c = sorted((l1, l2, l3))
    return -1 if (a, b, c) in E3NN_044_FLIPPED else 1


# Our convention is e3nn >= 0.5's. Under e3nn 0.4 (e.g. installed beside mace-torch, which pins
# it) we undo its signs, so openmace computes the same numbers whatever e3nn is installed.
_E3NN_IS_044 = tuple(int(x) for x in e3nn.__version__.split(".")[:2]) < (0, 5)


@cache
def _cg64(l1: int, l2: int, l3: int) -> torch.Tensor:
    cg = wigner_3j(l1, l2, l3, dtype=torch.float64) * (2 * l3 + 1) ** 0.5
    return cg * e3nn_044_sign(l1, l2, l3) if _E3NN_IS_044 else cg


def clebsch_gordan(l1: int, l2: int, l3: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Real Clebsch-Gordan tensor ``[2l1+1, 2l2+1, 2l3+1]`` with norm ``sqrt(2 l3 + 1)``."""
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        raise ValueError(f"no coupling {l1} ⊗ {l2} → {l3}")
    return _cg64(l1, l2, l3).to(dtype)
