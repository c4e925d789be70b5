"""``openmace info MODEL``: summary of a model file."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "check a model file (header, config, tensor table; no tensor data is read) and print its "
    "hyperparameters, units and provenance"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path)


def run(args: argparse.Namespace) -> int:
    from ase.data import chemical_symbols

    from openmace.io.model_file import check_model_file

    header = check_model_file(args.model)
    config = header["config"]
    elements = " ".join(chemical_symbols[z] for z in config.atomic_numbers)
    print(
        f"file                   {args.model} (format {header['format_version']}, "
        f"openmace {header.get('openmace_version', '?')}, stored as {header.get('dtype', '?')})"
    )
    print(f"elements               {elements}")
    print(
        "E0 (eV)                "
        + ", ".join(
            f"{chemical_symbols[z]} {e:.6f}"
            for z, e in zip(config.atomic_numbers, config.atomic_energies)
        )
    )
    for key, value in config.to_dict().items():
        if key not in ("atomic_numbers", "atomic_energies"):
            print(f"{key:<22} {value}")
    print(f"parameters             {header['parameters']} in {len(header['tensors'])} tensors")
    print(f"units                  {header['units']}")
    if header["provenance"]:
        print(f"provenance             {header['provenance']}")
    return 0
