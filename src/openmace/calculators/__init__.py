"""ASE calculators."""

from openmace.calculators.mace import MACECalculator

__all__ = ["MACECalculator"]
