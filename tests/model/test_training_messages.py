"""The training swap of the edge messages (compiled kernels with a second derivative) gives the
reference's training gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from openmace.accel import for_inference, for_training
from openmace.accel.training import KernelMessages, TrainingMessages
from openmace.data.graph import batch_atoms
from tests.helpers import (
    BLOCK_VARIANTS,
    compiler_available,
    make_model,
    molecule,
    triclinic_cell,
)

pytestmark = pytest.mark.skipif(not compiler_available(), reason="needs the compiled kernels")

VARIANTS = BLOCK_VARIANTS


def loss_and_gradients(model, graph):
    """An energy + force + stress loss and its gradient with respect to every parameter."""
    out = model(graph, compute_forces=True, compute_stress=True, create_graph=True)
    loss = (out["energy"] ** 2).sum() + (out["forces"] ** 2).sum() + (out["stress"] ** 2).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    return out, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_gradients_equal_the_reference(variant, monkeypatch):
    model = make_model(**VARIANTS[variant])
    graph = batch_atoms([molecule(), triclinic_cell(), triclinic_cell(seed=1)], model.config.r_max)
    reference, expected = loss_and_gradients(model, graph)
    fast_model = for_training(copy.deepcopy(model))
    assert all(isinstance(i.messages, TrainingMessages) for i in fast_model.interactions)
    assert fast_model.state_dict().keys() == model.state_dict().keys()
    calls = []
    original = KernelMessages.forward
    monkeypatch.setattr(
        KernelMessages, "forward", staticmethod(lambda *a: calls.append(1) or original(*a))
    )
    fast, got = loss_and_gradients(fast_model, graph)
    assert len(calls) == len(model.interactions)  # the kernels did run
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(fast[key], reference[key], rtol=0, atol=1e-12)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_training_swap_single_precision_and_inference_copy():
    """float32 training gradients close to float64's; an inference copy of a model with the
    swap is the usual fast copy (its reference unwrapped)."""
    model = make_model()
    graph = batch_atoms([molecule(), triclinic_cell()], model.config.r_max)
    _, expected = loss_and_gradients(model, graph)
    fast32 = for_training(copy.deepcopy(model).to(torch.float32))
    _, got = loss_and_gradients(fast32, graph.to(dtype=torch.float32))
    for g, e in zip(got, expected, strict=True):
        scale = e.abs().max().item() + 1e-3
        assert (g.double() - e).abs().max().item() < 1e-3 * scale
    frozen = for_inference(for_training(copy.deepcopy(model)))
    out = frozen(graph, compute_forces=True)
    torch.testing.assert_close(out["forces"], model(graph)["forces"], rtol=0, atol=1e-12)


def test_third_derivative_is_refused():
    """A derivative of the training gradient (create_graph through the backward of the
    backward) needs a third derivative of the messages: one clear error."""
    model = for_training(make_model())
    graph = batch_atoms([molecule()], model.config.r_max)
    out = model(graph, compute_forces=True, create_graph=True)
    params = [p for p in model.parameters() if p.requires_grad]
    with pytest.raises(RuntimeError, match="third derivatives"):
        torch.autograd.grad(out["forces"].pow(2).sum(), params, create_graph=True)
