"""``md`` never runs into NaN or a blow-up silently: the guards of :mod:`openmace.simulate`
stop it with :class:`SimulationError` naming the step, the quantity and the limit; bad options,
bad start structures and unwritable outputs are refused before the run; the CSV log is written
line by line and survives an exception, Ctrl-C and SIGTERM."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase
import ase.build
import numpy as np
import pytest
from ase.calculators.calculator import all_changes
from ase.calculators.lj import LennardJones
from ase.cluster import Icosahedron
from ase.io import read
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openmace import MACECalculator, save_model
from openmace.cli.main import main
from openmace.data.errors import DataError
from openmace.simulate import SimulationError, run_md, temperature_limit
from tests.helpers import make_model, molecule, write_xyz

LJ = dict(sigma=3.4, epsilon=0.0104, rc=10.0)


def argon(light: bool = False) -> ase.Atoms:
    """A 13-atom argon cluster with a Lennard-Jones calculator (fast); ``light``: hydrogen's
    mass, so large timesteps blow it up."""
    atoms = Icosahedron("Ar", 2, latticeconstant=5.4)
    if light:
        atoms.set_masses(np.ones(len(atoms)))
    atoms.calc = LennardJones(**LJ)
    return atoms


class Faulty(LennardJones):
    """Lennard-Jones whose results go wrong after ``after`` evaluations."""

    def __init__(self, fault: str, after: int) -> None:
        super().__init__(**LJ)
        self.fault, self.after, self.calls = fault, after, 0

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls <= self.after:
            return
        if self.fault == "interrupt":
            raise KeyboardInterrupt
        if self.fault == "error":
            raise RuntimeError("the calculator failed")
        if self.fault == "invalid":  # as MACECalculator's validation refuses a structure
            raise DataError("atoms", None, "atoms 0 and 1 are 0.05 Å apart")
        if self.fault == "nan-energy":
            self.results["energy"] = math.nan
        elif self.fault == "inf-energy":
            self.results["energy"] = math.inf
        elif self.fault == "nan-forces":
            self.results["forces"][0, 1] = math.nan
        elif self.fault == "huge-forces":
            self.results["forces"][0] = 1e6  # eV/Å


def log_rows(path: Path) -> tuple[str, np.ndarray]:
    """The header and the rows of a CSV log; every row complete."""
    lines = path.read_text().splitlines()
    header, rows = lines[0], [line.split(",") for line in lines[1:]]
    width = len(header.split(","))
    assert all(len(row) == width for row in rows), rows
    return header, np.array(rows, dtype=float).reshape(-1, width)


def open_descriptors_of(path: Path) -> list[str]:
    target = os.path.realpath(path)
    fds = Path("/proc/self/fd")
    return [fd.name for fd in fds.iterdir() if os.path.realpath(fd) == target]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("openmace md: error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_model(make_model(), tmp_path_factory.mktemp("model") / "m.safetensors")


# --- blow-ups ------------------------------------------------------------------------------


def test_a_50_fs_nve_step_from_200_k_is_stopped(tmp_path):
    """The issue's example: one 50 fs NVE step took a molecule from ~200 K to 30 000 K."""
    atoms = molecule()
    atoms.calc = MACECalculator(model=make_model())
    log = tmp_path / "md.csv"
    with pytest.raises(SimulationError) as caught:
        run_md(atoms, "nve", 50.0, 200.0, 20, interval=1, log_path=log, trajectory=tmp_path / "t")
    message = str(caught.value)
    assert "step 1 " in message and "t = 0.05 ps" in message
    assert "10000 K" in message and "up to step 0 are kept" in message
    _, rows = log_rows(log)
    assert len(rows) == 1 and np.isfinite(rows).all() and rows[0, 4] < 1000
    assert len(read(tmp_path / "t", ":")) == 1


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
@pytest.mark.parametrize("timestep", [10.0, 25.0, 100.0, 1e3])
def test_huge_timesteps_stop_with_the_log_so_far(tmp_path, ensemble, timestep):
    atoms = molecule(seed=int(timestep))
    atoms.calc = MACECalculator(model=make_model())
    log = tmp_path / "md.csv"
    with pytest.raises(SimulationError) as caught:
        run_md(atoms, ensemble, timestep, 300.0, 20, interval=2, log_path=log)
    err = caught.value
    assert f"step {err.step} " in str(err) and "limit" in str(err)
    _, rows = log_rows(log)
    assert np.isfinite(rows).all() and (rows[:, 4] <= temperature_limit(300.0)).all()
    assert len(rows) == (err.step - 1) // 2 + 1  # every logged step before the failure


def test_npt_blow_up_is_stopped(tmp_path):
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    atoms.calc = MACECalculator(model=make_model(atomic_numbers=[29], atomic_energies=[-2.0]))
    with pytest.raises(SimulationError, match="step"):
        run_md(atoms, "npt", 200.0, 300.0, 20, interval=1, log_path=tmp_path / "md.csv")
    _, rows = log_rows(tmp_path / "md.csv")
    assert rows.shape[1] == 7 and np.isfinite(rows).all()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    timestep=st.floats(0.5, 3000.0),
    temperature=st.floats(0.0, 3000.0),
    ensemble=st.sampled_from(["nve", "nvt"]),
    interval=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_md_ends_sane_or_stops_with_a_message(
    tmp_path, timestep, temperature, ensemble, interval, seed
):
    """Whatever the timestep and temperature: the run completes with every logged value
    finite and below the temperature limit, or stops with SimulationError; never silently
    unphysical."""
    log = tmp_path / f"md-{os.urandom(4).hex()}.csv"
    atoms = argon(light=True)
    try:
        run_md(atoms, ensemble, timestep, temperature, 12, 0.05, interval=interval, log_path=log)
        failed_at = None
    except SimulationError as err:
        failed_at = err.step
        assert f"step {err.step} " in str(err)
    _, rows = log_rows(log)
    assert np.isfinite(rows).all()
    assert (rows[:, 4] <= temperature_limit(temperature)).all()
    last = 12 if failed_at is None else failed_at - 1
    assert len(rows) == last // interval + 1


@pytest.mark.parametrize("after", [0, 3, 8])
@pytest.mark.parametrize("fault", ["nan-energy", "inf-energy", "nan-forces", "huge-forces"])
def test_non_finite_or_absurd_results_stop_the_run(tmp_path, fault, after):
    atoms = argon()
    atoms.calc = Faulty(fault, after)
    log = tmp_path / "md.csv"
    with pytest.raises(SimulationError) as caught:
        run_md(atoms, "nve", 2.0, 50.0, 30, interval=1, log_path=log)
    assert caught.value.step <= after + 1
    _, rows = log_rows(log)
    assert np.isfinite(rows).all() and len(rows) == caught.value.step


@pytest.mark.parametrize("after", [0, 2, 5])
def test_a_structure_refused_during_the_run_names_the_step(tmp_path, after):
    atoms = argon()
    atoms.calc = Faulty("invalid", after)
    log = tmp_path / "md.csv"
    if after == 0:  # the start structure: refused as such
        with pytest.raises(DataError, match="0.05 Å apart"):
            run_md(atoms, "nvt", 2.0, 50.0, 30, interval=1, log_path=log)
        return
    with pytest.raises(SimulationError, match="0.05 Å apart") as caught:
        run_md(atoms, "nvt", 2.0, 50.0, 30, interval=1, log_path=log)
    assert caught.value.step == after and f"step {after} " in str(caught.value)
    assert f"up to step {after - 1} are kept" in str(caught.value)
    assert len(log_rows(log)[1]) == after


@pytest.mark.parametrize(
    "limit,kwargs",
    [
        ("max_temperature", dict(max_temperature=1.0)),
        ("max_displacement", dict(max_displacement=1e-4)),
        ("max_energy_jump", dict(max_energy_jump=1e-10)),
    ],
)
def test_each_limit_is_adjustable_and_named(limit, kwargs):
    atoms = argon()
    with pytest.raises(SimulationError, match=f"{limit} / --{limit.replace('_', '-')}"):
        run_md(atoms, "nve", 5.0, 100.0, 10, **kwargs)
    relaxed = {key: math.inf for key in kwargs}  # inf switches a guard off
    result = run_md(argon(), "nve", 5.0, 100.0, 10, **relaxed)
    assert result.steps == 10


def test_temperature_limit_defaults():
    assert temperature_limit(300.0) == 10_000.0
    assert temperature_limit(2000.0) == 40_000.0
    assert temperature_limit(300.0, 500.0) == 500.0


# --- the log is kept on any exit -----------------------------------------------------------


@pytest.mark.parametrize("fault", ["interrupt", "error"])
@pytest.mark.parametrize("after", [1, 4, 9])
def test_log_is_written_as_the_run_goes_and_closed_on_any_exit(tmp_path, fault, after):
    atoms = argon()
    atoms.calc = Faulty(fault, after)
    log, traj = tmp_path / "md.csv", tmp_path / "md.traj"
    expected = KeyboardInterrupt if fault == "interrupt" else RuntimeError
    with pytest.raises(expected):
        run_md(atoms, "nvt", 2.0, 100.0, 50, interval=1, log_path=log, trajectory=traj)
    assert open_descriptors_of(log) == [] and open_descriptors_of(traj) == []
    _, rows = log_rows(log)
    assert len(rows) == after  # steps 0 .. after-1 were logged before the fault
    assert len(read(traj, ":")) == after


def test_sigterm_keeps_the_log_lines_written(tmp_path, model_file):
    structure = write_xyz(tmp_path / "start.xyz", [molecule()])
    log = tmp_path / "md.csv"
    argv = [sys.executable, "-m", "openmace.cli.main", "md", "--model", str(model_file)]
    argv += ["--structure", str(structure), "--steps", "1000000", "--interval", "1"]
    argv += ["--timestep", "0.1", "--log", str(log), "--trajectory", str(tmp_path / "md.traj")]
    process = subprocess.Popen(
        [*argv, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 4:
                break
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()
        assert log.exists(), "no log line within 120 s"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert "interrupted by SIGTERM" in err and "keep the steps run so far" in err
    header, rows = log_rows(log)
    assert header.startswith("time_ps,") and len(rows) >= 3 and np.isfinite(rows).all()
    assert len(read(tmp_path / "md.traj", ":")) >= 3


# --- refused before the run ----------------------------------------------------------------

BAD_OPTIONS = [
    (["--steps", "-1"], "steps"),
    (["--timestep", "0"], "timestep"),
    (["--timestep", "-0.5"], "timestep"),
    (["--timestep", "nan"], "timestep"),
    (["--timestep", "inf"], "timestep"),
    (["--temperature", "-300"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--temperature", "inf"], "temperature"),
    (["--friction", "-0.01"], "friction"),
    (["--friction", "nan"], "friction"),
    (["--ensemble", "npt", "--friction", "0"], "friction"),
    (["--pressure", "nan"], "pressure"),
    (["--interval", "0"], "interval"),
    (["--interval", "-3"], "interval"),
    (["--index", "2"], "--index"),
    (["--index", "99"], "--index"),
    (["--index", "-3"], "--index"),
    (["--max-temperature", "0"], "max_temperature"),
    (["--max-temperature", "-5"], "max_temperature"),
    (["--max-temperature", "nan"], "max_temperature"),
    (["--max-displacement", "0"], "max_displacement"),
    (["--max-energy-jump", "-1"], "max_energy_jump"),
]


@pytest.mark.parametrize("extra,named", BAD_OPTIONS)
def test_md_refuses_bad_options_before_the_run(tmp_path, capsys, model_file, extra, named):
    structure = write_xyz(tmp_path / "start.xyz", [molecule(0), molecule(1)])
    log, traj = tmp_path / "md.csv", tmp_path / "md.traj"
    argv = ["md", "--model", str(model_file), "--structure", str(structure), "--steps", "3"]
    argv += ["--log", str(log), "--trajectory", str(traj), "--quiet"]
    assert main([*argv, *extra]) == 2
    assert named in one_error_line(capsys.readouterr().err)
    assert not log.exists() and not traj.exists()


def close_pair(seed: int) -> ase.Atoms:
    atoms = molecule(seed)
    rng = np.random.default_rng(seed)
    i, j = rng.choice(len(atoms), 2, replace=False)
    direction = rng.normal(size=3)
    atoms.positions[j] = atoms.positions[i] + 0.05 * direction / np.linalg.norm(direction)
    return atoms


def far_atom(seed: int) -> ase.Atoms:
    atoms = molecule(seed)
    atoms.positions[seed % len(atoms), seed % 3] = 1e200
    return atoms


def nan_atom(seed: int) -> ase.Atoms:
    atoms = molecule(seed)
    atoms.positions[seed % len(atoms), 1] = math.nan
    return atoms


BAD_STARTS = [(make, seed) for make in (close_pair, far_atom, nan_atom) for seed in range(3)]


@pytest.mark.parametrize("make,seed", BAD_STARTS)
def test_md_refuses_bad_start_structures_as_eval_does(tmp_path, capsys, model_file, make, seed):
    structure = write_xyz(tmp_path / "start.xyz", [molecule(), make(seed)])
    log, traj = tmp_path / "md.csv", tmp_path / "md.traj"
    argv = ["md", "--model", str(model_file), "--structure", str(structure), "--steps", "3"]
    argv += ["--index", "1", "--log", str(log), "--trajectory", str(traj), "--quiet"]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{structure}: structure 1:" in line
    assert not log.exists() and not traj.exists()
    evaluated = tmp_path / "out.xyz"
    eval_argv = ["eval", "--model", str(model_file), "--configs", str(structure)]
    assert main([*eval_argv, "--output", str(evaluated)]) == 2
    assert line.split("structure 1:")[1] in capsys.readouterr().err  # the same refusal


@pytest.mark.parametrize("make,seed", BAD_STARTS[::3])
def test_run_md_refuses_bad_start_structures(make, seed):
    atoms = make(seed)
    atoms.calc = LennardJones(**LJ)
    with pytest.raises(DataError, match="start structure"):
        run_md(atoms, "nve", 1.0, 100.0, 2)


@pytest.mark.parametrize("which", ["--log", "--trajectory"])
@pytest.mark.parametrize("bad", ["missing-folder", "folder", "file-as-folder", "unwritable"])
def test_md_refuses_unwritable_outputs_before_the_run(tmp_path, capsys, model_file, which, bad):
    structure = write_xyz(tmp_path / "start.xyz", [molecule()])
    (tmp_path / "a-file").write_text("x")
    outputs = {"--log": tmp_path / "md.csv", "--trajectory": tmp_path / "md.traj"}
    outputs[which] = {
        "missing-folder": tmp_path / "no" / "such" / "out",
        "folder": tmp_path,
        "file-as-folder": tmp_path / "a-file" / "out",
        "unwritable": Path("/proc/openmace-cannot-write-here"),
    }[bad]
    argv = ["md", "--model", str(model_file), "--structure", str(structure), "--steps", "5"]
    argv += ["--log", str(outputs["--log"]), "--trajectory", str(outputs["--trajectory"])]
    assert main([*argv, "--quiet"]) == 2
    one_error_line(capsys.readouterr().err)
    for path in outputs.values():
        if path.is_file() and path.suffix == ".csv":
            assert len(path.read_text().splitlines()) <= 1  # no step was run
        if path.is_file() and path.suffix == ".traj":
            assert len(read(path, ":")) == 0


def test_md_blow_up_from_the_command_line(tmp_path, capsys, model_file):
    structure = write_xyz(tmp_path / "start.xyz", [molecule()])
    log, traj = tmp_path / "md.csv", tmp_path / "md.traj"
    argv = ["md", "--model", str(model_file), "--structure", str(structure), "--steps", "20"]
    argv += ["--ensemble", "nve", "--timestep", "50", "--temperature", "200", "--interval", "1"]
    argv += ["--log", str(log), "--trajectory", str(traj), "--quiet"]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "step 1 " in line and "--max-temperature" in line and "kept" in line
    assert len(log_rows(log)[1]) == 1 and len(read(traj, ":")) == 1
    unguarded = ["--max-temperature", "inf", "--max-displacement", "inf"]
    unguarded += ["--max-energy-jump", "inf"]
    assert main([*argv, "--overwrite", *unguarded]) == 0
