"""Prepared data sets: structures in HDF5 shards, read lazily.

``openmace prepare-data`` (:mod:`openmace.data.prepare`) writes a folder::

    dataset.json          manifest: format version, r_max, label keys, source files (SHA-256),
                          shards (structure counts, SHA-256), skipped structures, statistics
    shard-000000-000.h5   structures, one shard per unit of work (at most --shard-size each)
    ...

Each shard holds, column by column (ragged per-atom arrays are concatenated; ``atom_offsets``
says where each structure starts): ``positions`` [N, 3] f8 (Å), ``numbers`` [N] u1, ``forces``
[N, 3] f8 (eV/Å, zeros where a structure has none), and per structure ``atom_offsets`` [S + 1],
``cell`` [S, 3, 3], ``pbc`` [S, 3], ``energy`` [S] (eV), ``stress`` [S, 3, 3] (eV/Å³, ASE
sign), ``virials`` [S, 3, 3] (eV), ``charge``/``spin`` [S] (NaN where missing), ``has_forces``
[S], ``weight`` [S], ``config_type`` [S] str, ``source_file`` [S] (index into the manifest's
files), ``source_index`` [S], ``num_edges`` [S] (within the manifest's r_max) and
``forces_sumsq`` [S] (Σ F²: the scale statistic). With neighbours stored, ``pair_offsets``
[S + 1], ``pair_i``, ``pair_j`` [H] i4 and ``pair_shift`` [H, 3] i2 hold each structure's
pairs once; the graph's edges are those pairs then the same pairs reversed, exactly the order
:func:`openmace.data.graph.neighbour_list` gives.

Values are stored at full precision (float64): a structure read back equals the parsed one bit
for bit, so training from a prepared folder equals training from the file it came from.

Why HDF5 (h5py), not LMDB: see ``benchmarks/README.md`` (dataset formats): HDF5 is what the
field's tools read (mace-torch's preprocessed data, ASE, h5py everywhere), one file per shard is
easy to copy, checksum and inspect, and its column layout reads a structure in a few slices.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from openmace.data.configurations import Configuration
from openmace.data.dataset import GraphDataset, configuration_graph
from openmace.data.errors import DataError
from openmace.data.graph import Graph, graph_from_arrays
from openmace.data.summary import Summary

MANIFEST = "dataset.json"
PER_STRUCTURE = (
    "atom_offsets", "cell", "pbc", "energy", "stress", "virials", "charge", "spin", "has_forces",
    "weight", "source_file", "source_index", "pair_offsets", "num_edges", "forces_sumsq",
)  # fmt: skip
PER_ATOM = ("positions", "numbers", "forces", "pair_i", "pair_j", "pair_shift")
SHARDS_CACHED = 64
FORMAT = "openmace-prepared-dataset"
VERSION = 1


def is_prepared(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a prepared data set folder (it holds a manifest)."""
    return (Path(path) / MANIFEST).is_file()


def _h5py():
    try:
        import h5py
    except ImportError as err:  # a dependency; say what to install rather than a traceback
        raise RuntimeError("prepared data sets need h5py: pip install h5py") from err
    return h5py


class PreparedStore:
    """An open prepared folder: its manifest, its shards (opened when first read, once per
    process, so DataLoader workers open their own) and its :class:`Summary`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise DataError(self.folder, None, f"not a prepared data set (no {MANIFEST})")
        try:
            self.manifest = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(path, None, f"unreadable manifest: {err}") from err
        if self.manifest.get("format") != FORMAT:
            raise DataError(path, None, "not an openmace prepared data set manifest")
        if self.manifest.get("version") != VERSION:
            raise DataError(
                path,
                None,
                f"prepared with format version {self.manifest.get('version')}; this openmace "
                f"reads version {VERSION}: prepare the data again",
            )
        self.r_max = float(self.manifest["r_max"])
        self.has_neighbours = bool(self.manifest["neighbours"])
        self.files = [f["path"] for f in self.manifest["files"]]
        self.shards = [s["name"] for s in self.manifest["shards"]]
        counts = [int(s["structures"]) for s in self.manifest["shards"]]
        self.starts = np.cumsum([0] + counts)
        for name in self.shards:
            if not (self.folder / name).is_file():
                raise DataError(self.folder / name, None, "shard listed in the manifest is missing")
        self._handles: dict[int, object] = {}
        self._columns: dict[int, dict] = {}
        self._pid = os.getpid()
        self._summary: Summary | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:  # to DataLoader workers: without open files or caches
        state = dict(self.__dict__)
        state["_handles"], state["_columns"] = {}, {}
        return state

    def _shard(self, k: int):
        if os.getpid() != self._pid:  # a forked worker: its own handles
            self._handles, self._columns, self._pid = {}, {}, os.getpid()
        if k not in self._handles:
            path = self.folder / self.shards[k]
            try:
                self._handles[k] = _h5py().File(path, "r")
            except OSError as err:
                raise DataError(path, None, f"cannot open shard: {err}") from err
        return self._handles[k]

    def locate(self, i: int) -> tuple[int, int]:
        """Shard and row of structure ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return k, i - int(self.starts[k])

    @property
    def summary(self) -> Summary:
        """Every structure's :class:`Summary`, from the shards' per-structure columns (the
        ones :meth:`columns` reads) and atomic numbers."""
        if self._summary is None:
            files = np.array(self.files, dtype=object)
            parts = []
            for k in range(len(self.shards)):
                c = self.columns(k)
                parts.append(
                    Summary(
                        num_atoms=np.diff(c["atom_offsets"]).astype(np.int64),
                        numbers=c["numbers"][:],
                        energy=c["energy"],
                        has_forces=c["has_forces"],
                        has_stress=~np.isnan(c["stress"][:, 0, 0]),
                        has_virials=~np.isnan(c["virials"][:, 0, 0]),
                        forces_sumsq=c["forces_sumsq"],
                        config_type=c["config_type"].astype(object),
                        source=files[c["source_file"]],
                        index=c["source_index"].astype(np.int64),
                        num_edges=c["num_edges"].astype(np.int64),
                    )
                )
            self._summary = Summary.concat(parts)
        return self._summary

    def columns(self, k: int) -> dict:
        """Shard ``k``'s per-structure columns (small: about 250 bytes a structure) and its
        per-atom datasets, kept for the last :data:`SHARDS_CACHED` shards used."""
        self._shard(k)  # (a forked worker drops its parent's handles and columns here)
        cached = self._columns.pop(k, None)
        if cached is None:
            h = self._shard(k)
            cached = {name: h[name][:] for name in PER_STRUCTURE if name in h}
            cached["config_type"] = h["config_type"].asstr()[:]
            for name in PER_ATOM:
                if name in h:
                    cached[name] = h[name]  # datasets: sliced per structure
            while len(self._columns) >= SHARDS_CACHED:
                self._columns.pop(next(iter(self._columns)))
        self._columns[k] = cached  # most recent last
        return cached

    @lru_cache(maxsize=512)  # noqa: B019 (a structure is read for its config and its graph)
    def read(self, i: int) -> tuple[Configuration, np.ndarray | None]:
        """Structure ``i`` and, when stored, its pairs (i, j, shift)."""
        k, row = self.locate(i)
        c = self.columns(k)
        a, b = int(c["atom_offsets"][row]), int(c["atom_offsets"][row + 1])

        def optional(name):
            value = c[name][row]
            return None if np.isnan(value.reshape(-1)[0]) else value.copy()

        def number(name):
            value = float(c[name][row])
            return None if np.isnan(value) else value

        config = Configuration(
            atomic_numbers=c["numbers"][a:b].astype(np.int64),
            positions=c["positions"][a:b],
            cell=c["cell"][row].copy(),
            pbc=c["pbc"][row].astype(bool),
            energy=number("energy"),
            forces=c["forces"][a:b] if bool(c["has_forces"][row]) else None,
            stress=optional("stress"),
            virials=optional("virials"),
            config_type=str(c["config_type"][row]),
            weight=float(c["weight"][row]),
            source=self.files[int(c["source_file"][row])],
            index=int(c["source_index"][row]),
            total_charge=number("charge"),
            total_spin=number("spin"),
        )
        pairs = None
        if self.has_neighbours:
            p, q = int(c["pair_offsets"][row]), int(c["pair_offsets"][row + 1])
            pairs = (c["pair_i"][p:q], c["pair_j"][p:q], c["pair_shift"][p:q])
        return config, pairs

    def graph(self, i: int, r_max: float) -> Graph:
        """Structure ``i``'s graph within ``r_max``: from the stored pairs when they were found
        within this ``r_max``, else built now."""
        config, pairs = self.read(i)
        if pairs is None or r_max != self.r_max:
            return configuration_graph(config, r_max)
        pi, pj, shift = (np.asarray(x) for x in pairs)
        shift = shift.astype(np.float64)
        graph = graph_from_arrays(
            config.positions,
            config.atomic_numbers,
            config.cell,
            config.pbc,
            np.concatenate([pi, pj]).astype(np.int64),
            np.concatenate([pj, pi]).astype(np.int64),
            np.concatenate([shift, -shift]),
        )
        if config.total_charge is not None:
            graph.total_charge = torch.tensor([config.total_charge], dtype=torch.float64)
        if config.total_spin is not None:
            graph.total_spin = torch.tensor([config.total_spin], dtype=torch.float64)
        return graph


class PreparedStructures(Sequence):
    """Structures ``rows`` of a :class:`PreparedStore` as a sequence of
    :class:`Configuration` (each read when indexed); ``summary`` is theirs."""

    def __init__(self, store: PreparedStore, rows: np.ndarray | None = None) -> None:
        self.store = store
        self.rows = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)
        self._summary: Summary | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.subset(np.arange(len(self))[k])
        return self.store.read(int(self.rows[k]))[0]

    def subset(self, positions) -> PreparedStructures:
        """The structures at ``positions`` of this sequence, in that order."""
        return PreparedStructures(self.store, self.rows[np.asarray(positions, dtype=np.int64)])

    @property
    def summary(self) -> Summary:
        if self._summary is None:
            self._summary = self.store.summary.take(self.rows)
        return self._summary


class PreparedGraphs(Sequence):
    """The graphs of :class:`PreparedStructures`, built (or read) when indexed."""

    def __init__(self, structures: PreparedStructures, r_max: float) -> None:
        self.structures, self.r_max, self.head = structures, r_max, None

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, k: int) -> Graph:
        graph = self.structures.store.graph(int(self.structures.rows[k]), self.r_max)
        if self.head is not None:
            graph.head = torch.tensor([self.head], dtype=torch.long)
        return graph

    def set_head(self, head: int) -> None:
        self.head = head


def prepared_dataset(structures: PreparedStructures, r_max: float) -> GraphDataset:
    """A lazy :class:`GraphDataset` of prepared structures. Its statistics need the edge
    counts within ``r_max``: the data must have been prepared with this ``r_max``."""
    store = structures.store
    if r_max != store.r_max:
        raise DataError(
            store.folder,
            None,
            f"prepared with --r-max {store.r_max:g}; the model's r_max is {r_max:g}: run "
            f"openmace prepare-data again with --r-max {r_max:g}",
        )
    return GraphDataset.lazy(
        structures, PreparedGraphs(structures, r_max), r_max, structures.summary
    )
