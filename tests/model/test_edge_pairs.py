"""Edges in reversed halves: the neighbour list builds them, batches keep them, and the model's
once-per-pair radial features give the results of one evaluation per edge."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from openmace.accel import for_inference
from openmace.data.graph import Graph, batch_atoms, collate, graph_from_atoms, paired_edges
from tests.helpers import make_model, molecule, pooled_messages_case, triclinic_cell


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
