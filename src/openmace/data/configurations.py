"""Reading labelled structures from any ASE-readable file (extended XYZ first).

Labels are found by the names the user gives (defaults ``REF_energy``, ``REF_forces``,
``REF_stress``, ``REF_virials``) in ``atoms.info``, ``atoms.arrays`` or, for values ASE ≥ 3.23
moves into a SinglePointCalculator (plain ``energy``, ``forces``, ``stress``, ...), the
calculator's results. A missing label is allowed per structure (that loss term is skipped).
Every structure is validated before any long work starts: :class:`DataError` names the file,
the structure index and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ase
import ase.io
import numpy as np

from openmace.data.errors import DataError
from openmace.data.validation import (
    MIN_DISTANCE,  # noqa: F401  (its home used to be here)
    validate_structure,
)


@dataclass(frozen=True)
class Keys:
    energy: str = "REF_energy"
    forces: str = "REF_forces"
    stress: str = "REF_stress"
    virials: str = "REF_virials"
    config_type: str = "config_type"
    config_weight: str = "config_weight"


@dataclass
class Configuration:
    """One structure with its (optional) labels. Units: Å, eV, eV/Å, eV/Å³."""

    atomic_numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None  # 3x3, ASE sign convention
    virials: np.ndarray | None = None  # 3x3, eV (= -stress · volume)
    config_type: str = "Default"
    weight: float = 1.0
    source: str = ""
    index: int = 0
    # atoms.info["charge"] (e) and ["spin"] (multiplicity 2S+1), for models that embed them
    total_charge: float | None = None
    total_spin: float | None = None

    def __len__(self) -> int:
        return len(self.atomic_numbers)


def _lookup(atoms: ase.Atoms, key: str):
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    calc = atoms.calc
    results = getattr(calc, "results", None) or {}
    if key in results:
        return results[key]
    return None


def _as_3x3(value, source: str, index: int, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=float).reshape(-1)
    if array.size == 9:
        return array.reshape(3, 3)
    if array.size == 6:  # Voigt: xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = array
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise DataError(source, index, f"{name} has {array.size} values; expected 6 (Voigt) or 9")


def _float(value, source: str, index: int, name: str) -> float:
    try:
        out = (
            float(np.asarray(value, dtype=float).reshape(-1)[0]) if np.ndim(value) else float(value)
        )
    except (TypeError, ValueError) as err:
        raise DataError(source, index, f"{name} is not a number ({value!r})") from err
    if not np.isfinite(out):
        raise DataError(source, index, f"{name} is {out}")
    return out


def configuration_from_atoms(
    atoms: ase.Atoms, keys: Keys, source: str, index: int
) -> Configuration:
    """Extract and validate one structure's data and labels."""
    n = len(atoms)
    numbers = np.asarray(atoms.get_atomic_numbers())
    positions = np.asarray(atoms.get_positions(), dtype=float)
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    cell = np.asarray(atoms.get_cell()[:], dtype=float)
    validate_structure(positions, numbers, cell, pbc, source=source, index=index)

    energy = _lookup(atoms, keys.energy)
    forces = _lookup(atoms, keys.forces)
    stress = _lookup(atoms, keys.stress)
    virials = _lookup(atoms, keys.virials)
    config = Configuration(numbers, positions, cell, pbc, source=str(source), index=index)
    for key, name in (("charge", "total_charge"), ("spin", "total_spin")):
        if atoms.info.get(key) is not None:
            value = _float(atoms.info[key], source, index, f"info[{key!r}]")
            if value != round(value):
                raise DataError(source, index, f"info[{key!r}] must be a whole number ({value})")
            setattr(config, name, value)
    if energy is not None:
        config.energy = _float(energy, source, index, f"energy ({keys.energy})")
    if forces is not None:
        forces = np.asarray(forces, dtype=float)
        if forces.shape != (n, 3):
            raise DataError(
                source,
                index,
                f"forces ({keys.forces}) have shape {forces.shape}, expected ({n}, 3)",
            )
        if not np.isfinite(forces).all():
            raise DataError(source, index, f"forces ({keys.forces}) contain NaN or Inf")
        config.forces = forces
    if stress is not None:
        config.stress = _as_3x3(stress, source, index, f"stress ({keys.stress})")
    if virials is not None:
        config.virials = _as_3x3(virials, source, index, f"virials ({keys.virials})")
    for name in ("stress", "virials"):
        value = getattr(config, name)
        if value is not None and not pbc.all():
            raise DataError(
                source,
                index,
                f"{name} given for a structure that is not periodic in all three directions",
            )
        if value is not None and not np.isfinite(value).all():
            raise DataError(source, index, f"{name} contain NaN or Inf")
    config.config_type = str(atoms.info.get(keys.config_type, "Default"))
    if keys.config_weight in atoms.info:
        config.weight = _float(atoms.info[keys.config_weight], source, index, "config_weight")
        if config.weight < 0:
            raise DataError(source, index, "config_weight is negative")
    return config


@dataclass
class DataFile:
    """A file's validated structures and the facts about the file itself."""

    path: Path
    configs: list[Configuration]
    available_keys: list[str]  # label/array names in the first structure (for error messages)


def read_file(path: str | Path, keys: Keys | None = None) -> DataFile:
    """All structures of a file, validated, with the file's label names. Raises
    :class:`DataError` on any problem."""
    keys = keys or Keys()
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "no such file")
    if path.stat().st_size == 0:
        raise DataError(path, None, "file is empty")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ASE raises many types for malformed files
        raise DataError(path, None, f"cannot read the file: {type(err).__name__}: {err}") from err
    if isinstance(frames, ase.Atoms):
        frames = [frames]
    if not frames:
        raise DataError(path, None, "file contains no structures")
    configs = [configuration_from_atoms(a, keys, str(path), i) for i, a in enumerate(frames)]
    calc_keys = set((getattr(frames[0].calc, "results", None) or {}).keys())
    available = sorted(
        set(frames[0].info)
        | set(frames[0].arrays)
        | calc_keys - {"numbers", "positions", "species", "pos"}
    )
    return DataFile(path, configs, available)


def read_configurations(path: str | Path, keys: Keys | None = None) -> list[Configuration]:
    """All structures of a file, validated (:func:`read_file` without the file's facts)."""
    return read_file(path, keys).configs
