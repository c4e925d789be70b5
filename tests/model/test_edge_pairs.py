"""Edges in reversed halves: the neighbour list builds them, batches keep them, and the model's
once-per-pair radial features give the results of one evaluation per edge."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from openmace.accel import for_inference
from openmace.data.graph import Graph, batch_atoms, collate, graph_from_atoms, paired_edges
from tests.helpers import (
    compiler_available,
    make_model,
    molecule,
    pooled_messages_case,
    triclinic_cell,
)


def shuffled(graph: Graph, seed: int = 0) -> Graph:
    """The same graph with its edges in a random order (no longer in reversed halves)."""
    order = torch.randperm(graph.edge_index.shape[1], generator=torch.Generator().manual_seed(seed))
    return dataclasses.replace(
        graph, edge_index=graph.edge_index[:, order], unit_shifts=graph.unit_shifts[order]
    )


def assert_reversed_halves(graph: Graph) -> None:
    half = paired_edges(graph.edge_index, graph.unit_shifts)
    assert half > 0 and 2 * half == graph.edge_index.shape[1]
    sender, receiver = graph.edge_index
    shifts = torch.einsum("ei,eij->ej", graph.unit_shifts, graph.cell[graph.batch[sender]])
    vectors = graph.positions[receiver] - graph.positions[sender] + shifts
    torch.testing.assert_close(vectors[half:], -vectors[:half], rtol=0, atol=1e-12)


@pytest.mark.parametrize("atoms", [molecule(), triclinic_cell()], ids=["molecule", "cell"])
def test_neighbour_list_lists_each_pair_then_its_reverse(atoms):
    graph = graph_from_atoms(atoms, 4.5)
    assert_reversed_halves(graph)
    assert not paired_edges(shuffled(graph).edge_index, shuffled(graph).unit_shifts)


def test_batches_of_paired_graphs_stay_paired_and_mixed_batches_are_unpaired():
    graphs = [graph_from_atoms(a, 4.5) for a in (molecule(), triclinic_cell(), molecule(1))]
    assert_reversed_halves(collate(graphs))
    mixed = collate([graphs[0], shuffled(graphs[1])])
    assert paired_edges(mixed.edge_index, mixed.unit_shifts) == 0


@pytest.mark.parametrize("frozen", [True, False], ids=["inference", "autograd"])
def test_results_do_not_depend_on_edge_order(frozen, cpu_implementation):
    """Once per pair (reversed halves) and once per edge (shuffled) give the same numbers."""
    model = make_model(pair_repulsion=True)
    if frozen:
        model = for_inference(model, cpu_implementation)
    graph = batch_atoms([molecule(), triclinic_cell(), triclinic_cell(seed=1)], model.config.r_max)
    paired = model(graph, compute_stress=True)
    per_edge = model(shuffled(graph), compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(paired[key], per_edge[key], rtol=0, atol=1e-12)


def test_paired_pooled_messages_have_the_gradients_of_finite_differences(cpu_implementation):
    pooled, (x, sh, radial), (block, sender, receiver) = pooled_messages_case(paired=True)
    assert torch.autograd.gradcheck(pooled, (x, sh, radial))
    # and equal the autograd path given the radial rows of both halves
    reference = block.messages._reference[0](x, sh, torch.cat([radial, radial]), sender, receiver)
    torch.testing.assert_close(pooled(x, sh, radial), reference, rtol=0, atol=1e-12)


MIXED_LAYOUT_SWAPS = [
    "reference",
    "pytorch",
    "compiled",
    "compiled_row_chunks",
    "training",
    "operators",
    "operators_chunks",
    "operators_kept",
]


def _mixed_layout_swap(name: str, reference, monkeypatch):
    from openmace.accel import messages as edge_messages
    from openmace.accel.messages import InferenceMessages
    from openmace.accel.operators import FusedOperatorMessages, OperatorMessages
    from openmace.accel.training import TrainingMessages
    from openmace.kernels import cpu_kernels
    from openmace.model.radial import MLP

    if name == "reference":
        return reference
    if name == "pytorch":
        return InferenceMessages(reference, None)
    if name not in ("pytorch", "reference") and not compiler_available():
        pytest.skip("no C++ compiler or ninja")
    kernels = cpu_kernels()
    assert kernels is not None
    if name.startswith("compiled"):
        if name == "compiled_row_chunks":  # 2 radial rows per call: chunks straddle the pairs
            row_bytes = reference.tensor_product.num_paths * reference.channels * 8
            monkeypatch.setattr(edge_messages, "KEEP_WEIGHTS_BYTES", 0)
            monkeypatch.setattr(edge_messages, "FUSED_CHUNK_BYTES", 2 * row_bytes)
        return InferenceMessages(reference, kernels)
    if name == "training":
        return TrainingMessages(reference)
    if not isinstance(reference.radial_mlp, MLP):
        return OperatorMessages(reference)
    swap = FusedOperatorMessages(reference)
    swap.chunk_rows = {"operators": 0, "operators_chunks": 3, "operators_kept": -3}[name]
    return swap


@pytest.mark.parametrize("nonlinear", [False, True], ids=["plain_mlp", "layer_norm_mlp"])
@pytest.mark.parametrize("swap", MIXED_LAYOUT_SWAPS)
def test_pairs_then_one_way_edges_into_the_first_atoms_equal_one_row_per_edge(
    swap, nonlinear, monkeypatch
):
    """A LAMMPS domain's layout: P pairs both ways (edge i + P reverses edge i), then edges one
    way, all ending on the first ``receivers`` atoms. Every implementation of the edge messages
    gives, in one call, the messages of those atoms only and the gradients of the reference
    evaluated with one radial row per edge and a row for every atom."""
    options = {"interaction": "nonlinear"} if nonlinear else {}
    model = make_model(hidden_irreps="3x0e+3x1o", radial_mlp=[5, 4], **options)
    reference = model.interactions[1].messages
    reference.edge_chunk = 4  # chunks of rows straddle the pairs' end (P = 5)
    messages = _mixed_layout_swap(swap, reference, monkeypatch)
    gen = torch.Generator().manual_seed(3)
    n, receivers, pairs, one_way = 7, 4, 5, 6
    tp = reference.tensor_product
    dim_in = sum(ir.dim for ir in tp.irreps_in)
    first = torch.randint(0, receivers, (pairs,), generator=gen)
    second = torch.randint(0, receivers, (pairs,), generator=gen)
    sender = torch.cat([second, first, torch.randint(receivers, n, (one_way,), generator=gen)])
    receiver = torch.cat([first, second, torch.randint(0, receivers, (one_way,), generator=gen)])
    num_edges, rows = 2 * pairs + one_way, pairs + one_way
    x = torch.randn(n, dim_in, reference.channels, generator=gen, dtype=torch.float64)
    sh = torch.randn(num_edges, tp.cg_matrix.shape[0], generator=gen, dtype=torch.float64)
    radial = torch.randn(rows, reference.radial_mlp.sizes[0], generator=gen, dtype=torch.float64)
    cutoff = torch.rand(rows, 1, generator=gen, dtype=torch.float64) if nonlinear else None
    inputs = [t.requires_grad_(True) for t in (x, sh, radial, cutoff) if t is not None]

    def per_edge(t):  # rows of the pairs again for their reverses
        return t if t is None else torch.cat([t[:pairs], t])

    expected = reference(x, sh, per_edge(radial), sender, receiver, per_edge(cutoff))[:receivers]
    got = messages(x, sh, radial, sender, receiver, cutoff, receivers)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    g = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    want = torch.autograd.grad(expected, inputs, g)
    have = torch.autograd.grad(got, inputs, g)
    for a, b in zip(have, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
