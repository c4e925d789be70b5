"""A model of many elements costs only the elements a structure contains (issue 15, item 5).

The symmetric contraction contracts its weights with the coupling basis for the elements present
in a call (reference, training) or the first time a call contains an element (the inference
swaps and the TorchScript export, which keep them); the numbers equal those of contracting every
element, as before.
"""

from __future__ import annotations

import ase.build
import pytest
import torch

from openmace.accel import for_inference, inference_contraction
from openmace.accel.contraction import CompiledContraction, FrozenContraction
from openmace.data.graph import graph_from_atoms
from openmace.io.torchscript import script_model
from openmace.model.product import SymmetricContraction
from openmace.o3 import Irrep, spherical_harmonics_irreps
from openmace.o3.linear import element_groups
from tests.helpers import make_model

NUM_ELEMENTS = 6


def contraction() -> SymmetricContraction:
    torch.manual_seed(3)
    irreps_in = tuple(spherical_harmonics_irreps(3))
    return SymmetricContraction(irreps_in, (Irrep(0, 1), Irrep(1, -1)), 5, 3, NUM_ELEMENTS)


def all_elements(sc: SymmetricContraction, a: torch.Tensor, groups) -> torch.Tensor:
    """The contraction with the weights of every element contracted (the former way)."""
    p, p_top = sc.monomials.split_top(sc.contract_weights())
    elements = [chunk[0] for chunk in groups.chunks]
    return sc.monomials(a, groups, [p[e] for e in elements], [p_top[e] for e in elements])


def held_elements(module: torch.nn.Module) -> int:
    """Elements whose contracted weights an inference swap holds."""
    if isinstance(module, FrozenContraction):
        return len(module.cache)
    assert isinstance(module, CompiledContraction)
    return int(module.kernel_weights.shape[0])


def held_bytes(module: torch.nn.Module) -> int:
    if isinstance(module, FrozenContraction):
        return sum(t.nbytes for entry in module.cache.values() for t in entry)
    return int(module.kernel_weights.nbytes)


def test_reference_contracts_the_present_elements_only():
    sc = contraction()
    species = torch.tensor([4, 1, 4, 4, 1])
    groups = element_groups(species, NUM_ELEMENTS)
    a = torch.randn(len(species), 5, sc.dim)
    assert tuple(sc.contract_weights([1, 4]).shape[:2]) == (2, 5)
    # not bit for bit: the BLAS may block a product of 2 elements differently from one of 6
    # (AMD EPYC with MKL's zen kernels: 2.8e-17 apart)
    torch.testing.assert_close(
        sc.contract_weights([1, 4]), sc.contract_weights()[[1, 4]], rtol=1e-13, atol=1e-16
    )
    out = sc(a, groups)
    torch.testing.assert_close(out, all_elements(sc, a, groups), rtol=0, atol=1e-13)
    # training: the weights' gradients are those of contracting every element (zero for the
    # absent ones)
    grads = torch.autograd.grad(out.square().sum(), list(sc.weights.values()))
    expected = torch.autograd.grad(
        all_elements(sc, a, groups).square().sum(), list(sc.weights.values())
    )
    for grad, want in zip(grads, expected):
        torch.testing.assert_close(grad, want, rtol=0, atol=1e-12)
        assert grad[[0, 2, 3, 5]].abs().max() == 0
        assert grad[[1, 4]].abs().max() > 0


def test_swaps_hold_the_elements_seen_and_give_the_reference_numbers(cpu_implementation):
    sc = contraction().requires_grad_(False)
    swap = inference_contraction(sc, cpu_implementation)
    assert held_elements(swap) == 0  # nothing contracted at the swap
    calls = [torch.tensor([3, 3, 3]), torch.tensor([3, 0, 5, 3]), torch.tensor([5, 0, 0])]
    held = []
    for species in calls:
        groups = element_groups(species, NUM_ELEMENTS)
        a = torch.randn(len(species), 5, sc.dim, requires_grad=True)
        out = swap(a, groups)
        torch.testing.assert_close(out, sc(a, groups), rtol=1e-11, atol=1e-12)
        # first derivatives (the compiled kernel's backward reads the weights by slot)
        (grad,) = torch.autograd.grad(out.square().sum(), a)
        (want,) = torch.autograd.grad(sc(a, groups).square().sum(), a)
        torch.testing.assert_close(grad, want, rtol=1e-11, atol=1e-12)
        held.append(held_elements(swap))
    assert held == [1, 3, 3]  # grows with the elements seen, never contracts the others
    one_element = held_bytes(swap) / 3
    swap.clear_cache()
    assert held_elements(swap) == 0
    groups = element_groups(torch.tensor([2]), NUM_ELEMENTS)
    a = torch.randn(1, 5, sc.dim)
    torch.testing.assert_close(swap(a, groups), sc(a, groups), rtol=1e-11, atol=1e-12)
    assert held_bytes(swap) == one_element


def test_second_derivatives_with_elements_out_of_order(cpu_implementation):
    """The compiled swap's fallback for second derivatives reads the weights by slot: slots
    are in the order the elements were first seen, not the elements' order."""
    sc = contraction().requires_grad_(False)
    swap = inference_contraction(sc, cpu_implementation)
    swap(torch.randn(1, 5, sc.dim), element_groups(torch.tensor([4]), NUM_ELEMENTS))
    species = torch.tensor([1, 4, 1])
    groups = element_groups(species, NUM_ELEMENTS)
    a = torch.randn(3, 5, sc.dim, requires_grad=True)
    results = []
    for module in (swap, sc):
        (grad,) = torch.autograd.grad(module(a, groups).square().sum(), a, create_graph=True)
        results.append(torch.autograd.grad(grad.sin().sum(), a)[0])
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)


def test_frozen_cache_follows_a_change_of_dtype():
    sc = contraction().requires_grad_(False)
    swap = inference_contraction(sc, "reference")
    groups = element_groups(torch.tensor([0, 2]), NUM_ELEMENTS)
    a = torch.randn(2, 5, sc.dim)
    want = swap(a, groups).float()
    swap.float()  # converts the shared parameters too, not the cache
    out = swap(a.float(), groups)
    assert out.dtype == torch.float32
    assert all(t.dtype == torch.float32 for entry in swap.cache.values() for t in entry)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def copper() -> ase.Atoms:
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=5)
    return atoms


def mixed() -> ase.Atoms:
    atoms = copper()
    atoms.numbers[[0, 2]] = [8, 1]
    return atoms


def test_many_element_model_on_copper_holds_copper_only(cpu_implementation):
    numbers = list(range(1, 31))
    model = make_model(atomic_numbers=numbers, atomic_energies=[-0.1 * z for z in numbers])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fast = for_inference(model, cpu_implementation)
    assert fast.state_dict().keys() == state.keys()
    held = []
    for atoms in (copper(), mixed(), copper()):
        graph = graph_from_atoms(atoms, model.config.r_max)
        out, want = fast(graph, compute_stress=True), model(graph, compute_stress=True)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(out[key], want[key], rtol=0, atol=1e-12)
        held.append([held_elements(p.contraction) for p in fast.products])
    assert held == [[1, 1], [3, 3], [3, 3]]  # Cu, then O and H: never the other 27 elements
    for key, value in fast.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


@pytest.mark.parametrize("first", ["copper", "mixed"])
def test_scripted_model_contracts_the_elements_it_sees(first):
    numbers = list(range(1, 31))
    model = make_model(atomic_numbers=numbers, atomic_energies=[-0.1 * z for z in numbers])
    scripted = script_model(model)
    order = [copper(), mixed()] if first == "copper" else [mixed(), copper()]
    for atoms in order:
        g = graph_from_atoms(atoms, model.config.r_max)
        inputs = (g.positions, g.atomic_numbers, g.cell[0], g.pbc[0], g.edge_index, g.unit_shifts)
        out = scripted(*inputs, compute_stress=True)
        eager = model(g, compute_stress=True)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(out[key], eager[key], rtol=0, atol=1e-12)
    for layer in range(len(model.products)):
        # (iterating a scripted ModuleList yields the Python modules, not the scripted ones)
        contraction = getattr(scripted.model.products, str(layer)).contraction
        assert sorted(contraction.cache.keys()) == [0, 7, 28]  # H, O, Cu
