"""openmace: MACE interatomic potentials (Batatia et al., NeurIPS 2022).

Public API::

    from openmace import MACE, MACECalculator, MACEConfig, load_model, save_model, convert
"""

__version__ = "0.1.0"

from openmace.calculators.mace import MACECalculator  # noqa: E402
from openmace.io.mace_torch import load_mace_torch as convert  # noqa: E402
from openmace.io.model_file import load_model, save_model  # noqa: E402
from openmace.model import MACE, MACEConfig  # noqa: E402

__all__ = [
    "MACE",
    "MACECalculator",
    "MACEConfig",
    "__version__",
    "convert",
    "load_model",
    "save_model",
]
