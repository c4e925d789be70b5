"""``openmace export --torchscript|--lammps MODEL -o FILE.pt``: a model for engines without
openmace (plain PyTorch, or LAMMPS' ``pair_style openmace``)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a model as TorchScript or for LAMMPS (runs with PyTorch alone: no openmace)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="openmace model file or mace-torch .model")
    parser.add_argument("--head", default=None, help="head of a multi-head model (name)")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--torchscript", action="store_true", help="TorchScript for one structure at a time"
    )
    kind.add_argument(
        "--lammps",
        action="store_true",
        help="the model file of LAMMPS' pair_style openmace (build the plugin: openmace "
        "lammps-plugin)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="with --lammps: plain PyTorch operations instead of the compiled CPU operators "
        "(for pair_style openmace device cuda)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .pt file")
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], default="float64", help="precision of the file"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    import torch

    from openmace.io.files import check_outputs
    from openmace.io.model_file import load_model
    from openmace.model.heads import single_head

    check_outputs(
        {"--output": args.output}, {"MODEL": args.model}, args.overwrite, create_folders=True
    )
    model = single_head(load_model(args.model, dtype=getattr(torch, args.dtype)), args.head)
    cfg = model.config
    if args.lammps:
        from ase.data import chemical_symbols

        from openmace.io.lammps import export_lammps

        path = export_lammps(model, args.output, operators=not args.reference)
        symbols = " ".join(chemical_symbols[z] for z in cfg.atomic_numbers)
        print(
            f"exported {args.model} for LAMMPS ({args.dtype}, r_max {cfg.r_max} Å, "
            f"{len(model.interactions)} layers: ghost atoms to "
            f"{len(model.interactions) * cfg.r_max:g} Å + skin)"
        )
        print(f"model: {path}")
        print("in the input script (units metal, newton on; one element per atom type):")
        print("  plugin load <openmace lammps-plugin prints its path>")
        print("  pair_style openmace")
        print(f"  pair_coeff * * {path} {symbols}")
        return 0
    from openmace.io.torchscript import export_torchscript

    path = export_torchscript(model, args.output)
    print(
        f"exported {args.model} as TorchScript ({args.dtype}, elements "
        f"{cfg.atomic_numbers}, r_max {cfg.r_max} Å)"
    )
    print(
        "inputs: positions, atomic_numbers, cell, pbc, edge_index, unit_shifts, compute_stress; "
        "outputs: energy, node_energy, forces (+ stress, virials)"
    )
    print(f"model: {path}")
    return 0
