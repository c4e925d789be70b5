"""From a training config to validated data sets, E0s and statistics, before any long work."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from openmace.data.configurations import Configuration, Keys, read_configurations, read_file
from openmace.data.e0 import is_isolated_atom, resolve_e0s
from openmace.data.errors import DataError
from openmace.train.config import TrainConfig

log = logging.getLogger("openmace.train")


@dataclass
class TrainingData:
    train: list[Configuration]
    valid: list[Configuration]
    test: list[Configuration]
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


def check_elements(configs: list[Configuration], elements: set[int], problem: str) -> None:
    """A :class:`DataError` naming the first structure with an element outside ``elements``:
    ``element(s) X {problem}``."""
    for config in configs:
        unknown = sorted(set(config.atomic_numbers.tolist()) - elements)
        if unknown:
            symbols = ", ".join(chemical_symbols[z] for z in unknown)
            raise DataError(config.source, config.index, f"element(s) {symbols} {problem}")


def load_training_data(cfg: TrainConfig) -> TrainingData:
    keys = Keys(
        energy=cfg.energy_key, forces=cfg.forces_key, stress=cfg.stress_key, virials=cfg.virials_key
    )
    train_file = read_file(cfg.train_file, keys)
    everything = train_file.configs
    types = tuple(cfg.isolated_atom_types)
    isolated = [c for c in everything if is_isolated_atom(c, types)]
    train = [c for c in everything if not is_isolated_atom(c, types)]
    if not train:
        raise DataError(cfg.train_file, None, "no structures to train on (only isolated atoms)")
    available = ", ".join(train_file.available_keys) or "none"
    for label, weight, key in (
        ("energy", cfg.energy_weight, cfg.energy_key),
        ("forces", cfg.forces_weight, cfg.forces_key),
    ):
        if weight > 0 and all(getattr(c, label) is None for c in train):
            raise DataError(
                cfg.train_file,
                None,
                f"no structure has {label} under the key {key!r} (keys in the first structure: "
                f"{available}); set --{label}-key, or --{label}-weight 0 to train without it",
            )
    if cfg.valid_file:
        valid = read_configurations(cfg.valid_file, keys)
        valid = [c for c in valid if not is_isolated_atom(c, types)]
    else:
        order = np.random.default_rng(cfg.seed).permutation(len(train))
        n_valid = max(1, int(round(cfg.valid_fraction * len(train))))
        if n_valid >= len(train):
            raise DataError(cfg.train_file, None, "too few structures to split off validation")
        chosen = set(order[:n_valid].tolist())
        valid = [c for k, c in enumerate(train) if k in chosen]
        train = [c for k, c in enumerate(train) if k not in chosen]
    test = read_configurations(cfg.test_file, keys) if cfg.test_file else []
    test = [c for c in test if not is_isolated_atom(c, types)]
    elements = sorted(
        {int(z) for c in train for z in c.atomic_numbers}
        | {int(c.atomic_numbers[0]) for c in isolated}
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
            files[role] = {"path": str(path), "sha256": sha256(path)}
    log.info(
        "data: %d train, %d validation, %d test structures; elements %s; E0s %s",
        len(train),
        len(valid),
        len(test),
        " ".join(chemical_symbols[z] for z in elements),
        source,
    )
    return TrainingData(train, valid, test, elements, e0s, source, files)
