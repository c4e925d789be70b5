"""Training-gradient parity: openmace vs mace-torch, same weights, same batch.

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 venv-mace/bin/python benchmarks/gradient_parity.py \
        --structures /path/to/rmd17/aspirin_train.xyz [--count 5] [--channels 16]

Run in the mace-torch venv with openmace installed (``pip install --no-deps -e .``). Builds a random
mace-torch ScaleShiftMACE (float64; the builder of ``tests/fixtures/make_parity_fixture.py``),
converts it, evaluates the paper's loss (energy per atom + 100 × forces, MSE) on one batch with both
codes and backpropagates through the forces (second derivatives, as in training). Prints the loss
and, per parameter, the relative difference of the gradients. Parameters copied 1:1 must agree to
rounding; the radial-MLP and readout layers after a SiLU differ by the ratio of e3nn's Monte-Carlo
SiLU constant to our exact one (1.6e-3), which the converter folds into the weights. Symmetric-
contraction weights are compared by their gradient norm per element and channel (both codes use one
weight per coupling tree; tree order and signs may differ).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--structures", type=Path, required=True)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--channels", type=int, default=16)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from ase.io import read
    from mace import data as mace_data
    from mace.tools import torch_geometric, utils
    from safetensors.torch import save_file

    from openmace.data.graph import batch_atoms
    from openmace.io.mace_torch import load_mace_torch
    from tests.fixtures.make_parity_fixture import build

    torch.set_default_dtype(torch.float64)
    frames = read(args.structures, f":{args.count}")
    numbers = sorted({int(z) for a in frames for z in a.numbers})
    spec = {
        "hidden_irreps": f"{args.channels}x0e+{args.channels}x1o",
        "max_ell": 3,
        "correlation": 3,
        "num_interactions": 2,
        "atomic_numbers": numbers,
        "r_max": 5.0,
        "pair_repulsion": False,
        "first": "Residual",
    }
    theirs, config = build(spec, np.random.default_rng(0))
    folder = Path(tempfile.mkdtemp())
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in theirs.state_dict().items()}
    save_file(state, str(folder / "weights.safetensors"))
    ours = load_mace_torch(folder)

    table = utils.AtomicNumberTable(numbers)
    graphs = [
        mace_data.AtomicData.from_config(mace_data.config_from_atoms(a), z_table=table, cutoff=5.0)
        for a in frames
    ]
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=len(graphs), shuffle=False)
    batch = next(iter(loader))
    e_ref = torch.tensor([a.info["REF_energy"] for a in frames])
    f_ref = torch.tensor(np.concatenate([a.arrays["REF_forces"] for a in frames]))
    atoms = torch.tensor([len(a) for a in frames], dtype=torch.float64)

    def loss(energy: torch.Tensor, forces: torch.Tensor) -> torch.Tensor:
        return torch.mean(((energy - e_ref) / atoms) ** 2) + 100 * torch.mean((forces - f_ref) ** 2)

    out = theirs(batch.to_dict(), training=True, compute_force=True)
    loss_theirs = loss(out["energy"], out["forces"])
    loss_theirs.backward()
    out = ours(batch_atoms(frames, 5.0), create_graph=True)
    loss_ours = loss(out["energy"], out["forces"])
    loss_ours.backward()
    g_theirs = {k: p.grad for k, p in theirs.named_parameters()}
    g_ours = {k: p.grad for k, p in ours.named_parameters()}

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    def flat(prefix: str) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for k, g in g_ours.items() if k.startswith(prefix)])

    def norm_of(prefix: str) -> float:
        return float(flat(prefix).norm())

    print(f"loss: mace-torch {loss_theirs.item():.12e}  openmace {loss_ours.item():.12e}")
    print(f"{'parameter':<58}{'relative difference':>20}")
    c = args.channels
    rows = [
        (
            "embedding",
            relative(g_ours["embedding"], g_theirs["node_embedding.linear.weight"].view(-1, c)),
        ),
        (
            "readouts.0",
            relative(
                g_ours["readouts.0.mlp.weights.0"].view(-1),
                g_theirs["readouts.0.linear.weight"].view(-1),
            ),
        ),
        (
            "readouts.1 (after SiLU)",
            relative(
                g_ours["readouts.1.mlp.weights.1"].view(-1),
                g_theirs["readouts.1.linear_2.weight"].view(-1),
            ),
        ),
    ]
    for t in range(2):
        for mine, other in (
            ("linear_up", "linear_up.weight"),
            ("linear.", "linear.weight"),
            ("skip", "skip_tp.weight"),
        ):
            a = norm_of(f"interactions.{t}.{mine}")
            b = float(g_theirs[f"interactions.{t}.{other}"].norm())
            rows.append((f"interactions.{t}.{mine.rstrip('.')} (gradient norm)", abs(a - b) / b))
        rows.append(
            (
                f"interactions.{t}.messages.radial_mlp first layer",
                relative(
                    g_ours[f"interactions.{t}.messages.radial_mlp.weights.0"],
                    g_theirs[f"interactions.{t}.conv_tp_weights.layer0.weight"],
                ),
            )
        )
        rows.append(
            (
                f"products.{t}.linear",
                relative(
                    flat(f"products.{t}.linear").view(-1),
                    g_theirs[f"products.{t}.linear.weight"].view(-1),
                ),
            )
        )
        contraction = ours.products[t].contraction
        for j, _ in enumerate(contraction.irreps_out):
            for nu in range(1, contraction.correlation + 1):
                key = (
                    "weights_max"
                    if nu == contraction.correlation
                    else f"weights.{contraction.correlation - 1 - nu}"
                )
                a = g_ours[f"products.{t}.contraction.weights.{j}_{nu}"].norm(dim=1)
                b = g_theirs[f"products.{t}.symmetric_contractions.contractions.{j}.{key}"]
                rows.append(
                    (
                        f"products.{t} contraction irrep {j} ν={nu} (norms)",
                        relative(a, b.norm(dim=1)),
                    )
                )
    for name, value in rows:
        print(f"{name:<58}{value:>20.1e}")


if __name__ == "__main__":
    main()
