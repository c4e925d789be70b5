"""Training at scale: prepare a large synthetic data set, stream a training epoch from it, and
train with 1 and 2 processes.

    python benchmarks/scale.py --work /tmp/scale --sizes 30000,300000 --train-size 30000

For each size: a synthetic data set (rattled and strained fcc Cu cells and molecules, labelled by
a small random-weight MACE: its energies and forces), written as extended-XYZ files of 10 000
structures each (made once, kept in --work); then ``openmace prepare-data`` on it with 2
workers: wall time, shards, bytes per structure, peak memory (the sum over the process tree,
sampled every 0.1 s). Then one epoch of ``openmace train`` streamed from the largest prepared
set (peak memory), and samples per second of one epoch on the --train-size set with 1 process x
2 threads and 2 processes (torchrun, gloo) x 1 thread. Prints Markdown tables.
``--only-streamed-epoch`` runs the streamed epoch alone, from a prepared set already in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

TRAIN_OPTIONS = [
    "--channels", "16", "--max-L", "0", "--max-ell", "2", "--correlation", "2",
    "--num-interactions", "2", "--radial-mlp", "16,16", "--r-max", "5.0",
    "--batch-size", "32", "--valid-batch-size", "64", "--e0s", "average",
    "--valid-fraction", "0.01", "--epochs", "1", "--quiet", "--dtype", "float32",
]  # fmt: skip
FILE_SIZE = 10_000


def synthetic_frames(first: int, count: int):
    """Structures ``first .. first + count - 1`` (the same for every run): fcc Cu cells of 32
    atoms, strained ±3 % and rattled 0.1 Å, and rattled H2O / CH3OH / C6H6 molecules."""
    import ase.build

    rng = np.random.default_rng(first)
    cu = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    molecules = [ase.build.molecule(name) for name in ("H2O", "CH3OH", "C6H6")]
    for k in range(first, first + count):
        if k % 2 == 0:
            atoms = cu.copy()
            strain = np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))
            atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
        else:
            atoms = molecules[k % 3].copy()
            atoms.center(vacuum=5.0)
        atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
        yield atoms


def make_dataset(folder: Path, size: int, processes: int = 2) -> None:
    """Write ``size`` labelled structures to ``folder``/part-XXXX.xyz (files present are kept),
    ``processes`` files at a time."""
    import multiprocessing

    folder.mkdir(parents=True, exist_ok=True)
    parts = [(folder, part, min(FILE_SIZE, size - part)) for part in range(0, size, FILE_SIZE)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.starmap(make_part, parts)


def make_part(folder: Path, part: int, count: int) -> None:
    """One file of labelled structures (``part`` .. ``part + count - 1``)."""
    import ase.io
    import torch

    from openmace.accel import for_inference
    from openmace.data.graph import collate, graph_from_atoms
    from openmace.model import MACE, MACEConfig

    path = folder / f"part-{part // FILE_SIZE:04d}.xyz"
    if path.exists():
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = MACEConfig(
        atomic_numbers=[1, 6, 8, 29],
        atomic_energies=[-13.6, -1030.0, -2040.0, -1600.0],
        r_max=5.0,
        hidden_irreps="8x0e+8x1o",
        avg_num_neighbors=20.0,
    )
    model = for_inference(MACE(config, dtype=torch.float64))
    frames = list(synthetic_frames(part, count))
    for chunk in range(0, len(frames), 200):
        batch = frames[chunk : chunk + 200]
        graph = collate([graph_from_atoms(a, 5.0) for a in batch])
        out = model(graph, compute_forces=True)
        offsets = np.cumsum([0] + [len(a) for a in batch])
        for k, atoms in enumerate(batch):
            atoms.info["REF_energy"] = float(out["energy"][k].detach())
            atoms.arrays["REF_forces"] = out["forces"][offsets[k] : offsets[k + 1]].detach().numpy()
    tmp = path.with_suffix(".tmp")
    ase.io.write(tmp, frames, format="extxyz")
    tmp.rename(path)


def tree_rss(pid: int) -> int:
    """Resident memory (bytes) of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(entry.name)] = int(line.split()[1]) * 1024
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def measured(command: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Run ``command``: wall seconds, peak memory of its process tree (bytes), stdout."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(process.pid))
            time.sleep(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = process.communicate()
    watcher.join()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return time.perf_counter() - start, peak[0], out


def openmace(*args: str) -> list[str]:
    return [sys.executable, "-m", "openmace", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sizes", default="30000,300000")
    parser.add_argument("--train-size", type=int, default=30000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-epoch", action="store_true", help="no streamed epoch")
    parser.add_argument(
        "--only-streamed-epoch",
        action="store_true",
        help="only the streamed epoch of the largest size, from its prepared set in --work",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    rows = []
    for size in [] if args.only_streamed_epoch else sizes:
        raw = args.work / f"raw-{size}"
        start = time.perf_counter()
        make_dataset(raw, size)
        made = time.perf_counter() - start
        out = args.work / f"prepared-{size}"
        if out.exists():
            shutil.rmtree(out)
        wall, peak, _ = measured(
            openmace("prepare-data", str(raw), "-o", str(out), "--workers", str(args.workers),
                     "--r-max", "5", "--quiet"), env)  # fmt: skip
        manifest = json.loads((out / "dataset.json").read_text())
        shards = sum(p.stat().st_size for p in out.glob("*.h5"))
        rows.append((size, made, wall, len(manifest["shards"]), shards / size, peak))
    load = os.getloadavg()[0]
    if rows:
        print(f"prepare-data, {args.workers} workers, r_max 5 Å (load {load:.1f})")
        print("| structures | made s | prepare s | structures/s | shards | bytes / structure "
              "| peak MB |")  # fmt: skip
        print("|---|---|---|---|---|---|---|", flush=True)
    for size, made, wall, shards, per, peak in rows:
        print(f"| {size} | {made:.0f} | {wall:.1f} | {size / wall:.0f} | {shards} | {per:.0f} "
              f"| {peak / 2**20:.0f} |")  # fmt: skip

    print()
    print(f"openmace train (float32, {' '.join(TRAIN_OPTIONS[:10])} ...; load {load:.1f})")
    print("| run | epoch s | structures/s | peak MB (whole run) |")
    print("|---|---|---|---|", flush=True)
    launchers = [
        ("1 process x 2 threads", openmace(), "2", args.train_size),
        ("2 processes x 1 thread", [sys.executable, "-m", "torch.distributed.run",
                                    "--nproc_per_node", "2", "-m", "openmace"], "1",
         args.train_size),
    ]  # fmt: skip
    if args.only_streamed_epoch:
        launchers = []
    if not args.skip_epoch:
        launchers.append(
            ("1 process x 2 threads, 1 DataLoader worker", openmace(), "2", max(sizes))
        )
    for label, launcher, threads, size in launchers:
        work = args.work / f"train-{threads}-{size}"
        shutil.rmtree(work, ignore_errors=True)
        extra = ["--num-workers", "1"] if "worker" in label else []
        _, peak, _ = measured(
            [*launcher, "train", "--train-file", str(args.work / f"prepared-{size}"),
             "--work-dir", str(work), *TRAIN_OPTIONS, "--threads", threads, *extra],
            {**env, "OMP_NUM_THREADS": threads})  # fmt: skip
        log = [json.loads(line) for line in (work / "model.log.jsonl").read_text().splitlines()]
        seconds = log[-1]["time_s"]
        print(f"| 1 epoch of {size} structures, {label} | {seconds:.0f} | {size / seconds:.0f} "
              f"| {peak / 2**20:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
