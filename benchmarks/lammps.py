"""LAMMPS (pair_style openmace, 1 and 2 MPI ranks) vs openmace's ASE calculator: time per MD step.

    python benchmarks/lammps.py --model MODEL [--element Cu] [--sizes 108,500]
        [--dtypes float64] [--steps 20] [--threads 2]

MODEL: an openmace model file, a mace-torch ``.model`` file or a mace-torch config folder
(e.g. the parity fixture ``p3_periodic_L2_first_nonresidual`` with its weights decompressed,
elements Si and Cu). Structures: fcc ``--element`` (a = 3.61 Å), cubic supercells of about the
given number of atoms, rattled by 0.05 Å. Per case:

* calculator: ``MACECalculator`` (compiled kernels when available) energy + forces, median of
  ``--steps`` calls after 2 warm-up calls, a position nudged before each;
* LAMMPS: ``run --steps`` of NVE (0.5 fs) after a 2-step warm-up, the loop time per step, with
  1 rank × ``--threads`` PyTorch threads and with 2 ranks × ``threads/2``.

Prints one table: ms per step, atom-steps/s, LAMMPS 1 rank / calculator and 1 rank / 2 ranks,
and the energy difference at step 0 (LAMMPS - calculator).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.build
import ase.io
import numpy as np
import torch
from ase.data import chemical_symbols

from openmace.calculators.mace import MACECalculator
from openmace.io.lammps import export_lammps
from openmace.io.mace_torch import load_mace_torch
from openmace.io.model_file import load_model
from openmace.lammps import build_plugin, executables, lammps_binary, lammps_environment


def load_any(path: Path, dtype: torch.dtype):
    if path.is_dir() or path.suffix == ".model":
        return load_mace_torch(path, dtype=dtype)
    return load_model(path, dtype=dtype)


def fcc(element: str, n_atoms: int) -> ase.Atoms:
    reps = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = ase.build.bulk(element, "fcc", a=3.61, cubic=True) * (reps, reps, reps)
    atoms.rattle(0.05, seed=1)
    return atoms


def calculator_ms(model, atoms: ase.Atoms, dtype: str, steps: int) -> tuple[float, float]:
    atoms = atoms.copy()
    atoms.calc = MACECalculator(model=model, dtype=dtype)
    energy = atoms.get_potential_energy()
    times = []
    for i in range(steps + 2):
        atoms.positions[0, 0] += 1e-6
        start = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), energy


def lammps_ms(folder: Path, atoms, model_file, plugin, element, ranks, threads, steps):
    ase.io.write(folder / "atoms.data", atoms, format="lammps-data", masses=True)
    script = f"""units metal
atom_style atomic
boundary p p p
read_data {folder / "atoms.data"}
plugin load {plugin}
pair_style openmace threads {threads}
pair_coeff * * {model_file} {element}
velocity all create 300.0 12345 loop geom
fix nve all nve
timestep 0.0005
thermo_style custom step pe
thermo_modify format float %.12e
run 2
run {steps}
"""
    (folder / "in.lammps").write_text(script)
    command = [executables()["mpirun"], "-np", str(ranks), str(lammps_binary()), "-in", "in.lammps"]
    done = subprocess.run(
        command + ["-log", "none"],
        cwd=folder,
        env=lammps_environment(),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(done.stdout[-2000:] + done.stderr[-2000:])
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on", done.stdout)
    energy = float(re.findall(r"^\s+0\s+(\S+)", done.stdout, re.M)[0])
    return 1000 * float(loops[-1]) / steps, energy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--element", default="Cu")
    parser.add_argument("--sizes", default="108,500")
    parser.add_argument("--dtypes", default="float64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plugin = build_plugin()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes.split(","):
            model = load_any(args.model, getattr(torch, dtype))
            assert chemical_symbols.index(args.element) in model.config.atomic_numbers
            model_file = export_lammps(model, Path(tmp) / f"model_{dtype}.pt")
            for size in map(int, args.sizes.split(",")):
                atoms = fcc(args.element, size)
                calc, e_calc = calculator_ms(model, atoms, dtype, args.steps)
                one, e_one = lammps_ms(
                    Path(tmp),
                    atoms,
                    model_file,
                    plugin,
                    args.element,
                    1,
                    args.threads,
                    args.steps,
                )
                two, _ = lammps_ms(
                    Path(tmp),
                    atoms,
                    model_file,
                    plugin,
                    args.element,
                    2,
                    max(1, args.threads // 2),
                    args.steps,
                )
                n = len(atoms)
                rows.append(
                    f"| {dtype} | {n} | {calc:.1f} | {one:.1f} | {two:.1f} | "
                    f"{n / calc * 1e3:.0f} | {n / one * 1e3:.0f} | {n / two * 1e3:.0f} | "
                    f"{one / calc:.2f} | {one / two:.2f} | {e_one - e_calc:.1e} |"
                )
                print(rows[-1], flush=True)
    print(f"\n{args.model.name}, fcc {args.element}, {args.threads} thread(s), ms per step")
    print(
        "| dtype | atoms | calculator ms | LAMMPS 1 rank ms | LAMMPS 2 ranks ms | calc atom-steps/s"
        " | 1 rank atom-steps/s | 2 ranks atom-steps/s | 1 rank / calc | 1 rank / 2 ranks |"
        " ΔE eV |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
