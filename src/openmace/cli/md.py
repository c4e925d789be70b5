"""``openmace md``: molecular dynamics (NVE, Langevin NVT, Langevin NPT) with a model.

Options, paths and the start structure are checked before the model is loaded: the trajectory
and log never replace an input (``--structure``, ``--model``) and replace an existing file only
with ``--overwrite``. The log is written line by line as the run goes; the guards against
blow-ups (``--max-temperature``, ``--max-energy-jump``, ``--max-displacement``) are described
in :mod:`openmace.simulate`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "run molecular dynamics from a structure file with a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, type=Path, help="openmace model file or mace-torch .model"
    )
    parser.add_argument("--head", default=None, help="head of a multi-head model (name)")
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
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing trajectory and log"
    )
    parser.add_argument(
        "--max-temperature",
        type=float,
        default=None,
        help="K: stop when the temperature exceeds it (default: the larger of 10000 K and "
        "20 times --temperature)",
    )
    parser.add_argument(
        "--max-energy-jump",
        type=float,
        default=0.5,
        help="eV/atom: NVE stops when the total energy changes more in one step (default 0.5)",
    )
    parser.add_argument(
        "--max-displacement",
        type=float,
        default=1.0,
        help="Å: stop when an atom moves more in one step (default 1)",
    )


def interrupted(args: argparse.Namespace) -> str:
    """Added to the message when the run is stopped by Ctrl-C or SIGTERM."""
    return f"the log {args.log} and trajectory {args.trajectory} keep the steps run so far"


def read_start(path: Path, index: int):
    """The structure ``index`` of ``path``, validated as ``eval`` validates structures."""
    import ase.io

    from openmace.data.errors import DataError
    from openmace.simulate import validate_start

    if not path.is_file():
        raise DataError(path, None, "no such file")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ASE raises many types for malformed files
        raise DataError(path, None, f"cannot read the file: {type(err).__name__}: {err}") from err
    if not frames:
        raise DataError(path, None, "file contains no structures")
    n = len(frames)
    if not -n <= index < n:
        raise ValueError(
            f"--index {index} is out of range: {path} holds {n} structure(s) "
            f"(0 to {n - 1}, or -1 for the last)"
        )
    atoms = frames[index]
    validate_start(atoms, str(path), index % n)
    return atoms


def run(args: argparse.Namespace) -> int:
    from openmace.calculators import MACECalculator
    from openmace.io.files import check_outputs
    from openmace.simulate import check_md_options, run_md

    check_md_options(
        args.ensemble,
        args.timestep,
        args.temperature,
        args.steps,
        args.friction,
        args.pressure,
        args.interval,
        args.max_temperature,
        args.max_energy_jump,
        args.max_displacement,
    )
    check_outputs(
        {"--trajectory": args.trajectory, "--log": args.log},
        {"--structure": args.structure, "--model": args.model},
        args.overwrite,
    )
    atoms = read_start(args.structure, args.index)
    atoms.calc = MACECalculator(
        model=args.model, device=args.device, dtype=args.dtype, head=args.head
    )
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
        max_temperature=args.max_temperature,
        max_energy_jump=args.max_energy_jump,
        max_displacement=args.max_displacement,
    )
    print(
        f"{result.steps} steps of {args.timestep} fs ({args.ensemble}) in {result.wall_s:.1f} s: "
        f"{result.ns_per_day:.3f} ns/day"
    )
    if result.drift_ev_per_atom_ps is not None:
        print(f"total-energy drift: {result.drift_ev_per_atom_ps:.3e} eV/atom/ps")
    print(f"trajectory: {args.trajectory}  log: {args.log}")
    return 0
