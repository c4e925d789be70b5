"""``openmace eval``: batched predictions for a file of structures, with errors when labelled.

Writes ``MACE_energy`` (eV), ``MACE_forces`` (eV/Å), ``MACE_energies`` (eV per atom, with E0)
and, for fully periodic structures, ``MACE_stress`` (eV/Å³, 3×3 row-major): mace-torch's key
names, so existing scripts keep working.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "predict energies, forces and stresses for a file of structures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="openmace model file")
    parser.add_argument("--configs", required=True, type=Path, help="structures (ASE-readable)")
    parser.add_argument("--output", required=True, type=Path, help="extended-XYZ output")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--energy-key", "--energy_key", default="REF_energy")
    parser.add_argument("--forces-key", "--forces_key", default="REF_forces")
    parser.add_argument("--stress-key", "--stress_key", default="REF_stress")
    parser.add_argument("--prefix", default="MACE_", help="prefix of the written keys")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import ase.io
    import torch

    from openmace.accel import for_inference
    from openmace.data.configurations import Keys, read_configurations
    from openmace.evaluation.metrics import error_rows, format_table, predictions_from
    from openmace.evaluation.plots import plot_parity
    from openmace.evaluation.predict import predict_configurations
    from openmace.io.model_file import load_model

    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    model = for_inference(model)
    keys = Keys(energy=args.energy_key, forces=args.forces_key, stress=args.stress_key)
    configs = read_configurations(args.configs, keys)
    frames = ase.io.read(args.configs, index=":")
    outputs = list(
        predict_configurations(
            model, configs, args.batch_size, progress=not args.quiet and sys.stderr.isatty()
        )
    )
    p = args.prefix
    for atoms, result in zip(frames, outputs):
        atoms.calc = None
        atoms.info[f"{p}energy"] = result["energy"]
        atoms.arrays[f"{p}forces"] = result["forces"]
        atoms.arrays[f"{p}energies"] = result["energies"]
        if result["stress"] is not None:
            atoms.info[f"{p}stress"] = result["stress"].reshape(-1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(args.output, frames, format="extxyz")
    print(f"{len(frames)} structures evaluated with {args.model} ({args.dtype}, {args.device})")
    predictions = predictions_from(configs, outputs)
    if predictions.energy_ref or predictions.forces_ref:
        print(format_table({"eval": error_rows(predictions)}))
        plot = args.output.with_suffix(".parity.png")
        plot_parity({"eval": predictions}, plot)
        print(f"parity plot: {plot}")
    print(f"output: {args.output}")
    return 0
