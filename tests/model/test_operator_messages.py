"""The PyTorch-operator swap (what the LAMMPS model file runs) gives the autograd path's
energies, forces and stress; where the radial MLP is plain, its wide last layer runs inside
``openmace::pooled_messages_mlp`` chunk by chunk (here a few rows per chunk, the weights kept or
made again in the backward pass)."""

from __future__ import annotations

import pytest
import torch

from openmace.accel import for_inference
from openmace.accel.operators import FusedOperatorMessages, OperatorMessages
from openmace.data.graph import batch_atoms
from tests.helpers import compiler_available, make_model, molecule, triclinic_cell

VARIANTS = {
    "default": {},
    "L2_mixed_parity": {"hidden_irreps": "6x0e+6x1o+6x2e+6x1e", "pair_repulsion": True},
    "one_radial_layer": {"radial_mlp": []},
    "envelope_after_mlp": {"apply_cutoff": False},
    "nonlinear": {"interaction": "nonlinear", "agnostic_product": True},
}


@pytest.mark.parametrize("chunk_rows", [0, 7, -7])  # whole; chunks; kept, gradient in chunks
@pytest.mark.parametrize("variant", VARIANTS)
def test_operators_equal_the_autograd_path(variant, chunk_rows):
    if not compiler_available():
        pytest.skip("no C++ compiler or ninja")
    model = make_model(**VARIANTS[variant])
    graph = batch_atoms([molecule(), triclinic_cell(), triclinic_cell(seed=1)], model.config.r_max)
    reference = model(graph, compute_forces=True, compute_stress=True)
    fast_model = for_inference(model, "operators")
    swaps = [interaction.messages for interaction in fast_model.interactions]
    fused = variant != "nonlinear"  # the LayerNorm MLP keeps the unfused operator
    assert all(isinstance(s, FusedOperatorMessages) == fused for s in swaps)
    assert all(isinstance(s, OperatorMessages) for s in swaps)
    for swap in swaps:
        swap.chunk_rows = chunk_rows
    assert graph.edge_index.shape[1] > 20 * 7  # many chunks, the last one partial
    fast = fast_model(graph, compute_forces=True, compute_stress=True)
    for key in ("energy", "node_energy", "forces", "stress"):
        torch.testing.assert_close(fast[key], reference[key], rtol=0, atol=1e-12)
