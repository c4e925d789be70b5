"""Model blocks, one module per block of the paper."""

from openmace.model.config import MACEConfig
from openmace.model.mace import MACE

__all__ = ["MACE", "MACEConfig"]
