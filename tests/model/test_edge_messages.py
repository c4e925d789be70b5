"""The inference path of the edge messages (compiled kernels, or workspace buffers and a
hand-written backward) gives the autograd path's energies, forces, stress and second
derivatives."""

from __future__ import annotations

import pytest
import torch

from openmace.accel import for_inference
from openmace.accel import messages as edge_messages
from openmace.accel.messages import PooledMessages
from openmace.data.graph import batch_atoms
from tests.helpers import (
    BLOCK_VARIANTS,
    compiler_available,
    make_model,
    molecule,
    pooled_messages_case,
    triclinic_cell,
)

VARIANTS = BLOCK_VARIANTS


def predictions(model, graph) -> dict[str, torch.Tensor]:
    return model(graph, compute_forces=True, compute_stress=True)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("keep_weights", [True, False])
def test_inference_path_equals_autograd_path(
    variant, keep_weights, cpu_implementation, monkeypatch
):
    if not keep_weights:  # radial weights recomputed in the backward pass, chunk by chunk
        monkeypatch.setattr(edge_messages, "KEEP_WEIGHTS_BYTES", 0)
        monkeypatch.setattr(edge_messages, "FUSED_CHUNK_BYTES", 1)  # one radial row per call
    model = make_model(**VARIANTS[variant])
    graph = batch_atoms([molecule(), triclinic_cell(), triclinic_cell(seed=1)], model.config.r_max)
    reference = predictions(model, graph)
    fast_model = for_inference(model, cpu_implementation)
    for interaction in fast_model.interactions:
        interaction.messages.edge_chunk = 7  # many chunks, the last one partial
    assert graph.edge_index.shape[1] > 20 * 7
    calls = []
    original = PooledMessages.forward
    monkeypatch.setattr(
        PooledMessages, "forward", staticmethod(lambda *a: calls.append(1) or original(*a))
    )
    fast = predictions(fast_model, graph)
    assert len(calls) == len(model.interactions)  # the inference path did run
    for key in ("energy", "node_energy", "forces", "stress", "virials"):
        torch.testing.assert_close(fast[key], reference[key], rtol=0, atol=1e-12)


def test_inference_plan_follows_changed_weights(cpu_implementation):
    """The plan (weights with the fan-in and activation scales folded in) is kept between
    calls; a weight changed in place or replaced afterwards is used, not the kept copy."""
    model = make_model()
    graph = batch_atoms([molecule()], model.config.r_max)
    fast_model = for_inference(model, cpu_implementation)
    predictions(fast_model, graph)
    fast_mlp = fast_model.interactions[0].messages.radial_mlp
    with torch.no_grad():
        fast_mlp.weights[1].mul_(1.5)  # in place
        model.interactions[0].messages.radial_mlp.weights[1].mul_(1.5)
    reference, fast = predictions(model, graph), predictions(fast_model, graph)
    torch.testing.assert_close(fast["forces"], reference["forces"], rtol=0, atol=1e-12)
    replaced = torch.nn.Parameter(fast_mlp.weights[0].detach() * 0.5, requires_grad=False)
    fast_mlp.weights[0] = replaced  # a new tensor
    with torch.no_grad():
        model.interactions[0].messages.radial_mlp.weights[0].mul_(0.5)
    reference, fast = predictions(model, graph), predictions(fast_model, graph)
    torch.testing.assert_close(fast["energy"], reference["energy"], rtol=0, atol=1e-12)
    torch.testing.assert_close(fast["forces"], reference["forces"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("nonlinear", [False, True], ids=["mlp", "layernorm_mlp_last_layer"])
def test_gradients_of_pooled_messages_match_finite_differences(cpu_implementation, nonlinear):
    pooled, inputs, _ = pooled_messages_case(nonlinear=nonlinear)
    assert torch.autograd.gradcheck(pooled, inputs)


@pytest.mark.parametrize("nonlinear", [False, True], ids=["mlp", "layernorm_mlp_last_layer"])
def test_second_derivatives_fall_back_to_autograd_and_match_finite_differences(
    cpu_implementation, nonlinear
):
    """create_graph=True (Hessians, force training through frozen weights) stays exact."""
    pooled, inputs, _ = pooled_messages_case(nonlinear=nonlinear)
    assert torch.autograd.gradgradcheck(pooled, inputs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [16, 48, 97])
def test_compiled_kernels_equal_pytorch_operations_on_a_large_cell(
    threads, dtype, channels, monkeypatch
):
    """Enough edges for the kernels to split the radial rows between threads; float32 too;
    channel counts that take every block width of the kernels (64 to 768 bytes, single
    channels: 97 = 96 + 1)."""
    if not compiler_available():
        pytest.skip("no C++ compiler or ninja")
    model = make_model(hidden_irreps=f"{channels}x0e+{channels}x1o").to(dtype)
    atoms = triclinic_cell() * (2, 2, 2)
    graph = batch_atoms([atoms], model.config.r_max)
    assert graph.edge_index.shape[1] > 4 * 64 * 2  # rows for two threads
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reference = for_inference(model, "pytorch")(graph, compute_stress=True)
        compiled = for_inference(model, "compiled")(graph, compute_stress=True)
    finally:
        torch.set_num_threads(previous)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    for key in ("energy", "forces", "stress"):
        scale = reference[key].abs().max().clamp(min=1.0)
        torch.testing.assert_close(
            compiled[key] / scale, reference[key] / scale, rtol=0, atol=tolerance
        )
