"""From a training config to validated data sets, E0s and statistics, before any long work."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from openmace.data.configurations import Configuration, Keys, read_file
from openmace.data.dataset import GraphDataset
from openmace.data.e0 import as_summary, resolve_e0s
from openmace.data.errors import DataError
from openmace.data.prepared import (
    MANIFEST,
    PreparedStore,
    PreparedStructures,
    is_prepared,
    prepared_dataset,
)
from openmace.train.config import TrainConfig

log = logging.getLogger("openmace.train")


@dataclass
class TrainingData:
    train: Sequence[Configuration]  # a list, or a lazy prepared set (PreparedStructures)
    valid: Sequence[Configuration]
    test: Sequence[Configuration]
    elements: list[int]
    e0s: dict[int, float]
    e0_source: str
    files: dict[str, dict]  # provenance: path and sha256 of each file


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_elements(structures, elements: set[int], problem: str) -> None:
    """A :class:`DataError` naming the first structure with an element outside ``elements``:
    ``element(s) X {problem}`` (``structures``: configurations or a prepared set)."""
    if len(structures):
        as_summary(structures).check_elements(elements, problem)


def open_structures(path: str | Path, keys: Keys) -> tuple[Sequence[Configuration], list[str]]:
    """The structures of a data file (parsed and validated now) or of a prepared folder
    (:mod:`openmace.data.prepared`: read when used), and the label names of the first one."""
    if is_prepared(path):
        store = PreparedStore(path)
        stored = Keys(**store.manifest["keys"])
        if stored != keys:
            raise DataError(
                path,
                None,
                f"prepared with label keys {stored}; this run asks for {keys}: give the same "
                "keys, or prepare the data again",
            )
        return PreparedStructures(store), []
    data_file = read_file(path, keys)
    return data_file.configs, data_file.available_keys


def subset(structures: Sequence[Configuration], rows) -> Sequence[Configuration]:
    """Structures ``rows`` of ``structures`` (a list, or a lazy prepared set), in order."""
    if isinstance(structures, PreparedStructures):
        return structures.subset(rows)
    return [structures[int(k)] for k in rows]


def graph_dataset(structures: Sequence[Configuration], r_max: float) -> GraphDataset:
    """The graphs of ``structures``: built now for parsed ones, lazily for a prepared set."""
    if isinstance(structures, PreparedStructures):
        return prepared_dataset(structures, r_max)
    return GraphDataset(list(structures), r_max)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a data file, or of a prepared folder's manifest (which holds its shards')."""
    return sha256(Path(path) / MANIFEST) if is_prepared(path) else sha256(path)


def load_training_data(cfg: TrainConfig) -> TrainingData:
    keys = Keys(
        energy=cfg.energy_key, forces=cfg.forces_key, stress=cfg.stress_key, virials=cfg.virials_key
    )
    everything, available_keys = open_structures(cfg.train_file, keys)
    types = tuple(cfg.isolated_atom_types)
    summary = as_summary(everything)
    marked = summary.isolated(types)
    isolated = [everything[int(k)] for k in np.flatnonzero(marked)]
    train = subset(everything, np.flatnonzero(~marked))
    if not len(train):
        raise DataError(cfg.train_file, None, "no structures to train on (only isolated atoms)")
    available = ", ".join(available_keys) or "none"
    train_summary = summary.take(np.flatnonzero(~marked))
    for label, weight, key, present in (
        ("energy", cfg.energy_weight, cfg.energy_key, train_summary.has_energy),
        ("forces", cfg.forces_weight, cfg.forces_key, train_summary.has_forces),
    ):
        if weight > 0 and not present.any():
            raise DataError(
                cfg.train_file,
                None,
                f"no structure has {label} under the key {key!r} (keys in the first structure: "
                f"{available}); set --{label}-key, or --{label}-weight 0 to train without it",
            )

    def without_isolated(path):
        structures = open_structures(path, keys)[0]
        return subset(structures, np.flatnonzero(~as_summary(structures).isolated(types)))

    if cfg.valid_file:
        valid = without_isolated(cfg.valid_file)
    else:
        order = np.random.default_rng(cfg.seed).permutation(len(train))
        n_valid = max(1, int(round(cfg.valid_fraction * len(train))))
        if n_valid >= len(train):
            raise DataError(cfg.train_file, None, "too few structures to split off validation")
        chosen = np.zeros(len(train), dtype=bool)
        chosen[order[:n_valid]] = True
        valid = subset(train, np.flatnonzero(chosen))
        train = subset(train, np.flatnonzero(~chosen))
    test = without_isolated(cfg.test_file) if cfg.test_file else []
    elements = sorted(
        set(as_summary(train).elements()) | {int(c.atomic_numbers[0]) for c in isolated}
    )
    for name, configs in (("validation", valid), ("test", test)):
        check_elements(
            configs,
            set(elements),
            f"in the {name} set do not occur in the training set: the model cannot learn them",
        )
    spec = cfg.e0s
    if spec == "auto":
        spec = "isolated" if isolated else "average"
    if spec in ("foundation", "estimated"):  # from the foundation: openmace.train.finetune
        e0s, source = {}, spec
    else:
        e0s, source = resolve_e0s(
            spec, isolated if spec == "isolated" else train, elements, keys, types
        )
    files = {}
    for role in ("train_file", "valid_file", "test_file"):
        path = getattr(cfg, role)
        if path:
            files[role] = {"path": str(path), "sha256": file_digest(path)}
    log.info(
        "data: %d train, %d validation, %d test structures; elements %s; E0s %s",
        len(train),
        len(valid),
        len(test),
        " ".join(chemical_symbols[z] for z in elements),
        source,
    )
    return TrainingData(train, valid, test, elements, e0s, source, files)
