import pytest

from openmace.model import MACEConfig


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(hidden_irreps="8x0e+4x1o"), "same number of channels"),
        (dict(hidden_irreps="8x1o"), "start with the even scalars"),
        (dict(correlation=5), "correlation"),
        (dict(atomic_energies=[1.0]), "one value per element"),
        (dict(r_max=-1.0), "r_max"),
        (dict(hidden_irreps="8x0e+8x4e"), "L = 0..3"),
    ],
)
def test_invalid_configs_are_rejected_with_reason(change, message):
    kwargs = dict(atomic_numbers=[1, 8], atomic_energies=[0.0, 0.0])
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        MACEConfig(**kwargs)
