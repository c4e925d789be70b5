"""Molecular dynamics with an openmace model through ASE: NVE, Langevin NVT, Langevin NPT.

Units: timestep in fs, temperature in K, friction in 1/fs, pressure in GPa. The log (CSV) holds
time (ps), potential, kinetic and total energy (eV), temperature (K) and, for periodic cells,
pressure (GPa) and volume (Å³).
"""

from __future__ import annotations

import logging
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

log = logging.getLogger("openmace.md")


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
) -> MDResult:
    """Run MD on ``atoms`` (its calculator attached) and return timings and, for NVE, the drift."""
    if atoms.calc is None:
        raise ValueError("atoms need a calculator")
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    dyn = _dynamics(atoms, ensemble, timestep_fs, temperature, friction, pressure_gpa, seed)
    traj = Trajectory(str(trajectory), "w", atoms) if trajectory else None
    if traj is not None:
        dyn.attach(traj.write, interval=interval)
    rows: list[list[float]] = []
    periodic = bool(atoms.pbc.all())

    def record() -> None:
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        row = [dyn.get_time() / (1000 * units.fs), epot, ekin, epot + ekin, atoms.get_temperature()]
        if periodic:
            row += [
                -atoms.get_stress(include_ideal_gas=True)[:3].mean() / units.GPa,
                atoms.get_volume(),
            ]
        rows.append(row)

    dyn.attach(record, interval=interval)
    bar = None
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
    dyn.run(steps)
    wall = time.perf_counter() - start
    if bar is not None:
        bar.close()
    if traj is not None:
        traj.close()
    header = "time_ps,epot_eV,ekin_eV,etot_eV,temperature_K" + (
        ",pressure_GPa,volume_A3" if periodic else ""
    )
    if log_path:
        np.savetxt(log_path, np.array(rows), delimiter=",", header=header, comments="")
    drift = None
    if ensemble == "nve" and len(rows) > 2:
        data = np.array(rows)
        drift = float(np.polyfit(data[:, 0], data[:, 3] / len(atoms), 1)[0])
    ns_per_day = steps * timestep_fs * 1e-6 / max(wall, 1e-9) * 86400
    return MDResult(steps, wall, ns_per_day, drift, Path(log_path) if log_path else None)
