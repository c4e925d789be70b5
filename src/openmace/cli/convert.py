"""``openmace convert SRC -o DST``: import a mace-torch model into an openmace model file."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "convert a mace-torch model (config.json + weights.safetensors folder, or .model) to openmace"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="mace-torch folder or .model file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="openmace model file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--head", default=None, help="keep one head of a multi-head model (a single-head file)"
    )


def run(args: argparse.Namespace) -> int:
    from openmace.io.files import check_outputs
    from openmace.io.mace_torch import load_mace_torch
    from openmace.io.model_file import save_model
    from openmace.model.heads import single_head

    inputs = {"SOURCE": args.source}
    for name in ("config.json", "weights.safetensors"):  # a mace-torch folder's files
        inputs[f"SOURCE/{name}"] = args.source / name
    check_outputs({"--output": args.output}, inputs, args.overwrite, create_folders=True)
    model = load_mace_torch(args.source)
    provenance = {"converted_from": str(args.source)}
    if args.head is not None:
        model = single_head(model, args.head)
        provenance["head"] = args.head
    heads = model.config.heads
    path = save_model(model, args.output, provenance=provenance)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.source} ({n} parameters, elements {model.config.atomic_numbers})")
    print(f"heads: {', '.join(heads)}" + (" (choose one with --head)" if len(heads) > 1 else ""))
    print(f"model: {path}")
    return 0
