"""The inference path of the edge messages (compiled kernels, or workspace buffers and a
hand-written backward) gives the autograd path's energies, forces, stress and second
derivatives."""

from __future__ import annotations

import pytest
import torch

from openmace.data.graph import batch_atoms
from openmace.model import edge_messages
from openmace.model.edge_messages import PooledMessages
from tests.conftest import make_model, molecule, triclinic_cell
from tests.model.conftest import compiler_available

VARIANTS = {
    "default": {},
    "L2_mixed_parity": {"hidden_irreps": "6x0e+6x1o+6x2e+6x1e", "pair_repulsion": True},
    "one_radial_layer": {"radial_mlp": []},
    "non_residual_first": {"correlation": 1, "max_ell": 2},
}


def predictions(model, graph, frozen: bool) -> dict[str, torch.Tensor]:
    model.requires_grad_(not frozen)  # frozen weights select the inference path
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
    reference = predictions(model, graph, frozen=False)
    for interaction in model.interactions:
        interaction.edge_chunk = 7  # many chunks, the last one partial
    assert graph.edge_index.shape[1] > 20 * 7
    calls = []
    original = PooledMessages.forward
    monkeypatch.setattr(
        PooledMessages, "forward", staticmethod(lambda *a: calls.append(1) or original(*a))
    )
    fast = predictions(model, graph, frozen=True)
    assert len(calls) == len(model.interactions)  # the inference path did run
    for key in ("energy", "node_energy", "forces", "stress", "virials"):
        torch.testing.assert_close(fast[key], reference[key], rtol=0, atol=1e-12)


def pooled_messages_case(paired: bool = False):
    """A frozen interaction block (4-edge chunks) and random inputs for its pooled messages;
    ``paired``: the second half of the edges reverses the first and the radial features are
    given for the first half only (paired_edges in graph.py)."""
    model = make_model(hidden_irreps="3x0e+3x1o", radial_mlp=[5, 4])
    model.requires_grad_(False)
    block = model.interactions[1]
    block.edge_chunk = 4
    gen = torch.Generator().manual_seed(0)
    n, e, c = 4, 10 if paired else 9, block.channels
    dim_in = sum(ir.dim for ir in block.irreps_in)
    x = torch.randn(n, dim_in, c, generator=gen, requires_grad=True)
    sh = torch.randn(e, block.tensor_product.cg_matrix.shape[0], generator=gen, requires_grad=True)
    rows = e // 2 if paired else e
    radial = torch.randn(rows, block.radial_mlp_sizes[0], generator=gen, requires_grad=True)
    sender = torch.randint(0, n, (e,), generator=gen)
    receiver = torch.randint(0, n, (e,), generator=gen)
    if paired:
        sender[rows:], receiver[rows:] = receiver[:rows], sender[:rows]

    def pooled(x, sh, radial):
        return PooledMessages.apply(x, sh, radial, sender, receiver, block)

    return pooled, (x, sh, radial), (block, sender, receiver)


def test_gradients_of_pooled_messages_match_finite_differences(cpu_implementation):
    pooled, inputs, _ = pooled_messages_case()
    assert torch.autograd.gradcheck(pooled, inputs)


def test_second_derivatives_fall_back_to_autograd_and_match_finite_differences(
    cpu_implementation,
):
    """create_graph=True (Hessians, force training through frozen weights) stays exact."""
    pooled, inputs, _ = pooled_messages_case()
    assert torch.autograd.gradgradcheck(pooled, inputs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernels_equal_pytorch_operations_on_a_large_cell(threads, dtype, monkeypatch):
    """Enough edges for the kernels to split the radial rows between threads; float32 too."""
    if not compiler_available():
        pytest.skip("no C++ compiler or ninja")
    model = make_model(hidden_irreps="16x0e+16x1o").to(dtype)
    model.requires_grad_(False)
    atoms = triclinic_cell() * (2, 2, 2)
    graph = batch_atoms([atoms], model.config.r_max)
    assert graph.edge_index.shape[1] > 4 * 64 * 2  # rows for two threads
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        monkeypatch.setenv("OPENMACE_KERNELS", "0")
        reference = model(graph, compute_stress=True)
        monkeypatch.setenv("OPENMACE_KERNELS", "1")
        compiled = model(graph, compute_stress=True)
    finally:
        torch.set_num_threads(previous)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    for key in ("energy", "forces", "stress"):
        scale = reference[key].abs().max().clamp(min=1.0)
        torch.testing.assert_close(
            compiled[key] / scale, reference[key] / scale, rtol=0, atol=tolerance
        )
