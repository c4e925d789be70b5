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
    from openmace.io.model_file import check_model_file, is_mace_torch_file

    if is_mace_torch_file(args.model):
        return _mace_torch_info(args.model)
    header = check_model_file(args.model)
    config = header["config"]
    print(
        f"file                   {args.model} (format {header['format_version']}, "
        f"openmace {header.get('openmace_version', '?')}, stored as {header.get('dtype', '?')})"
    )
    _print_config(config)
    print(f"parameters             {header['parameters']} in {len(header['tensors'])} tensors")
    print(f"units                  {header['units']}")
    if header["provenance"]:
        print(f"provenance             {header['provenance']}")
    return 0


def _print_config(config) -> None:
    from ase.data import chemical_symbols

    elements = " ".join(chemical_symbols[z] for z in config.atomic_numbers)
    print(f"elements               {elements}")
    heads = config.heads
    print(f"heads                  {len(heads)}: {', '.join(heads)}")
    for name, energies in zip(heads, config.head_energies):
        label = "E0 (eV)" if len(heads) == 1 else f"E0 (eV) {name}"
        values = ", ".join(
            f"{chemical_symbols[z]} {e:.6f}" for z, e in zip(config.atomic_numbers, energies)
        )
        print(f"{label:<22} {values}")
    for key, value in config.to_dict().items():
        if key not in ("atomic_numbers", "atomic_energies", "heads"):
            print(f"{key:<22} {value}")


def _mace_torch_info(path: Path) -> int:
    """A mace-torch ``.model``: read safely and converted in memory (nothing is written)."""
    from openmace.io.mace_torch import load_mace_torch

    model = load_mace_torch(path)
    print(f"file                   {path} (mace-torch model, read without running its code)")
    _print_config(model.config)
    print(f"parameters             {sum(p.numel() for p in model.parameters())}")
    print("units                  energy eV, length Å")
    return 0
