"""openmace: MACE interatomic potentials (Batatia et al., NeurIPS 2022).

Public API::

    from openmace import MACE, MACECalculator, MACEConfig, load_model, save_model, convert
    from openmace import for_inference  # a frozen copy with the fast operators
    from openmace import mace_mp, mace_off, mace_omol  # published foundation models by name
    from openmace import keep_freed_memory  # once, in scripts that run many steps (allocator.py)
"""

from openmace.accel import for_inference
from openmace.allocator import keep_freed_memory
from openmace.calculators.mace import MACECalculator
from openmace.foundations import FoundationModelError, mace_mp, mace_off, mace_omol
from openmace.io.mace_torch import load_mace_torch as convert
from openmace.io.model_file import load_model, save_model
from openmace.model import MACE, MACEConfig
from openmace.version import __version__

__all__ = [
    "MACE",
    "MACECalculator",
    "MACEConfig",
    "FoundationModelError",
    "__version__",
    "convert",
    "for_inference",
    "keep_freed_memory",
    "load_model",
    "mace_mp",
    "mace_off",
    "mace_omol",
    "save_model",
]
