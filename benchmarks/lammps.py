"""LAMMPS (pair_style openmace, 1 and 2 MPI ranks) vs openmace's ASE calculator: time per MD step.

    python benchmarks/lammps.py --model MODEL [--element Cu] [--sizes 108,500]
        [--dtypes float64] [--steps 20] [--threads 2] [--comm exchange]

MODEL: an openmace model file, a mace-torch ``.model`` file or a mace-torch config folder
(e.g. the parity fixture ``p3_periodic_L2_first_nonresidual`` with its weights decompressed,
elements Si and Cu). Structures: fcc ``--element`` (a = 3.61 Å), cubic supercells of about the
given number of atoms, rattled by 0.05 Å. Per case:

* calculator: ``MACECalculator`` (compiled kernels when available) energy + forces, median of
  ``--steps`` calls after 2 warm-up calls, a position nudged before each, in a fresh process
  (its peak RSS reported);
* LAMMPS: ``run --steps`` of NVE (0.5 fs) after a 2-step warm-up, the loop time per step, with
  1 rank × ``--threads`` PyTorch threads, 1 rank × 1 thread, and 2 ranks × 1 thread
  (``pair_style openmace comm --comm``); peak RSS per rank by ``/usr/bin/time``, summed.

With ``--mace-python`` (the python of a venv with mace-torch 0.3.16) and a MODEL folder that
holds mace-torch's ``model.model`` (the foundation look-alikes of
``tests/fixtures/make_foundation_fixtures.py --full``), mace-torch's ASE calculator is timed too
(``mace_torch_worker.py``, its default allocator, in its own process).

Prints one table: ms per step, atom-steps/s, LAMMPS 1 rank / calculator, the MPI speed-up
(1 rank × 1 thread / 2 ranks × 1 thread: twice the cores), peak memory, and the energies at
step 0 (the total; LAMMPS - calculator; 2 ranks - 1 rank) and the load average.
"""

from __future__ import annotations

import argparse
import os
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
from compare_mace_torch import run_json  # this folder is on sys.path when run as a script

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


def calculator_ms(model, atoms: ase.Atoms, dtype: str, steps: int, threads: int):
    """(ms per energy + forces call, energy at the start, peak RSS in MB) in this process."""
    import resource

    torch.set_num_threads(threads)
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return 1000 * float(np.median(times)), energy, peak


def calculator_in_child(*args):
    """:func:`calculator_ms` in a fresh process (so that its peak memory is its own)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(calculator_ms, args)


def mace_torch_ms(args, atoms: ase.Atoms, dtype: str, folder: Path) -> dict:
    """mace-torch's calculator on ``atoms`` (``mace_torch_worker.py time``): ms, peak MB."""
    xyz = folder / "mace.xyz"
    ase.io.write(xyz, atoms)
    worker = Path(__file__).resolve().parent / "mace_torch_worker.py"
    # mace-torch reads its .model by unpickling (torch.load with weights_only off): only for
    # model files this project made (the look-alikes), never for files from elsewhere
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    command = [args.mace_python, str(worker), "time", str(args.model), str(xyz), dtype]
    # capped address space and time: a case mace-torch cannot do is a table entry, not the end
    return run_json(
        [*command, str(args.steps)], env, args.mace_timeout, memory_gb=args.mace_memory_gb
    )


def lammps_ms(folder: Path, atoms, model_file, plugin, element, ranks, threads, steps, comm):
    """(ms per MD step, energy at step 0, peak RSS summed over ranks in MB)."""
    ase.io.write(folder / "atoms.data", atoms, format="lammps-data", masses=True)
    script = f"""units metal
atom_style atomic
boundary p p p
read_data {folder / "atoms.data"}
plugin load {plugin}
pair_style openmace threads {threads} comm {comm}
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
    timed = ["/usr/bin/time", "-f", "MAXRSS_KB %M", str(lammps_binary())]
    command = [executables()["mpirun"], "-np", str(ranks), *timed, "-in", "in.lammps"]
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
    peaks = re.findall(r"MAXRSS_KB (\d+)", done.stderr)
    # a rank's line is sometimes lost when MPICH ends the run (seen on 2 ranks): NaN, not a sum
    # over fewer ranks
    peak = sum(int(kb) for kb in peaks) / 1024 if len(peaks) == ranks else float("nan")
    return 1000 * float(loops[-1]) / steps, energy, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--element", default="Cu")
    parser.add_argument("--sizes", default="108,500")
    parser.add_argument("--dtypes", default="float64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--comm", default="exchange", choices=["exchange", "shell"])
    parser.add_argument("--mace-python", help="python with mace-torch: time its calculator")
    parser.add_argument(
        "--mace-memory-gb", type=float, default=16.0, help="mace-torch's address-space cap"
    )
    parser.add_argument("--mace-timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument(
        "--only-two-ranks",
        action="store_true",
        help="only LAMMPS on 2 ranks x 1 thread (the scale runs: cells too large for the rest)",
    )
    args = parser.parse_args()
    plugin = build_plugin()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for dtype in args.dtypes.split(","):
            model = load_any(args.model, getattr(torch, dtype))
            assert chemical_symbols.index(args.element) in model.config.atomic_numbers
            model_file = export_lammps(model, folder / f"model_{dtype}.pt")
            for size in map(int, args.sizes.split(",")):
                atoms = fcc(args.element, size)
                run = (folder, atoms, model_file, plugin, args.element)
                n = len(atoms)
                if args.only_two_ranks:
                    two, e_two, two_mb = lammps_ms(*run, 2, 1, args.steps, args.comm)
                    rows.append(
                        f"| {dtype} | {n} | - | - | - | {two:.1f} | - | - | {n / two * 1e3:.0f} "
                        f"| - | - | - | - | {two_mb:.0f} | {e_two:.6g} | - | - |"
                    )
                    print(rows[-1], flush=True)
                    continue
                calc, e_calc, calc_mb = calculator_in_child(
                    model, atoms, dtype, args.steps, args.threads
                )
                mace = mace_torch_ms(args, atoms, dtype, folder) if args.mace_python else None
                one, e_one, one_mb = lammps_ms(*run, 1, args.threads, args.steps, args.comm)
                single, _, _ = lammps_ms(*run, 1, 1, args.steps, args.comm)
                two, e_two, two_mb = lammps_ms(*run, 2, 1, args.steps, args.comm)
                rows.append(
                    f"| {dtype} | {n} | {calc:.1f} | {one:.1f} | {single:.1f} | {two:.1f} | "
                    f"{n / calc * 1e3:.0f} | {n / one * 1e3:.0f} | {n / two * 1e3:.0f} | "
                    f"{one / calc:.2f} | {single / two:.2f} | {calc_mb:.0f} | {one_mb:.0f} | "
                    f"{two_mb:.0f} | {e_calc:.6g} | {e_one - e_calc:.1e} | {e_two - e_one:.1e} |"
                )
                if mace is not None and "error" in mace:
                    rows[-1] += f" {mace['error']} | - | - | - |"
                elif mace is not None:
                    rows[-1] += (
                        f" {mace['ms']:.1f} | {n / mace['ms'] * 1e3:.0f} | "
                        f"{mace['ms'] / one:.1f} | {mace['peak_mb']:.0f} |"
                    )
                print(rows[-1], flush=True)
    print(
        f"\n{args.model.name}, fcc {args.element}, ms per step; calculator and LAMMPS 1 rank with "
        f"{args.threads} thread(s), LAMMPS 1 x 1 and 2 x 1 (ranks x threads), comm {args.comm}"
    )
    print(
        "| dtype | atoms | calculator ms | LAMMPS 1 rank ms | 1 x 1 ms | 2 x 1 ms"
        " | calc atom-steps/s | 1 rank atom-steps/s | 2 x 1 atom-steps/s | 1 rank / calc"
        " | MPI speed-up 1x1 / 2x1 |"
        " calc MB | 1 rank MB | 2 ranks MB | E eV | E LAMMPS - calc eV | E 2 - 1 ranks eV |"
    )
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.mace_python:
        print("(then: mace-torch ms | mace-torch atom-steps/s | mace-torch / LAMMPS 1 rank | MB)")
    print("|---" * 17 + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
