"""Molecular dynamics with an openmace model through ASE: NVE, Langevin NVT, Langevin NPT.

Units: timestep in fs, temperature in K, friction in 1/fs, pressure in GPa. The log (CSV) holds
time (ps), potential, kinetic and total energy (eV), temperature (K) and, for periodic cells,
pressure (GPa) and volume (Å³). The log is written as the run goes (the header first, then one
flushed line per logged step) and the trajectory frame by frame, and both are closed on any
exit, so a run that stops early (an error, Ctrl-C, a scheduler's SIGTERM) keeps what it wrote.
Both files are opened before the first step: an unwritable path fails at once.

Guards, checked after every step (and on the start structure); a run that trips one stops with
:class:`SimulationError` naming the step, the time, the quantity and its limit (adjustable
keyword arguments of :func:`run_md`, and flags of ``openmace md``):

- any non-finite position, cell, energy, force or temperature;
- ``max_temperature`` (``--max-temperature``): the instantaneous temperature; default the
  larger of 10 000 K and 20 times the target temperature;
- ``max_energy_jump`` (``--max-energy-jump``, NVE only): the change of the total energy per
  atom in one step; default 0.5 eV/atom (a stable NVE run changes it by ~1e-4 eV/atom);
- ``max_displacement`` (``--max-displacement``): the largest distance an atom moves in one
  step; default 1 Å (at 300 K a hydrogen atom moves ~0.03 Å per fs).

``math.inf`` switches a limit off. A tripped guard usually means the timestep is too large
for the model and structure, or the start structure is unphysical.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.io import Trajectory
from ase.md.langevin import Langevin
from ase.md.langevinbaoab import LangevinBAOAB
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

from openmace.data.errors import DataError

log = logging.getLogger("openmace.md")

DEFAULT_MAX_TEMPERATURE = 10_000.0  # K; the limit is max(this, TEMPERATURE_FACTOR × target)
TEMPERATURE_FACTOR = 20.0
DEFAULT_MAX_ENERGY_JUMP = 0.5  # eV/atom per step (NVE total energy)
DEFAULT_MAX_DISPLACEMENT = 1.0  # Å per step


class SimulationError(RuntimeError):
    """The dynamics became non-finite or unphysical; ``step`` and ``time_ps`` say where."""

    def __init__(self, message: str, step: int, time_ps: float) -> None:
        super().__init__(message)
        self.step, self.time_ps = step, time_ps


def temperature_limit(temperature: float, max_temperature: float | None = None) -> float:
    """The temperature guard: ``max_temperature``, or by default the larger of 10 000 K and
    20 times the target ``temperature``."""
    if max_temperature is not None:
        return float(max_temperature)
    return max(DEFAULT_MAX_TEMPERATURE, TEMPERATURE_FACTOR * temperature)


def _finite(name: str, value: float, minimum: float, strict: bool) -> None:
    bad = (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.integer | np.floating)
        or not np.isfinite(value)
        or (value <= minimum if strict else value < minimum)
    )
    if bad:
        relation = "above" if strict else "at least"
        raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, not {value!r}")


def _limit(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if np.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be above 0 (math.inf switches the guard off), not {value}")


def check_md_options(
    ensemble: str,
    timestep_fs: float,
    temperature: float,
    steps: int,
    friction: float,
    pressure_gpa: float,
    interval: int,
    max_temperature: float | None = None,
    max_energy_jump: float = DEFAULT_MAX_ENERGY_JUMP,
    max_displacement: float = DEFAULT_MAX_DISPLACEMENT,
) -> None:
    """Raise ``ValueError`` naming the first option of :func:`run_md` that is out of range."""
    if ensemble not in ("nve", "nvt", "npt"):
        raise ValueError(f"unknown ensemble {ensemble!r} (nve, nvt or npt)")
    for name, value in (("steps", steps), ("interval", interval)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be a whole number, not {value!r}")
    if steps < 0:
        raise ValueError(f"steps must be 0 or more, not {steps}")
    if interval < 1:
        raise ValueError(f"interval must be at least 1 step, not {interval}")
    _finite("timestep (fs)", timestep_fs, 0.0, strict=True)
    _finite("temperature (K)", temperature, 0.0, strict=False)
    _finite("friction (1/fs)", friction, 0.0, strict=ensemble == "npt")
    _finite("pressure (GPa)", pressure_gpa, -np.inf, strict=False)
    _limit("max_temperature (K)", max_temperature)
    _limit("max_energy_jump (eV/atom)", max_energy_jump)
    _limit("max_displacement (Å)", max_displacement)


@dataclass
class MDResult:
    steps: int
    wall_s: float
    ns_per_day: float
    drift_ev_per_atom_ps: float | None  # NVE only: slope of total energy per atom
    log_path: Path | None


def _dynamics(
    atoms: Atoms,
    ensemble: str,
    timestep_fs: float,
    temperature: float,
    friction: float,
    pressure_gpa: float,
    seed: int,
):
    dt = timestep_fs * units.fs
    rng = np.random.default_rng(seed)
    if ensemble == "nve":
        return VelocityVerlet(atoms, timestep=dt)
    if ensemble == "nvt":
        return Langevin(
            atoms,
            timestep=dt,
            temperature_K=temperature,
            friction=friction / units.fs,
            fixcm=False,
            rng=rng,
        )
    if ensemble == "npt":
        if not atoms.pbc.all():
            raise ValueError("NPT needs a cell periodic in all three directions")
        return LangevinBAOAB(
            atoms,
            timestep=dt,
            temperature_K=temperature,
            externalstress=pressure_gpa * units.GPa,
            hydrostatic=True,
            T_tau=1.0 / friction * units.fs,
            P_tau=1000 * units.fs,
            rng=rng,
        )
    raise ValueError(f"unknown ensemble {ensemble!r} (nve, nvt or npt)")


def validate_start(
    atoms: Atoms,
    source: str = "start structure",
    index: int | None = None,
    r_max: float | None = None,
) -> None:
    """Refuse a start structure as ``eval`` refuses structures
    (:func:`openmace.data.validation.validate_structure`: :class:`DataError` for non-finite or
    absurd positions, a degenerate cell, atoms closer than 0.1 Å, ...; with ``r_max``, also a
    neighbour list that would not fit in memory)."""
    from openmace.data.validation import validate_structure

    validate_structure(
        atoms.positions,
        atoms.numbers,
        atoms.cell[:],
        atoms.pbc,
        source=source,
        index=index,
        r_max=r_max,
    )


class _Guard:
    """Checks the state after every step; raises :class:`SimulationError` on a tripped guard."""

    def __init__(self, atoms: Atoms, dyn, ensemble: str, limits: dict, kept) -> None:
        self.atoms, self.dyn, self.ensemble, self.kept = atoms, dyn, ensemble, kept
        self.max_temperature = limits["max_temperature"]
        self.max_energy_jump = limits["max_energy_jump"]
        self.max_displacement = limits["max_displacement"]
        self.previous_positions: np.ndarray | None = None
        self.previous_total: float | None = None

    def fail(self, problem: str, step: int | None = None) -> None:
        step = self.dyn.nsteps if step is None else step
        time_ps = step * self.dyn.dt / (1000 * units.fs)
        raise SimulationError(
            f"MD stopped at step {step} (t = {time_ps:.6g} ps): {problem}. The dynamics are "
            f"unstable (a timestep too large for this model, or a bad start structure); "
            f"{self.kept()}",
            step,
            time_ps,
        )

    def __call__(self) -> None:
        atoms = self.atoms
        positions = atoms.get_positions()
        if not np.isfinite(positions).all():
            atom = int(np.argwhere(~np.isfinite(positions))[0][0])
            self.fail(f"the position of atom {atom} is not finite")
        if atoms.pbc.any() and not np.isfinite(atoms.cell[:]).all():
            self.fail("the cell is not finite")
        epot = atoms.get_potential_energy()
        if not np.isfinite(epot):
            self.fail(f"the potential energy is {epot}")
        forces = atoms.get_forces()
        if not np.isfinite(forces).all():
            atom = int(np.argwhere(~np.isfinite(forces))[0][0])
            self.fail(f"the force on atom {atom} is not finite")
        ekin = atoms.get_kinetic_energy()
        temperature = atoms.get_temperature()
        if not (np.isfinite(ekin) and np.isfinite(temperature)):
            self.fail(f"the temperature is {temperature}")
        if temperature > self.max_temperature:
            self.fail(
                f"the temperature {temperature:.5g} K is above the limit of "
                f"{self.max_temperature:.5g} K (max_temperature / --max-temperature)"
            )
        total = epot + ekin
        if self.ensemble == "nve" and self.previous_total is not None:
            jump = abs(total - self.previous_total) / len(atoms)
            if jump > self.max_energy_jump:
                self.fail(
                    f"the total energy changed by {jump:.3g} eV/atom in one step, above the "
                    f"limit of {self.max_energy_jump:.3g} eV/atom "
                    "(max_energy_jump / --max-energy-jump)"
                )
        if self.previous_positions is not None:
            moved = np.linalg.norm(positions - self.previous_positions, axis=1)
            atom = int(np.argmax(moved))
            if moved[atom] > self.max_displacement:
                self.fail(
                    f"atom {atom} moved {moved[atom]:.3g} Å in one step, above the limit of "
                    f"{self.max_displacement:.3g} Å (max_displacement / --max-displacement)"
                )
        self.previous_positions, self.previous_total = positions, total


def _open_output(path: Path, what: str, opener):
    from openmace.io.files import OutputPathError

    try:
        return opener()
    except OSError as err:
        reason = err.strerror or str(err)
        raise OutputPathError(f"cannot write the {what} {path}: {reason}") from err


def _uninterrupted(write):
    """``write`` with SIGINT and SIGTERM held back until it returns (delivered right after), so
    that an interruption never leaves half a trajectory frame, which makes the file unreadable."""
    if (
        not hasattr(signal, "pthread_sigmask")
        or threading.current_thread() is not threading.main_thread()
    ):
        return write
    held = {signal.SIGINT, signal.SIGTERM}

    def guarded() -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            write()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    return guarded


def run_md(
    atoms: Atoms,
    ensemble: str = "nvt",
    timestep_fs: float = 0.5,
    temperature: float = 300.0,
    steps: int = 1000,
    friction: float = 0.01,
    pressure_gpa: float = 0.0,
    trajectory: str | Path | None = None,
    interval: int = 10,
    log_path: str | Path | None = None,
    seed: int = 0,
    progress: bool = False,
    *,
    max_temperature: float | None = None,
    max_energy_jump: float = DEFAULT_MAX_ENERGY_JUMP,
    max_displacement: float = DEFAULT_MAX_DISPLACEMENT,
) -> MDResult:
    """Run MD on ``atoms`` (its calculator attached) and return timings and, for NVE, the drift.

    Raises ``ValueError`` for options out of range (before anything is written) and
    :class:`SimulationError` when a guard trips (see the module docstring); the log and
    trajectory written up to then are kept.
    """
    check_md_options(
        ensemble,
        timestep_fs,
        temperature,
        steps,
        friction,
        pressure_gpa,
        interval,
        max_temperature,
        max_energy_jump,
        max_displacement,
    )
    if atoms.calc is None:
        raise ValueError("atoms need a calculator")
    validate_start(atoms)
    if ensemble == "npt" and not atoms.pbc.all():
        raise ValueError("NPT needs a cell periodic in all three directions")
    limits = {
        "max_temperature": temperature_limit(temperature, max_temperature),
        "max_energy_jump": max_energy_jump,
        "max_displacement": max_displacement,
    }
    periodic = bool(atoms.pbc.all())
    header = "time_ps,epot_eV,ekin_eV,etot_eV,temperature_K" + (
        ",pressure_GPa,volume_A3" if periodic else ""
    )
    log_file = traj = bar = None
    if log_path:
        log_file = _open_output(Path(log_path), "log", lambda: open(log_path, "w"))  # noqa: SIM115
    try:
        if log_file is not None:
            log_file.write(header + "\n")
            log_file.flush()
        if trajectory:
            traj = _open_output(
                Path(trajectory), "trajectory", lambda: Trajectory(str(trajectory), "w", atoms)
            )
        MaxwellBoltzmannDistribution(
            atoms, temperature_K=temperature, rng=np.random.default_rng(seed)
        )
        Stationary(atoms)
        if not atoms.pbc.any():
            ZeroRotation(atoms)
        dyn = _dynamics(atoms, ensemble, timestep_fs, temperature, friction, pressure_gpa, seed)
        logged: list[int] = []
        totals: list[tuple[float, float]] = []  # (time ps, total energy eV) for the NVE drift

        def kept() -> str:
            files = " and ".join(
                name for name, f in (("log", log_file), ("trajectory", traj)) if f is not None
            )
            if not files:
                return "no log or trajectory was being written"
            if not logged:
                return f"nothing was written to the {files} before this step"
            return f"the {files} up to step {logged[-1]} are kept"

        guard = _Guard(atoms, dyn, ensemble, limits, kept)
        dyn.attach(guard, interval=1)  # before any writer
        if traj is not None:
            dyn.attach(_uninterrupted(traj.write), interval=interval)

        def record() -> None:
            epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
            time_ps = dyn.get_time() / (1000 * units.fs)
            row = [time_ps, epot, ekin, epot + ekin, atoms.get_temperature()]
            if periodic:
                row += [
                    -atoms.get_stress(include_ideal_gas=True)[:3].mean() / units.GPa,
                    atoms.get_volume(),
                ]
            if log_file is not None:
                log_file.write(",".join(f"{value:.12g}" for value in row) + "\n")
                log_file.flush()
            totals.append((time_ps, epot + ekin))
            logged.append(dyn.nsteps)

        dyn.attach(record, interval=interval)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, unit="step", dynamic_ncols=True)

            def tick() -> None:
                bar.update(1)
                elapsed = bar.format_dict["elapsed"] or 1e-9
                bar.set_postfix(
                    ns_per_day=f"{bar.n * timestep_fs * 1e-6 / elapsed * 86400:.3f}",
                    T=f"{atoms.get_temperature():.0f}K",
                )

            dyn.attach(tick, interval=1)
        start = time.perf_counter()
        try:
            dyn.run(steps)
        except DataError as err:  # the calculator refused a structure the dynamics produced
            if guard.previous_positions is None:  # the start structure itself
                raise
            guard.fail(f"the structure became invalid: {err.problem}", step=dyn.nsteps + 1)
        wall = time.perf_counter() - start
    finally:  # any exit, also Ctrl-C and SIGTERM turned into an exception, closes the files
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
        if traj is not None:
            traj.close()
    drift = None
    if ensemble == "nve" and len(totals) > 2:
        data = np.array(totals)
        drift = float(np.polyfit(data[:, 0], data[:, 1] / len(atoms), 1)[0])
    ns_per_day = steps * timestep_fs * 1e-6 / max(wall, 1e-9) * 86400
    return MDResult(steps, wall, ns_per_day, drift, Path(log_path) if log_path else None)
