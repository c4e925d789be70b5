"""``openmace demo``: energy and forces of a small molecule with the bundled demo model.

The bundled model is mace-torch parity fixture ``p2_molecular_L1`` (H, C, N, O; 32x0e+32x1o,
correlation 3) converted to openmace. Its weights are randomly perturbed, so the numbers show
the machinery working, not chemistry.
"""

from __future__ import annotations

import argparse
import difflib
from importlib.resources import files

HELP = "evaluate a small molecule with the bundled demo model (or --model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model file (default: bundled demo model)")
    parser.add_argument(
        "--molecule", default="CH3CH2OH", help="ASE molecule name (default ethanol)"
    )


def molecule_names() -> list[str]:
    """The names ``ase.build.molecule`` knows (the G2 set and ASE's extras)."""
    from ase.build.molecule import extra
    from ase.collections import g2

    return [*g2.names, *extra]


def run(args: argparse.Namespace) -> int:
    import ase.build
    import torch

    from openmace.accel import for_inference
    from openmace.data.graph import batch_atoms
    from openmace.io.model_file import load_model

    names = molecule_names()
    if args.molecule not in names:
        close = difflib.get_close_matches(args.molecule, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"--molecule {args.molecule!r} is not one of ASE's molecules ({hint}"
            "e.g. H2O, CH4, CH3CH2OH, C6H6; the list: python -c 'import ase.collections; "
            "print(ase.collections.g2.names)')"
        )
    path = args.model or str(files("openmace") / "resources" / "demo-hcno.safetensors")
    model = for_inference(load_model(path, dtype=torch.float64))
    atoms = ase.build.molecule(args.molecule)
    out = model(batch_atoms([atoms], model.config.r_max))
    print(f"model: {path}")
    print(f"molecule: {args.molecule} ({len(atoms)} atoms), float64, CPU")
    print(f"energy: {out['energy'].item():.6f} eV")
    print(f"{'atom':>4} {'el':>2} {'Fx (eV/Å)':>12} {'Fy (eV/Å)':>12} {'Fz (eV/Å)':>12}")
    for i, (symbol, f) in enumerate(zip(atoms.get_chemical_symbols(), out["forces"].tolist())):
        print(f"{i:>4} {symbol:>2} {f[0]:>12.6f} {f[1]:>12.6f} {f[2]:>12.6f}")
    total = out["forces"].sum(0).abs().max().item()
    print(f"max |Σ F| = {total:.2e} eV/Å (zero by translation invariance)")
    return 0
