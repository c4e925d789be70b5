"""Equivariant primitives: irreps, spherical harmonics, Clebsch-Gordan and coupling bases,
equivariant linear maps and the channel-wise tensor product."""

from openmace.o3.clebsch_gordan import clebsch_gordan, e3nn_044_sign
from openmace.o3.coupling import CouplingBasis, coupling_basis, monomials
from openmace.o3.irreps import FeatureIrreps, Irrep, irreps_dim, spherical_harmonics_irreps
from openmace.o3.linear import (
    ElementGroups,
    ElementLinear,
    EquivariantLinear,
    element_groups,
)
from openmace.o3.spherical_harmonics import SphericalHarmonics
from openmace.o3.tensor_product import ChannelwiseTensorProduct

__all__ = [
    "ChannelwiseTensorProduct",
    "CouplingBasis",
    "ElementGroups",
    "ElementLinear",
    "EquivariantLinear",
    "FeatureIrreps",
    "Irrep",
    "clebsch_gordan",
    "coupling_basis",
    "e3nn_044_sign",
    "element_groups",
    "irreps_dim",
    "monomials",
    "SphericalHarmonics",
    "spherical_harmonics_irreps",
]
