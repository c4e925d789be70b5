"""Errors of reading foreign model files (kept apart so that the safe reader imports nothing
of the model)."""


class ConversionError(ValueError):
    """A mace-torch model that openmace cannot represent exactly, or cannot read safely."""
