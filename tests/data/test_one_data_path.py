"""One data path: one builder of structure graphs, one neighbour list within r_max per
training structure (shared by statistics, batches, validation and error tables), graphs from
the parsed arrays (no ``ase.Atoms`` round trip), and file facts returned openly."""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import fields
from pathlib import Path

import ase
import pytest
import torch

import openmace
import openmace.data.graph as graph_module
from openmace.calculators.neighbours import SkinNeighbourList
from openmace.data.configurations import (
    Configuration,
    Keys,
    configuration_from_atoms,
    read_configurations,
    read_file,
)
from openmace.data.dataset import GraphDataset
from openmace.data.graph import Graph, graph_from_arrays, graph_from_atoms, neighbour_list
from openmace.data.validation import DISTANCE_SEARCH
from openmace.evaluation.predict import predict_configurations
from openmace.train.config import build_config
from openmace.train.loop import Trainer
from tests.helpers import TINY_MODEL, make_model, molecule, molecules, triclinic_cell, write_xyz


@pytest.fixture
def builds(monkeypatch) -> Counter:
    """Neighbour-list builds by cutoff (every build goes through vesin in data/graph.py)."""
    counts: Counter = Counter()
    real = graph_module.NeighborList

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, cutoff: float, **kwargs) -> None:
            super().__init__(cutoff=cutoff, **kwargs)
            self.counted_cutoff = cutoff

        def compute(self, *args, **kwargs):
            counts[self.counted_cutoff] += 1
            return super().compute(*args, **kwargs)

    monkeypatch.setattr(graph_module, "NeighborList", Counting)
    return counts


def assert_same_graph(a: Graph, b: Graph) -> None:
    for f in fields(Graph):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), f.name
        else:
            assert x == y, f.name


@pytest.mark.parametrize("atoms", [molecule(), triclinic_cell()], ids=["molecule", "periodic"])
def test_every_structure_graph_comes_from_graph_from_arrays(atoms: ase.Atoms):
    r_max = 3.0
    positions, numbers = atoms.get_positions(), atoms.get_atomic_numbers()
    cell, pbc = atoms.get_cell()[:], atoms.get_pbc()
    edges = neighbour_list(positions, cell, pbc, r_max)
    reference = graph_from_arrays(positions, numbers, cell, pbc, *edges)
    assert_same_graph(graph_from_atoms(atoms, r_max), reference)
    assert_same_graph(SkinNeighbourList(r_max, skin=0.0).graph(atoms), reference)
    config = configuration_from_atoms(atoms, Keys(), "memory", 0)
    assert_same_graph(GraphDataset([config], r_max).graphs[0], reference)


def test_graph_is_assembled_only_by_graph_from_arrays_and_collate():
    """No other function of the package builds a :class:`Graph` field by field."""
    package = Path(openmace.__file__).parent
    builders = set()
    for path in package.rglob("*.py"):
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", getattr(node.func, "attr", None))
                    if name == "Graph":
                        builders.add(f"{path.relative_to(package).as_posix()}:{func.name}")
    assert builders == {"data/graph.py:graph_from_arrays", "data/graph.py:collate"}


def test_file_facts_are_returned_not_hidden_in_a_structure(tmp_path):
    path = write_xyz(tmp_path / "data.xyz", molecules(2))
    data = read_file(path)
    assert data.path == path
    assert {"REF_energy", "REF_forces"} <= set(data.available_keys)
    assert all(not hasattr(c, "extra") for c in data.configs)
    assert len(read_configurations(path)) == 2


def test_training_builds_one_neighbour_list_per_structure(tmp_path, builds):
    train = write_xyz(tmp_path / "train.xyz", molecules(10))
    test = write_xyz(tmp_path / "test.xyz", molecules(3, seed=9))
    values = dict(
        TINY_MODEL,
        train_file=str(train),
        test_file=str(test),
        work_dir=str(tmp_path / "run"),
        epochs=1,
        quiet=True,
        seed=7,
        e0s="average",
        valid_fraction=0.2,
    )
    trainer = Trainer(build_config({}, values), progress=False)
    trainer.setup()
    trainer.run()
    trainer.finish()
    r_max = trainer.model.config.r_max
    # 8 train + 2 valid + 3 test: statistics, batches, validation and error tables share them
    assert builds[r_max] == 13
    assert builds[DISTANCE_SEARCH] == 13  # the reader's overlap check (another cutoff)
    assert set(builds) == {r_max, DISTANCE_SEARCH}


def test_eval_builds_graphs_from_the_parsed_arrays(tmp_path, builds, monkeypatch):
    configs = read_configurations(write_xyz(tmp_path / "data.xyz", molecules(5)))
    builds.clear()
    assert not hasattr(Configuration, "to_atoms")  # no Atoms round trip left to take
    model = make_model()
    outputs = list(predict_configurations(model, configs, batch_size=2))
    assert len(outputs) == 5
    assert [len(o["forces"]) for o in outputs] == [len(c) for c in configs]
    assert builds == {model.config.r_max: 5}
    GraphDataset(configs, model.config.r_max)
    assert builds == {model.config.r_max: 10}
