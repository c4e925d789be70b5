"""``openmace prepare-data``: ASE-readable files → a prepared (sharded HDF5) data set.

    openmace prepare-data train.xyz more/ -o prepared/train --r-max 5.0 [--workers 2]

``openmace train --train-file prepared/train`` then reads it lazily. See
:mod:`openmace.data.prepare` (what is written, resume after an interruption).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HELP = (
    "prepare a large data set for training: validated structures, labels, neighbour counts and "
    "statistics in HDF5 shards, streaming and in parallel"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dataclasses import asdict

    from openmace.data.prepare import PrepareOptions
    from openmace.model.config import MACEConfig

    # the cutoff's default is the model's, declared once by MACEConfig
    defaults = PrepareOptions(r_max=MACEConfig.__dataclass_fields__["r_max"].default)
    parser.add_argument("inputs", nargs="+", help="ASE-readable files, or folders of them")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder to create")
    parser.add_argument(
        "--r-max",
        type=float,
        default=defaults.r_max,
        help=f"cutoff (Å) of the neighbour counts: the model's r_max (default {defaults.r_max})",
    )
    parser.add_argument(
        "--store-neighbours",
        action="store_true",
        help="also store every neighbour list (within --r-max), not only its size",
    )
    parser.add_argument(
        "--shard-size", type=int, default=defaults.shard_size, help="structures per shard"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="processes that parse and write shards",
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip structures that fail validation (counted in the manifest) instead of stopping",
    )
    for label, default in asdict(defaults.keys).items():
        if label in ("config_type", "config_weight"):
            continue
        parser.add_argument(
            f"--{label}-key", default=default, help=f"name of the {label} label ({default})"
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from openmace.data.configurations import Keys
    from openmace.data.prepare import PrepareOptions, prepare

    if args.shard_size < 1 or args.workers < 1:
        raise ValueError("--shard-size and --workers must be >= 1")
    if not args.r_max > 0:
        raise ValueError("--r-max must be positive")
    for item in args.inputs:
        if Path(item).resolve() == args.output.resolve():
            raise ValueError(f"--output {args.output} is also an input")
    logging.getLogger("openmace").setLevel(logging.INFO)
    options = PrepareOptions(
        r_max=args.r_max,
        keys=Keys(args.energy_key, args.forces_key, args.stress_key, args.virials_key),
        shard_size=args.shard_size,
        neighbours=args.store_neighbours,
        skip_invalid=args.skip_invalid,
        workers=args.workers,
    )
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc="prepare-data", unit="shard", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        manifest = prepare(args.inputs, args.output, options, progress)
    finally:
        if bar is not None:
            bar.close()
    stats = manifest["statistics"]
    print(
        f"{args.output}: {manifest['structures']} structures, {manifest['atoms']} atoms in "
        f"{len(manifest['shards'])} shard(s); {manifest['skipped_count']} skipped"
    )
    if "avg_num_neighbors" in stats:
        print(
            f"r_max {manifest['r_max']:g} Å: avg_num_neighbors {stats['avg_num_neighbors']:.3f}, "
            f"shift {stats['shift']:.6f} eV/atom, scale {stats['scale']:.6f} eV/Å "
            f"(E0s: {stats['e0s_source']})"
        )
    for item in manifest["skipped"][:10]:
        print(f"skipped {item['source']}: structure {item['index']}: {item['problem']}")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """After Ctrl-C: the finished shards are kept; the same command continues."""
    return (
        f"finished shards are kept in {args.output}.partial; run the same command again to continue"
    )
