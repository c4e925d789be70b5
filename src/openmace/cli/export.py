"""``openmace export --torchscript MODEL -o FILE.pt``: a model for engines without openmace."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a model as TorchScript (runs with PyTorch alone: no openmace, e3nn or ASE)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="openmace model file or mace-torch .model")
    parser.add_argument("--head", default=None, help="head of a multi-head model (name)")
    parser.add_argument(
        "--torchscript", action="store_true", required=True, help="TorchScript (the only format)"
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
    from openmace.io.torchscript import export_torchscript
    from openmace.model.heads import single_head

    check_outputs(
        {"--output": args.output}, {"MODEL": args.model}, args.overwrite, create_folders=True
    )
    model = single_head(load_model(args.model, dtype=getattr(torch, args.dtype)), args.head)
    path = export_torchscript(model, args.output)
    print(
        f"exported {args.model} as TorchScript ({args.dtype}, elements "
        f"{model.config.atomic_numbers}, r_max {model.config.r_max} Å)"
    )
    print(
        "inputs: positions, atomic_numbers, cell, pbc, edge_index, unit_shifts, compute_stress; "
        "outputs: energy, node_energy, forces (+ stress, virials)"
    )
    print(f"model: {path}")
    return 0
