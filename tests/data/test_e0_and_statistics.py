from __future__ import annotations

import json

import ase
import numpy as np
import pytest

from openmace.data.configurations import Configuration, Keys
from openmace.data.dataset import GraphDataset
from openmace.data.e0 import fit_e0s, resolve_e0s
from openmace.data.errors import DataError
from openmace.data.statistics import compute_statistics
from openmace.train.config import build_config
from openmace.train.data_setup import load_training_data
from tests.helpers import molecules, write_xyz

E0 = {1: -13.6, 6: -1025.3, 8: -2035.6}


def isolated(z: int, energy: float, config_type: str | None) -> ase.Atoms:
    atoms = ase.Atoms(numbers=[z], positions=[[0, 0, 0]])
    atoms.info["REF_energy"] = energy
    if config_type:
        atoms.info["config_type"] = config_type
    return atoms


@pytest.mark.parametrize("config_type", ["IsolatedAtom", "isolated_atom"])
def test_isolated_atoms_in_training_file(tmp_path, config_type):
    frames = [isolated(z, e, config_type) for z, e in E0.items()] + molecules(8)
    data = write_xyz(tmp_path / "train.xyz", frames)
    loaded = load_training_data(build_config({}, {"train_file": str(data)}))  # e0s: auto
    assert loaded.e0s == pytest.approx(E0)
    assert all(len(c) > 1 for c in loaded.train + loaded.valid)  # isolated atoms removed


def test_e0s_from_separate_xyz_json_yaml_and_inline(tmp_path):
    train = [
        Configuration(
            np.array([1, 8]), np.zeros((2, 3)), np.zeros((3, 3)), np.zeros(3, bool), energy=-1.0
        )
    ]
    elements = [1, 6, 8]
    xyz = write_xyz(tmp_path / "iso.xyz", [isolated(z, e, None) for z, e in E0.items()])
    as_json = tmp_path / "e0.json"
    as_json.write_text(json.dumps({"H": E0[1], "6": E0[6], "O": E0[8]}))
    as_yaml = tmp_path / "e0.yaml"
    as_yaml.write_text("".join(f"{z}: {e}\n" for z, e in E0.items()))
    for spec in (str(xyz), str(as_json), str(as_yaml), json.dumps(E0)):
        e0s, _ = resolve_e0s(spec, train, elements, Keys())
        assert e0s == pytest.approx(E0), spec
    with pytest.raises(DataError, match="missing for element"):
        resolve_e0s(json.dumps({1: -1.0}), train, elements, Keys())


def test_least_squares_fit_recovers_known_e0s():
    rng = np.random.default_rng(0)
    configs = []
    for _ in range(20):
        counts = rng.integers(1, 6, size=3)
        numbers = np.repeat(list(E0), counts)
        energy = sum(E0[int(z)] for z in numbers)
        configs.append(
            Configuration(
                numbers,
                np.zeros((len(numbers), 3)),
                np.zeros((3, 3)),
                np.zeros(3, bool),
                energy=energy,
            )
        )
    fitted = fit_e0s(configs, [1, 6, 8])
    assert fitted == pytest.approx(E0, abs=1e-8)


def test_statistics_on_hand_checkable_data():
    """Two dimers 1 Å apart and one isolated pair 10 Å apart (r_max 2 Å): 4 edges / 6 atoms."""

    def config(distance, energy, forces):
        return Configuration(
            np.array([1, 1]),
            np.array([[0, 0, 0], [distance, 0, 0]]),
            np.zeros((3, 3)),
            np.zeros(3, bool),
            energy=energy,
            forces=np.array(forces, dtype=float),
        )

    e0s = {1: -1.0}
    configs = [
        config(1.0, -3.0, [[1, 0, 0], [-1, 0, 0]]),
        config(1.0, -2.0, [[2, 0, 0], [-2, 0, 0]]),
        config(10.0, -2.0, [[0, 0, 0], [0, 0, 0]]),
    ]
    stats = compute_statistics(GraphDataset(configs, r_max=2.0), e0s)
    assert stats.avg_num_neighbors == pytest.approx(4 / 6)
    # per-atom interaction energies: (-3+2)/2, (-2+2)/2, 0
    assert stats.shift == pytest.approx((-0.5 + 0.0 + 0.0) / 3)
    # force components: 1,1,4,4 squared over 18 components
    assert stats.scale == pytest.approx(np.sqrt((1 + 1 + 4 + 4) / 18))
