"""Reading labelled data: keys, ASE calculator results, partial labels and every bad input."""

from __future__ import annotations

import ase
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from openmace.data.configurations import Keys, read_configurations
from openmace.data.errors import DataError
from openmace.train.config import build_config
from openmace.train.data_setup import load_training_data
from tests.helpers import copper_cells, molecules, write_xyz


def test_user_keys_and_plain_ase_calculator_keys(tmp_path):
    frames = molecules(3)
    custom = []
    for atoms in frames:
        a = atoms.copy()
        a.info["my_E"] = a.info.pop("REF_energy")
        a.arrays["my_F"] = a.arrays.pop("REF_forces")
        custom.append(a)
    path = write_xyz(tmp_path / "custom.xyz", custom)
    configs = read_configurations(path, Keys(energy="my_E", forces="my_F"))
    assert configs[0].energy == pytest.approx(frames[0].info["REF_energy"])
    plain = []
    for atoms in frames:  # ASE >= 3.23 reads energy=/forces= into a SinglePointCalculator
        a = ase.Atoms(atoms.numbers, atoms.positions)
        a.calc = SinglePointCalculator(
            a, energy=atoms.info["REF_energy"], forces=atoms.arrays["REF_forces"]
        )
        plain.append(a)
    path = tmp_path / "plain.xyz"
    write(path, plain, format="extxyz")
    configs = read_configurations(path, Keys(energy="energy", forces="forces"))
    assert configs[1].energy == pytest.approx(frames[1].info["REF_energy"])
    assert np.allclose(configs[1].forces, frames[1].arrays["REF_forces"])


def test_stress_voigt_and_dummy_lattice_is_not_periodic(tmp_path):
    cells = copper_cells(2)
    path = write_xyz(tmp_path / "cu.xyz", cells)
    config = read_configurations(path)[0]
    assert config.stress.shape == (3, 3) and np.allclose(config.stress, config.stress.T)
    mol = molecules(1)[0]
    mol.cell = [20, 20, 20]
    mol.pbc = False
    config = read_configurations(write_xyz(tmp_path / "dummy.xyz", [mol]))[0]
    assert not config.pbc.any()


def _bad(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = 'Properties=species:S:1:pos:R:3 REF_energy=-1.0 pbc="F F F"\n'


@pytest.mark.parametrize(
    "text,problem,index",
    [
        ("", "empty", None),
        ("2\n" + GOOD + "H 0 0 0\n", "cannot read", None),
        ("2\n" + GOOD + "H 0 0 0\nH nan 0 0\n", "non-finite position", 0),
        ("2\n" + GOOD + "H 0 0 0\nH 0 0 0\n", "closer than", 0),
        ("2\n" + GOOD + "H 0 0 0\nH 0 0 1\n2\n" + GOOD + "H 0 0 0\nH 0 0 0.01\n", "closer", 1),
        (
            '1\nProperties=species:S:1:pos:R:3 REF_energy=abc pbc="F F F"\nH 0 0 0\n',
            "not a number",
            0,
        ),
    ],
)
def test_bad_files_name_file_index_and_problem(tmp_path, text, problem, index):
    path = _bad(tmp_path, "bad.xyz", text)
    with pytest.raises(DataError, match=problem) as info:
        read_configurations(path)
    assert info.value.source == str(path) and info.value.index == index
    assert str(path) in str(info.value)


def test_missing_labels_and_unknown_test_element(tmp_path):
    frames = molecules(6)
    for a in frames:
        a.info.pop("REF_energy")
        a.arrays.pop("REF_forces")
    data = write_xyz(tmp_path / "nolabels.xyz", frames)
    with pytest.raises(
        DataError, match="no structure has energy under the key 'REF_energy'.*--energy-key"
    ):
        load_training_data(build_config({}, {"train_file": str(data)}))
    train = write_xyz(tmp_path / "train.xyz", molecules(6))
    cu = copper_cells(1)
    test = write_xyz(tmp_path / "test.xyz", molecules(2) + cu)
    cfg = build_config({}, {"train_file": str(train), "test_file": str(test), "e0s": "average"})
    with pytest.raises(DataError, match=r"structure 2: element\(s\) Cu in the test set"):
        load_training_data(cfg)
