"""Evaluations too large for the available memory fail early with advice, on every entry point
(model, ASE calculator, command line), instead of being killed by the operating system."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ase.io import write

from openmace import MACECalculator, save_model
from tests.conftest import make_model, molecule, triclinic_cell


@pytest.fixture
def tiny_memory(monkeypatch):
    monkeypatch.setenv("OPENMACE_MEMORY_LIMIT", "1000")  # bytes


def test_calculator_reports_the_memory_problem(tiny_memory):
    atoms = triclinic_cell()
    atoms.calc = MACECalculator(model=make_model())
    with pytest.raises(MemoryError, match="GiB are available: use a smaller batch"):
        atoms.get_forces()


def test_eval_command_fails_with_one_clear_line(tmp_path):
    model = save_model(make_model(), tmp_path / "m.safetensors")
    configs = tmp_path / "in.xyz"
    write(configs, [molecule(), molecule(seed=1)])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "openmace.cli.main",
            "eval",
            "--model",
            str(model),
            "--configs",
            str(configs),
            "--output",
            str(tmp_path / "out.xyz"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OPENMACE_MEMORY_LIMIT": "1000"},
    )
    assert done.returncode == 2
    assert "smaller batch" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.xyz").exists()
