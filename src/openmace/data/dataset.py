"""Labelled graphs for training: neighbour lists built once per structure, batched on demand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from openmace.data.configurations import Configuration
from openmace.data.errors import DataError
from openmace.data.geometry import check_remaining_pairs
from openmace.data.graph import Graph, build_graph, collate
from openmace.data.summary import Summary


class Chain(Sequence):
    """Sequences one after another, indexed as one (joined lazy data sets)."""

    def __init__(self, parts: list[Sequence]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, k):
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        k = k % len(self)
        part = int(np.searchsorted(self.starts, k, side="right")) - 1
        return self.parts[part][k - int(self.starts[part])]


@dataclass
class Batch:
    graph: Graph
    num_atoms: torch.Tensor  # [G]
    energy: torch.Tensor  # [G] (0 where missing)
    has_energy: torch.Tensor  # [G] bool
    forces: torch.Tensor  # [N, 3]
    has_forces: torch.Tensor  # [N] bool (per atom, from its structure)
    stress: torch.Tensor  # [G, 3, 3]
    has_stress: torch.Tensor  # [G] bool
    virials: torch.Tensor  # [G, 3, 3]
    has_virials: torch.Tensor  # [G] bool
    weight: torch.Tensor  # [G] config_weight
    config_types: list[str]

    def to(self, device, dtype) -> Batch:
        def conv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return Batch(
            graph=self.graph.to(device, dtype),
            **{
                k: conv(getattr(self, k))
                for k in (
                    "num_atoms",
                    "energy",
                    "has_energy",
                    "forces",
                    "has_forces",
                    "stress",
                    "has_stress",
                    "virials",
                    "has_virials",
                    "weight",
                )
            },
            config_types=self.config_types,
        )


def _zeros33() -> np.ndarray:
    return np.zeros((3, 3))


def configuration_graph(config: Configuration, r_max: float) -> Graph:
    """One structure's graph, straight from its parsed arrays (one neighbour-list build); a
    list that cannot be built (too large for memory, ...) is a :class:`DataError` naming the
    structure."""
    try:
        graph = build_graph(config.positions, config.atomic_numbers, config.cell, config.pbc, r_max)
    except ValueError as err:
        raise DataError(config.source, config.index, str(err)) from err
    if config.total_charge is not None:
        graph.total_charge = torch.tensor([config.total_charge], dtype=torch.float64)
    if config.total_spin is not None:
        graph.total_spin = torch.tensor([config.total_spin], dtype=torch.float64)
    return graph


class GraphDataset:
    """Structures with their graphs and labels. The neighbour lists within ``r_max`` are built
    here, once per structure, and reused by everything downstream: statistics, training
    batches, validation and the final error tables. ``head``: the head index of every structure
    (a multi-head model's training; None: the model's default head).

    A prepared data set (:mod:`openmace.data.prepared`) gives a lazy one instead
    (:meth:`lazy`): ``configs`` and ``graphs`` are then sequences that read each structure from
    the shards when asked, and the :attr:`summary` comes from the shards' stored facts."""

    def __init__(self, configs: list[Configuration], r_max: float, head: int | None = None) -> None:
        self.configs = configs
        self.r_max = r_max
        self._summary: Summary | None = None
        self.graphs, pairs, atoms, left = [], 0, 0, sum(len(c) for c in configs)
        for c in configs:  # refused early when the whole set's lists would not fit
            self.graphs.append(configuration_graph(c, r_max))
            pairs += self.graphs[-1].edge_index.shape[1]
            atoms, left = atoms + len(c), left - len(c)
            check_remaining_pairs(pairs, atoms, left, len(configs) - len(self.graphs), r_max)
        if head is not None:
            self.set_head(head)

    @classmethod
    def lazy(cls, configs: Sequence, graphs: Sequence, r_max: float, summary: Summary):
        """A data set over sequences that load each structure and graph when indexed."""
        out = cls.__new__(cls)
        out.configs, out.graphs, out.r_max, out._summary = configs, graphs, r_max, summary
        return out

    @property
    def summary(self) -> Summary:
        """The structures' :class:`Summary`, with each graph's edge count."""
        if self._summary is None:
            edges = [g.edge_index.shape[1] for g in self.graphs]
            self._summary = Summary.from_configs(self.configs, num_edges=edges)
        return self._summary

    def set_head(self, head: int) -> None:
        """Mark every structure for head ``head`` of a multi-head model."""
        if hasattr(self.graphs, "set_head"):  # lazy graphs: set as each one is loaded
            self.graphs.set_head(head)
            return
        for graph in self.graphs:
            graph.head = torch.tensor([head], dtype=torch.long)

    @classmethod
    def joined(cls, parts: list[GraphDataset]) -> GraphDataset:
        """One dataset of the structures of ``parts``, in order (their graphs are shared, not
        rebuilt); every part must have the same ``r_max``."""
        if len({p.r_max for p in parts}) != 1:
            raise ValueError("joined datasets need the same r_max")
        if all(isinstance(p.configs, list) and isinstance(p.graphs, list) for p in parts):
            configs = [c for p in parts for c in p.configs]
            graphs = [g for p in parts for g in p.graphs]
        else:
            configs = Chain([p.configs for p in parts])
            graphs = Chain([p.graphs for p in parts])
        return cls.lazy(configs, graphs, parts[0].r_max, Summary.concat([p.summary for p in parts]))

    def __len__(self) -> int:
        return len(self.configs)

    def batch(self, indices: list[int] | np.ndarray) -> Batch:
        configs = [self.configs[i] for i in indices]
        n = [len(c) for c in configs]

        def stack(values, default) -> torch.Tensor:
            return torch.tensor(
                np.array([default() if v is None else v for v in values]), dtype=torch.float64
            )

        return Batch(
            graph=collate([self.graphs[i] for i in indices]),
            num_atoms=torch.tensor(n, dtype=torch.float64),
            energy=torch.tensor([c.energy or 0.0 for c in configs], dtype=torch.float64),
            has_energy=torch.tensor([c.energy is not None for c in configs]),
            forces=torch.cat(
                [
                    torch.tensor(c.forces if c.forces is not None else np.zeros((len(c), 3)))
                    for c in configs
                ]
            ),
            has_forces=torch.tensor(np.repeat([c.forces is not None for c in configs], n)),
            stress=stack([c.stress for c in configs], _zeros33),
            has_stress=torch.tensor([c.stress is not None for c in configs]),
            virials=stack([c.virials for c in configs], _zeros33),
            has_virials=torch.tensor([c.virials is not None for c in configs]),
            weight=torch.tensor([c.weight for c in configs], dtype=torch.float64),
            config_types=[c.config_type for c in configs],
        )

    def batches(self, batch_size: int, shuffle_seed: int | None = None):
        """Batches in order, or shuffled by a seed (the same seed gives the same order)."""
        order = np.arange(len(self))
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(self))
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])


class _BatchSource:
    """Map-style source for a DataLoader: a list of indices → that :class:`Batch` (None for
    an empty list: a data-parallel rank's empty share)."""

    def __init__(self, dataset: GraphDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, indices) -> Batch | None:
        return self.dataset.batch(indices) if len(indices) else None


def _single(item):
    return item


def load_batches(dataset: GraphDataset, index_lists: list, workers: int = 0):
    """The batches of ``index_lists``, in order: read and collated here (``workers`` 0), or
    by ``workers`` DataLoader processes ahead of use (a prepared set's shards are opened in
    each worker)."""
    source = _BatchSource(dataset)
    if workers <= 0:
        for indices in index_lists:
            yield source[indices]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        source,  # type: ignore[arg-type]
        sampler=index_lists,
        batch_size=None,
        num_workers=workers,
        collate_fn=_single,
        prefetch_factor=2,
    )
    yield from loader
