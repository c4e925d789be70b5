"""``openmace md``: molecular dynamics (NVE, Langevin NVT, Langevin NPT) with a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "run molecular dynamics from a structure file with a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--structure", required=True, type=Path, help="start (ASE-readable)")
    parser.add_argument(
        "--index", type=int, default=-1, help="structure in the file (default last)"
    )
    parser.add_argument("--ensemble", default="nvt", choices=["nve", "nvt", "npt"])
    parser.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--friction", type=float, default=0.01, help="1/fs (default 0.01)")
    parser.add_argument("--pressure", type=float, default=0.0, help="GPa, NPT (default 0)")
    parser.add_argument("--trajectory", type=Path, default=Path("md.traj"))
    parser.add_argument("--interval", type=int, default=10, help="steps between frames/log lines")
    parser.add_argument("--log", type=Path, default=Path("md.csv"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    import ase.io

    from openmace.calculators import MACECalculator
    from openmace.simulate import run_md

    atoms = ase.io.read(args.structure, index=args.index)
    atoms.calc = MACECalculator(model=args.model, device=args.device, dtype=args.dtype)
    result = run_md(
        atoms,
        args.ensemble,
        args.timestep,
        args.temperature,
        args.steps,
        args.friction,
        args.pressure,
        args.trajectory,
        args.interval,
        args.log,
        args.seed,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    print(
        f"{result.steps} steps of {args.timestep} fs ({args.ensemble}) in {result.wall_s:.1f} s: "
        f"{result.ns_per_day:.3f} ns/day"
    )
    if result.drift_ev_per_atom_ps is not None:
        print(f"total-energy drift: {result.drift_ev_per_atom_ps:.3e} eV/atom/ps")
    print(f"trajectory: {args.trajectory}  log: {args.log}")
    return 0
