"""Irreducible representations of O(3) and the layout of equivariant features.

An irrep is ``(l, p)``: degree ``l`` (dimension ``2l + 1``) and parity ``p = ±1``. MACE features
have the same number of channels for every irrep, so a feature block is described by
``(channels, [irrep, ...])`` and stored as a tensor of shape ``[..., channels, dim]`` where
``dim = Σ (2l + 1)`` over the irreps, in the order given. This is also the layout that
mace-torch's ``reshape_irreps`` produces from e3nn's flat ``mul x ir`` layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

_IRREP = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+)\s*([eo])\s*$")


class Irrep(NamedTuple):
    """An O(3) irrep: degree ``l`` and parity ``p`` (+1 even, -1 odd)."""

    l: int
    p: int

    @property
    def dim(self) -> int:
        return 2 * self.l + 1

    def __str__(self) -> str:
        return f"{self.l}{'e' if self.p == 1 else 'o'}"

    def __mul__(self, other: Irrep) -> list[Irrep]:  # type: ignore[override]
        """Irreps in the tensor product of two irreps (selection rule)."""
        p = self.p * other.p
        return [Irrep(l, p) for l in range(abs(self.l - other.l), self.l + other.l + 1)]


def spherical_harmonics_irreps(lmax: int) -> list[Irrep]:
    """Irreps of the real spherical harmonics ``Y_0 .. Y_lmax`` (parity ``(-1)^l``)."""
    return [Irrep(l, (-1) ** l) for l in range(lmax + 1)]


def irreps_dim(irreps: list[Irrep] | tuple[Irrep, ...]) -> int:
    return sum(ir.dim for ir in irreps)


def irreps_slices(irreps: list[Irrep] | tuple[Irrep, ...]) -> list[slice]:
    """Slice of each irrep along the ``dim`` axis."""
    out, start = [], 0
    for ir in irreps:
        out.append(slice(start, start + ir.dim))
        start += ir.dim
    return out


@dataclass(frozen=True)
class FeatureIrreps:
    """``channels`` copies of each irrep in ``irreps``, e.g. ``128x0e+128x1o``."""

    channels: int
    irreps: tuple[Irrep, ...]

    @classmethod
    def parse(cls, text: str) -> FeatureIrreps:
        """Parse e3nn-style text. Every term must have the same multiplicity (as in MACE)."""
        muls, irreps = [], []
        for term in text.split("+"):
            match = _IRREP.match(term)
            if match is None:
                raise ValueError(f"cannot parse irreps {text!r}: bad term {term!r}")
            muls.append(int(match.group(1) or 1))
            irreps.append(Irrep(int(match.group(2)), 1 if match.group(3) == "e" else -1))
        if len(set(muls)) != 1:
            raise ValueError(
                f"hidden irreps {text!r}: every irrep needs the same number of channels"
            )
        if len(set(irreps)) != len(irreps):
            raise ValueError(f"hidden irreps {text!r}: an irrep is repeated")
        return cls(muls[0], tuple(irreps))

    @property
    def dim(self) -> int:
        return irreps_dim(self.irreps)

    @property
    def lmax(self) -> int:
        return max(ir.l for ir in self.irreps)

    def scalars(self) -> FeatureIrreps:
        """The first irrep only (MACE's last layer keeps ``hidden_irreps[0]``)."""
        return FeatureIrreps(self.channels, self.irreps[:1])

    def __str__(self) -> str:
        return "+".join(f"{self.channels}x{ir}" for ir in self.irreps)
