from __future__ import annotations

import ase.build
import numpy as np
import pytest

from openmace import MACECalculator
from openmace.simulate import run_md
from tests.helpers import make_model, molecule


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_md_runs_and_logs(tmp_path, ensemble):
    atoms = molecule()
    atoms.calc = MACECalculator(model=make_model())
    result = run_md(
        atoms,
        ensemble,
        timestep_fs=0.25,
        temperature=100,
        steps=40,
        interval=5,
        trajectory=tmp_path / "t.traj",
        log_path=tmp_path / "log.csv",
    )
    data = np.loadtxt(tmp_path / "log.csv", delimiter=",", skiprows=1)
    assert data.shape == (9, 5)  # steps 0, 5, ..., 40; time, epot, ekin, etot, T
    assert result.ns_per_day > 0
    if ensemble == "nve":
        energy = data[:, 3] / len(atoms)
        assert np.ptp(energy) < 1e-3  # total energy conserved (eV/atom) over 10 fs
        assert result.drift_ev_per_atom_ps is not None


def test_npt_on_a_periodic_cell(tmp_path):
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.calc = MACECalculator(model=make_model(atomic_numbers=[29], atomic_energies=[-2.0]))
    run_md(
        atoms,
        "npt",
        timestep_fs=1.0,
        temperature=300,
        steps=10,
        interval=5,
        log_path=tmp_path / "npt.csv",
    )
    data = np.loadtxt(tmp_path / "npt.csv", delimiter=",", skiprows=1)
    assert data.shape[1] == 7 and np.isfinite(data).all()  # + pressure, volume
