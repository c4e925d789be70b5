"""Isolated-atom reference energies E0 (eV per element).

Three sources, as mace-torch users know them:

* ``isolated``: single-atom structures in the training file whose ``config_type`` is
  ``IsolatedAtom`` or ``isolated_atom`` (or a type the user names);
* a file: JSON or YAML mapping ``{element: energy}`` (keys are atomic numbers or symbols), or any
  ASE-readable file of isolated atoms (every single-atom structure in it counts);
* ``average``: least-squares fit of ``E ≈ Σ_z n_z E0_z`` to the training energies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers as symbol_to_z
from ase.data import chemical_symbols

from openmace.data.configurations import Configuration, Keys, read_configurations
from openmace.data.errors import DataError
from openmace.data.summary import Summary

ISOLATED_TYPES = ("IsolatedAtom", "isolated_atom")


def is_isolated_atom(config: Configuration, types: tuple[str, ...] = ISOLATED_TYPES) -> bool:
    return len(config) == 1 and config.config_type in types


def isolated_atom_energies(configs: list[Configuration], source: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for config in configs:
        if len(config) != 1:
            continue
        if config.energy is None:
            raise DataError(config.source, config.index, "isolated atom without an energy")
        z = int(config.atomic_numbers[0])
        if z in out and abs(out[z] - config.energy) > 1e-6:
            raise DataError(
                config.source,
                config.index,
                f"two different isolated-atom energies for {chemical_symbols[z]}",
            )
        out[z] = config.energy
    if not out:
        raise DataError(source, None, "no isolated-atom (single-atom) structures found")
    return out


def as_summary(structures) -> Summary:
    """``structures`` as a :class:`Summary` (a list of configurations is summarised; a lazy
    prepared set and a summary give theirs)."""
    if isinstance(structures, Summary):
        return structures
    summary = getattr(structures, "summary", None)
    if isinstance(summary, Summary):
        return summary
    return Summary.from_configs(structures)


def composition_matrix(structures, elements: list[int]) -> np.ndarray:
    """How many atoms of each of ``elements`` each structure has: ``[structures, elements]``
    (``structures``: configurations, a prepared set or a :class:`Summary`)."""
    return as_summary(structures).composition(elements)


def fit_e0s(structures, elements: list[int], known: np.ndarray | None = None) -> dict[int, float]:
    """Least-squares E0s fitting ``E - known ≈ Σ_z n_z E0_z`` over the structures with an
    energy (minimum-norm solution if underdetermined); ``known``: a part of each structure's
    energy already accounted for (eV, one per structure; default 0). ``structures``:
    configurations, a prepared set or a :class:`Summary` (the same numbers from each)."""
    summary = as_summary(structures)
    rows = np.flatnonzero(summary.has_energy)
    if not len(rows):
        raise DataError("training set", None, "cannot fit E0s: no structure has an energy")
    counts = summary.take(rows).composition(elements)
    energies = summary.energy[rows]
    if known is not None:
        energies = energies - np.asarray(known)[rows]
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {z: float(solution[k]) for k, z in enumerate(elements)}


def _parse_mapping(text: str, source: str) -> dict[int, float]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise DataError(source, None, f"E0s are neither JSON nor YAML: {err}") from err
    if not isinstance(data, dict):
        raise DataError(source, None, "E0s must be a mapping {element: energy in eV}")
    out = {}
    for key, value in data.items():
        key_text = str(key).strip()
        z = int(key_text) if key_text.isdigit() else symbol_to_z.get(key_text)
        if z is None or not 1 <= z < len(chemical_symbols):
            raise DataError(source, None, f"E0s: unknown element {key!r}")
        try:
            out[z] = float(value)
        except (TypeError, ValueError) as err:
            raise DataError(source, None, f"E0s: energy of {key!r} is not a number") from err
    return out


def resolve_e0s(
    spec: str,
    train: list[Configuration],
    elements: list[int],
    keys: Keys,
    isolated_types: tuple[str, ...] = ISOLATED_TYPES,
) -> tuple[dict[int, float], str]:
    """E0 for every element, and a one-line description of where they came from."""
    if spec == "average":
        return fit_e0s(train, elements), "least-squares fit to training energies"
    if spec == "isolated":
        isolated = [c for c in train if is_isolated_atom(c, isolated_types)]
        e0s = isolated_atom_energies(isolated, "training file")
        description = "isolated atoms in the training file"
    elif spec.lstrip().startswith("{"):
        e0s, description = _parse_mapping(spec, "--e0s"), "given mapping"
    else:
        path = Path(spec)
        if not path.is_file():
            raise DataError(spec, None, "E0s: expected 'isolated', 'average' or an existing file")
        if path.suffix.lower() in (".json", ".yaml", ".yml"):
            e0s = _parse_mapping(path.read_text(), str(path))
        else:
            e0s = isolated_atom_energies(read_configurations(path, keys), str(path))
        description = f"from {path}"
    missing = [chemical_symbols[z] for z in elements if z not in e0s]
    if missing:
        raise DataError(spec, None, f"E0s missing for element(s) {', '.join(missing)}")
    return {z: e0s[z] for z in elements}, description
