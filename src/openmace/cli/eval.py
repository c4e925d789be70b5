"""``openmace eval``: batched predictions for a file of structures, with errors when labelled.

Writes ``MACE_energy`` (eV), ``MACE_forces`` (eV/Å), ``MACE_energies`` (eV per atom, with E0)
and, for fully periodic structures, ``MACE_stress`` (eV/Å³, 3×3 row-major): mace-torch's key
names, so existing scripts keep working. Labels that ASE holds in a SinglePointCalculator (plain
``energy=``, ``forces``, ``stress=`` ... keys) are kept in the output under their names.

The output (and the parity plot) is written atomically: it never replaces an input (``--model``,
``--configs``, also through links), an existing file only with ``--overwrite``, and a failed
write (a full disk) leaves no partial file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "predict energies, forces and stresses for a file of structures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, type=Path, help="openmace model file or mace-torch .model"
    )
    parser.add_argument("--head", default=None, help="head of a multi-head model (name)")
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
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output (and parity plot)"
    )


def interrupted(args: argparse.Namespace) -> str:
    """Added to the message when the run is stopped by Ctrl-C or SIGTERM."""
    return f"{args.output} is written only when complete (an earlier file is left as it was)"


def keep_calculator_labels(atoms) -> None:
    """Move the results of ``atoms.calc`` (labels ASE reads into a SinglePointCalculator) into
    ``atoms.info`` (per structure) and ``atoms.arrays`` (per atom) under their names, so they
    are written with the predictions; existing info/arrays keys are not replaced."""
    import numpy as np
    from ase.io.extxyz import per_config_properties

    results = getattr(atoms.calc, "results", None) or {}
    for key, value in results.items():
        if key in atoms.info or key in atoms.arrays:
            continue
        array = np.asarray(value)
        if key not in per_config_properties and array.ndim >= 1 and len(array) == len(atoms):
            atoms.arrays[key] = array
        else:
            atoms.info[key] = value
    atoms.calc = None


def _check_prefix(frames, keys, prefix: str) -> None:
    """Refuse a ``--prefix`` whose keys would replace the input's labels in the output."""
    written = {f"{prefix}{name}" for name in ("energy", "forces", "energies", "stress")}
    labels = {keys.energy, keys.forces, keys.stress}
    for atoms in frames:
        present = set(atoms.info) | set(atoms.arrays)
        clash = sorted(written & labels & present)
        if clash:
            raise ValueError(
                f"--prefix {prefix!r} would replace the labels {', '.join(clash)} of the input "
                "in the output; choose another --prefix"
            )


def run(args: argparse.Namespace) -> int:
    import ase.io
    import torch

    from openmace.accel import for_inference
    from openmace.data.configurations import Keys, read_configurations
    from openmace.evaluation.metrics import error_rows, format_table, predictions_from
    from openmace.evaluation.plots import plot_parity
    from openmace.evaluation.predict import predict_configurations
    from openmace.io.files import atomic_open, atomic_path, check_outputs
    from openmace.io.model_file import load_model
    from openmace.model.heads import single_head

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {args.batch_size}")
    inputs = {"--model": args.model, "--configs": args.configs}
    check_outputs({"--output": args.output}, inputs, args.overwrite, create_folders=True)
    keys = Keys(energy=args.energy_key, forces=args.forces_key, stress=args.stress_key)
    configs = read_configurations(args.configs, keys)
    frames = ase.io.read(args.configs, index=":")
    for atoms in frames:
        keep_calculator_labels(atoms)
    _check_prefix(frames, keys, args.prefix)
    labelled = any(c.energy is not None or c.forces is not None for c in configs)
    plot = args.output.with_suffix(".parity.png")
    if labelled:
        outputs = {"--output": args.output, "parity plot": plot}
        check_outputs(outputs, inputs, args.overwrite)
    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    model = for_inference(single_head(model, args.head))
    outputs = list(
        predict_configurations(
            model, configs, args.batch_size, progress=not args.quiet and sys.stderr.isatty()
        )
    )
    p = args.prefix
    for atoms, result in zip(frames, outputs):
        atoms.info[f"{p}energy"] = result["energy"]
        atoms.arrays[f"{p}forces"] = result["forces"]
        atoms.arrays[f"{p}energies"] = result["energies"]
        if result["stress"] is not None:
            atoms.info[f"{p}stress"] = result["stress"].reshape(-1)
    with atomic_open(args.output, "w") as fh:
        ase.io.write(fh, frames, format="extxyz")
    print(f"{len(frames)} structures evaluated with {args.model} ({args.dtype}, {args.device})")
    predictions = predictions_from(configs, outputs)
    if predictions.energy_ref or predictions.forces_ref:
        print(format_table({"eval": error_rows(predictions)}))
        with atomic_path(plot) as tmp:
            plot_parity({"eval": predictions}, tmp)
        print(f"parity plot: {plot}")
    print(f"output: {args.output}")
    return 0
