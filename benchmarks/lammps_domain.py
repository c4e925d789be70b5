"""One LAMMPS rank's work in one Python process: a domain of half the cell vs the whole cell.

    python benchmarks/lammps_domain.py --model MODEL [--atoms 32000] [--dtype float32]
        [--repeats 2] [--skin 2.0] [--profile]

What ``pair_style openmace`` on 2 ranks gives each rank, without LAMMPS and MPI, to separate
the model's work per rank from what running two processes side by side costs:

* whole cell: the model file's ``periodic`` method on the rattled fcc Cu cell of ``--atoms``
  (edges to periodic images as shifts; what 1 rank runs);
* domain: ``exchange`` on the atoms with x < L/2 (local) and every periodic image within
  r_max + skin of that slab (ghosts), with the plugin's edge layout (pairs of local atoms both
  ways, then ghost -> local one way). The ghosts' owners are set to local atom 0: the numbers
  are not the model's energy, but every operation has the size it has in LAMMPS (the owners
  only choose which rows the gather copies).

Both with 1 PyTorch thread, alternating, ``--repeats`` times; ``--profile`` prints PyTorch's
operator table of one call of each. Run two copies at once to see how much two processes slow
each other on this machine (compare with ``lammps.py``'s 2 x 1 column).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase.neighborlist import neighbor_list
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lammps import fcc, load_any  # noqa: E402  (this folder's benchmark helpers)

from openmace.io.lammps import export_lammps  # noqa: E402


def periodic_inputs(atoms, r_max: float) -> tuple:
    """The whole cell as the plugin's compute_periodic sends it (each pair once, reversed)."""
    i, j, shift = neighbor_list("ijS", atoms, r_max)
    positive = (shift[:, 0] > 0) | (
        (shift[:, 0] == 0) & ((shift[:, 1] > 0) | ((shift[:, 1] == 0) & (shift[:, 2] > 0)))
    )
    first = (i < j) | ((i == j) & positive)
    ri, rj, rs = i[first], j[first], shift[first]
    edge_index = np.stack([np.concatenate([rj, ri]), np.concatenate([ri, rj])])
    shifts = np.concatenate([-rs, rs]).astype(np.float64)
    return (
        torch.tensor(atoms.positions),
        torch.tensor(atoms.numbers),
        torch.tensor(atoms.cell.array),
        torch.tensor(edge_index),
        torch.tensor(shifts),
    )


def domain_inputs(atoms, r_max: float, skin: float) -> tuple:
    """Half the cell (x < L/2) with its ghosts, as the plugin's compute_exchange sends it."""
    lengths = atoms.cell.array.diagonal()
    n = len(atoms)
    images = np.concatenate(
        [
            atoms.positions + np.array([a, b, c]) * lengths
            for a in (-1, 0, 1)
            for b in (-1, 0, 1)
            for c in (-1, 0, 1)
        ]
    )
    home = 13  # the (0, 0, 0) image
    local = np.zeros(len(images), bool)
    local[home * n : (home + 1) * n] = atoms.positions[:, 0] < lengths[0] / 2
    cut = r_max + skin
    low, high = -cut, np.array([lengths[0] / 2, lengths[1], lengths[2]]) + cut
    ghost = np.all((images >= low) & (images < high), axis=1) & ~local
    positions = np.concatenate([images[local], images[ghost]])
    num_local = int(local.sum())
    a, b = cKDTree(positions).query_pairs(r_max, output_type="ndarray").T
    a, b = np.minimum(a, b), np.maximum(a, b)
    both = b < num_local  # two local atoms: both ways
    one = (a < num_local) & (b >= num_local)  # ghost b -> local a
    senders = np.concatenate([b[both], a[both], b[one]])
    receivers = np.concatenate([a[both], b[both], a[one]])
    owners = np.concatenate([np.arange(num_local), np.zeros(len(positions) - num_local, int)])
    return (
        torch.tensor(positions),
        torch.tensor(np.full(len(positions), atoms.numbers[0])),
        torch.tensor(np.stack([senders, receivers])),
        num_local,
        torch.tensor(owners),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--atoms", type=int, default=32000)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skin", type=float, default=2.0, help="LAMMPS' neighbour skin, Å")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--folder", type=Path, default=Path("."), help="for the model file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_any(args.model, getattr(torch, args.dtype))
    r_max = float(model.config.r_max)
    path = export_lammps(model, args.folder / f"lammps_domain_{args.dtype}.pt")
    scripted = torch.jit.load(str(path))
    atoms = fcc("Cu", args.atoms)
    whole, domain = periodic_inputs(atoms, r_max), domain_inputs(atoms, r_max, args.skin)
    print(
        f"{args.model.name} {args.dtype}: cell {len(atoms)} atoms, {whole[3].shape[1]} edges; "
        f"domain {domain[3]} local + {len(domain[0]) - domain[3]} ghosts, "
        f"{domain[2].shape[1]} edges; 1 thread",
        flush=True,
    )
    calls = {
        "whole cell": lambda: scripted.periodic(*whole),
        "domain": lambda: scripted.exchange(*domain),
    }
    for _ in range(args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            print(f"{name}: {time.perf_counter() - start:.2f} s", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, call in calls.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                call()
            print(
                f"== {name}\n"
                + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
            )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
