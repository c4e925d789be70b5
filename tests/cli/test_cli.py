from __future__ import annotations

import subprocess
import sys

import pytest

from openmace import load_model
from openmace.cli.main import main
from openmace.data.graph import batch_atoms
from tests.helpers import load_reference


def test_demo_prints_energy_and_forces(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "energy:" in out and "eV/Å" in out
    rows = [
        line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()
    ]
    assert [row[1] for row in rows] == ["C", "C", "O", "H", "H", "H", "H", "H", "H"]
    assert all(len(row) == 5 for row in rows)


def test_convert_then_info_and_predict(parity_dirs, tmp_path, capsys):
    folder = parity_dirs["p3_periodic_L2_first_nonresidual"]
    target = tmp_path / "p3.safetensors"
    assert main(["convert", str(folder), "-o", str(target)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"model: {target}")
    assert main(["info", str(target)]) == 0
    assert "Si Cu" in capsys.readouterr().out
    from ase.io import read

    model = load_model(target)
    atoms = read(folder / "structures.xyz", 0)
    energy = model(batch_atoms([atoms], model.config.r_max))["energy"].item()
    assert abs(energy - load_reference(folder)[0]["energy"]) / len(atoms) < 1e-9


def test_errors_are_one_line_not_tracebacks(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    result = subprocess.run(
        [sys.executable, "-m", "openmace.cli.main", "info", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(bad) in result.stderr


def test_eval_writes_mace_keys_and_error_table(tmp_path, capsys):
    from ase.io import read

    from openmace import save_model
    from tests.helpers import copper_cells, make_model, molecules, write_xyz

    model_path = save_model(make_model(), tmp_path / "m.safetensors")
    configs = write_xyz(tmp_path / "in.xyz", molecules(3) + copper_cells(2))
    out = tmp_path / "out.xyz"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_path),
                "--configs",
                str(configs),
                "--output",
                str(out),
                "--batch-size",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "F MAE meV/Å" in text and text.strip().endswith(f"output: {out}")
    frames = read(out, ":")
    assert len(frames) == 5
    for atoms in frames:
        assert "MACE_energy" in atoms.info and atoms.arrays["MACE_forces"].shape == (len(atoms), 3)
        assert atoms.arrays["MACE_energies"].sum() == pytest.approx(atoms.info["MACE_energy"])
    assert "MACE_stress" not in frames[0].info and len(frames[4].info["MACE_stress"]) == 9
    assert (tmp_path / "out.parity.png").exists()
