"""The frozen linear maps of the inference path (one batched product over irrep components)
equal the reference maps: values, gradients, second derivatives, changed weights, absent
elements and irreps without a path."""

from __future__ import annotations

import pytest
import torch

from openmace.accel import for_inference
from openmace.accel.linear import FrozenElementLinear, FrozenLinear
from openmace.o3.irreps import Irrep
from openmace.o3.linear import ElementLinear, EquivariantLinear, element_groups
from tests.helpers import make_model

S, V, T, P = Irrep(0, 1), Irrep(1, -1), Irrep(2, 1), Irrep(1, 1)

# (input blocks, output irreps): equal multiplicities; mixed ones; an output irrep without an
# input (zero) and an input without an output (unused); scalars only
LINEAR_CASES = {
    "equal": ([(5, S), (5, V), (5, T)], [S, V, T]),
    "mixed_multiplicity": ([(7, S), (4, V), (7, T), (4, P)], [P, S, V, T]),
    "missing_and_unused": ([(5, S), (5, T), (5, P)], [V, S, T]),
    "scalars": ([(6, S)], [S]),
}


def blocks_for(irreps_in, n: int = 9, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n, mul, ir.dim, generator=g, dtype=torch.float64, requires_grad=True)
        for mul, ir in irreps_in
    ]


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_frozen_linear_equals_reference(case):
    irreps_in, irreps_out = LINEAR_CASES[case]
    torch.manual_seed(1)
    reference = EquivariantLinear(irreps_in, irreps_out, 6, dtype=torch.float64)
    reference.requires_grad_(False)
    frozen = FrozenLinear(reference)
    blocks = blocks_for(irreps_in)
    expected, got = reference(blocks), frozen(blocks)
    assert got.shape == expected.shape == (9, 6, sum(ir.dim for ir in irreps_out))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-13)
    weight = torch.randn(expected.shape, dtype=torch.float64)
    grads_ref = torch.autograd.grad((expected * weight).sum(), blocks, allow_unused=True)
    grads = torch.autograd.grad((got * weight).sum(), blocks, allow_unused=True)
    for a, b in zip(grads, grads_ref):  # an input without an output: no gradient in both
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("case", ["equal", "mixed_multiplicity"])
def test_frozen_linear_second_derivatives(case):
    irreps_in, irreps_out = LINEAR_CASES[case]
    torch.manual_seed(2)
    frozen = FrozenLinear(
        EquivariantLinear(irreps_in, irreps_out, 3, dtype=torch.float64).requires_grad_(False)
    )
    blocks = blocks_for(irreps_in, n=3)

    def fn(*xs):  # a non-linear function of the map, so that second derivatives are not zero
        return frozen(list(xs)).pow(2).sum(dim=1)

    assert torch.autograd.gradcheck(fn, blocks)
    assert torch.autograd.gradgradcheck(fn, blocks)


def assert_same_input_gradient(expected, got, x) -> None:
    """The gradients of a random projection of both outputs with respect to ``x`` agree."""
    weight = torch.randn(expected.shape, dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad((expected * weight).sum(), x)
    (grad,) = torch.autograd.grad((got * weight).sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=1e-13)


def element_case(shuffled: bool, elements: list[int], n: int = 11, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    species = torch.tensor(elements, dtype=torch.long)[
        torch.randint(len(elements), (n,), generator=g)
    ]
    if not shuffled:
        species = species.sort().values
    return species, element_groups(species, 5)


@pytest.mark.parametrize("shuffled", [False, True], ids=["element_order", "any_order"])
@pytest.mark.parametrize(
    "irreps",
    [([S, V, T], [S, V, T]), ([S, V, T], [S, V]), ([V, S], [T, S, V]), ([S], [S])],
    ids=["all", "fewer_outputs", "missing_output", "scalars"],
)
def test_frozen_element_linear_equals_reference(shuffled, irreps):
    irreps_in, irreps_out = irreps
    torch.manual_seed(3)
    reference = ElementLinear(irreps_in, 4, irreps_out, 6, 5, dtype=torch.float64)
    reference.requires_grad_(False)
    frozen = FrozenElementLinear(reference)
    species, groups = element_case(shuffled, elements=[0, 2, 3])
    assert groups.in_order is not shuffled
    x = torch.randn(
        species.shape[0],
        4,
        sum(ir.dim for ir in irreps_in),
        dtype=torch.float64,
        requires_grad=True,
    )
    expected, got = reference(x, groups), frozen(x, groups)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-13)
    assert_same_input_gradient(expected, got, x)
    # expanded weights only for the elements present
    assert sorted(frozen._expanded) == [0, 2, 3]
    assert torch.autograd.gradgradcheck(lambda y: frozen(y, groups).pow(2).sum(1), (x,))


def test_frozen_maps_follow_changed_weights():
    """The expanded weights are kept between calls; a weight changed in place or replaced is
    used afterwards, not the kept copy."""
    torch.manual_seed(4)
    linear = EquivariantLinear([(5, S), (5, V)], [S, V], 5, dtype=torch.float64)
    element = ElementLinear([S, V], 5, [S, V], 5, 3, dtype=torch.float64)
    for module in (linear, element):
        module.requires_grad_(False)
    frozen_linear, frozen_element = FrozenLinear(linear), FrozenElementLinear(element)
    species, groups = element_case(False, elements=[0, 1, 2], n=7)
    x = torch.randn(7, 5, 4, dtype=torch.float64)
    blocks = list(x.split([1, 3], dim=-1))
    frozen_linear(blocks), frozen_element(x, groups)
    with torch.no_grad():
        linear.weights[1].mul_(1.5)
        element.weights[0].mul_(0.5)
    torch.testing.assert_close(frozen_linear(blocks), linear(blocks), rtol=0, atol=1e-13)
    torch.testing.assert_close(frozen_element(x, groups), element(x, groups), rtol=0, atol=1e-13)
    linear.weights[0] = torch.nn.Parameter(linear.weights[0] * 2, requires_grad=False)
    element.weights[1] = torch.nn.Parameter(element.weights[1] * 3, requires_grad=False)
    torch.testing.assert_close(frozen_linear(blocks), linear(blocks), rtol=0, atol=1e-13)
    torch.testing.assert_close(frozen_element(x, groups), element(x, groups), rtol=0, atol=1e-13)


def test_inference_copy_swaps_every_linear_map_and_keeps_the_state_dict():
    model = make_model(correlation=1, max_ell=2)  # a non-residual first block: skip on A
    fast = for_inference(model, "pytorch")
    kinds = {type(m) for m in fast.modules()}
    assert EquivariantLinear not in kinds and ElementLinear not in kinds
    assert {FrozenLinear, FrozenElementLinear} <= kinds
    assert fast.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value)
    # the TorchScript export keeps the reference maps; the LAMMPS implementation swaps them
    assert EquivariantLinear in {type(m) for m in for_inference(model, "reference").modules()}
    assert FrozenLinear in {type(m) for m in for_inference(model, "operators").modules()}


def test_scripted_frozen_maps_equal_the_reference():
    """The LAMMPS model file scripts the swaps: expanded weights per call, autograd products."""
    irreps_in, irreps_out = LINEAR_CASES["mixed_multiplicity"]
    torch.manual_seed(5)
    linear = EquivariantLinear(irreps_in, irreps_out, 6, dtype=torch.float64).requires_grad_(False)
    element = ElementLinear([S, V, T], 4, [S, V], 6, 5, dtype=torch.float64)
    element.requires_grad_(False)
    scripted_linear = torch.jit.script(FrozenLinear(linear))
    scripted_element = torch.jit.script(FrozenElementLinear(element))
    blocks = blocks_for(irreps_in)
    torch.testing.assert_close(scripted_linear(blocks), linear(blocks), rtol=0, atol=1e-13)
    for shuffled in (False, True):
        species, groups = element_case(shuffled, elements=[1, 4])
        x = torch.randn(species.shape[0], 4, 9, dtype=torch.float64, requires_grad=True)
        expected, got = element(x, groups), scripted_element(x, groups)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-13)
        assert_same_input_gradient(expected, got, x)
