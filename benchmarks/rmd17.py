"""Accuracy benchmark on rMD17: openmace vs mace-torch with identical settings.

    python benchmarks/rmd17.py --data /path/to/rmd17 --molecule ethanol --epochs 60 \
        [--mace-python /path/to/venv-mace/bin/python] [--threads 1]

Trains on ``<mol>_train.xyz`` (950 train / 50 validation: one random split written to files that
both codes read), the two codes concurrently; tests on
``<mol>_test.xyz`` (1000 structures). Model: 64x0e+64x1o, max_ell 3, correlation 3, r_max 5 Å,
2 layers, residual first layer, per-atom energy shift = training mean (mace-torch's
``--model ScaleShiftMACE``; its ``--model MACE`` sets the shift to 0), batch 5, lr 0.01 AMSGrad,
EMA 0.99, loss weights 1 (energy per atom) / 100 (forces), float32, seed 1 (``--seed``), E0s from
``isolated_atoms.xyz``. With ``--mace-python`` (a venv with mace-torch 0.3.16) the same run is
made with ``mace_run_train``; ``--skip-openmace`` / ``--mace-log`` reuse finished runs. Prints
one table: test energy/force MAE, time per epoch, and the paper's numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

PAPER = {
    "aspirin": (2.2, 6.6),
    "ethanol": (0.4, 2.1),
    "benzene": (0.4, 0.3),
    "malonaldehyde": (0.8, 4.1),
    "naphthalene": (0.5, 1.6),
    "salicylic": (0.9, 3.1),
    "toluene": (0.5, 1.5),
}  # Table 1, MACE, MAE: E meV (whole molecule), F meV/Å


def isolated_e0s(data: Path) -> dict[int, float]:
    from ase.io import read

    return {
        int(a.numbers[0]): float(a.info["REF_energy"])
        for a in read(data / "isolated_atoms.xyz", ":")
    }


def elements_of(path: Path) -> set[int]:
    from ase.io import read

    return {int(z) for a in read(path, ":50") for z in a.numbers}


def write_split(args) -> tuple[Path, Path]:
    """One random 950/50 split (seed 1) written to files that both codes read, so they train
    and validate on exactly the same structures."""
    import numpy as np
    from ase.io import read, write

    folder = args.work / f"split_{args.molecule}"
    train, valid = folder / "train.xyz", folder / "valid.xyz"
    if train.exists() and valid.exists():
        return train, valid
    folder.mkdir(parents=True, exist_ok=True)
    frames = read(args.data / f"{args.molecule}_train.xyz", ":")
    order = np.random.default_rng(1).permutation(len(frames))
    n_valid = round(0.05 * len(frames))
    write(valid, [frames[i] for i in order[:n_valid]], format="extxyz")
    write(train, [frames[i] for i in order[n_valid:]], format="extxyz")
    return train, valid


def openmace_command(args, e0s, work: Path, train: Path, valid: Path) -> list[str] | None:
    """The openmace training command, or None when a finished run is to be reused."""
    cmd = [
        sys.executable,
        "-m",
        "openmace.cli.main",
        "train",
        "--train-file",
        str(train),
        "--valid-file",
        str(valid),
        "--test-file",
        str(args.data / f"{args.molecule}_test.xyz"),
        "--e0s",
        json.dumps(e0s),
        "--channels",
        "64",
        "--max-L",
        "1",
        "--max-ell",
        "3",
        "--correlation",
        "3",
        "--r-max",
        "5.0",
        "--num-interactions",
        "2",
        "--batch-size",
        "5",
        "--valid-batch-size",
        "10",
        "--lr",
        "0.01",
        "--ema-decay",
        "0.99",
        "--energy-weight",
        "1",
        "--forces-weight",
        "100",
        "--epochs",
        str(args.epochs),
        "--dtype",
        "float32",
        "--seed",
        str(args.seed),
        "--work-dir",
        str(work),
        "--name",
        args.molecule,
        "--quiet",
        "--threads",
        str(args.threads),
    ]
    log = work / f"{args.molecule}.log.jsonl"
    finished = (
        (work / f"{args.molecule}.errors.json").exists()
        and log.exists()
        and (json.loads(log.read_text().splitlines()[-1])["epoch"] >= args.epochs)
    )
    if finished:  # a finished run is only read
        return None
    if (work / "checkpoints" / f"{args.molecule}.ckpt").exists():
        cmd.append("--resume")
    return cmd


def openmace_results(args, work: Path) -> dict:
    errors = json.loads((work / f"{args.molecule}.errors.json").read_text())["test"][-1]
    history = [
        json.loads(x) for x in (work / f"{args.molecule}.log.jsonl").read_text().split("\n") if x
    ]
    return {
        "E": errors["energy_mae"],
        "F": errors["forces_mae"],
        "epoch_s": history[-1]["time_s"] / history[-1]["epoch"],
        "epochs": len(history),
    }


def start_mace(args, e0s, work: Path, train: Path, valid: Path) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    present = elements_of(train)
    e0_text = "{" + ", ".join(f"{z}: {e}" for z, e in e0s.items() if z in present) + "}"
    cmd = [
        args.mace_python,
        "-m",
        "mace.cli.run_train",
        "--name",
        f"mace_{args.molecule}",
        "--seed",
        str(args.seed),
        "--train_file",
        str(train.resolve()),
        "--valid_file",
        str(valid.resolve()),
        "--test_file",
        str(args.data / f"{args.molecule}_test.xyz"),
        "--E0s",
        e0_text,
        "--energy_key",
        "REF_energy",
        "--forces_key",
        "REF_forces",
        "--model",
        "ScaleShiftMACE",
        "--num_channels",
        "64",
        "--max_L",
        "1",
        "--max_ell",
        "3",
        "--correlation",
        "3",
        "--r_max",
        "5.0",
        "--num_interactions",
        "2",
        "--batch_size",
        "5",
        "--valid_batch_size",
        "10",
        "--lr",
        "0.01",
        "--amsgrad",
        "--ema",
        "--ema_decay",
        "0.99",
        "--energy_weight",
        "1.0",
        "--forces_weight",
        "100.0",
        "--max_num_epochs",
        str(args.epochs),
        "--default_dtype",
        "float32",
        "--device",
        "cpu",
        "--eval_interval",
        "1",
        "--error_table",
        "PerAtomMAE",
    ]
    env = {
        "OMP_NUM_THREADS": str(args.threads),
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "PATH": "/usr/bin:/bin",
    }
    with open(work / "mace.log", "w") as fh:
        return subprocess.Popen(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT)


def parse_mace_log(log: Path, atoms: int) -> dict:
    text = log.read_text()
    stamps = [
        datetime.strptime(m, "%Y-%m-%d %H:%M:%S.%f")
        for m in re.findall(r"^(\S+ \S+) INFO: Epoch \d+:", text, re.M)
    ]
    start = re.search(r"^(\S+ \S+) INFO: Initial:", text, re.M)
    first = datetime.strptime(start.group(1), "%Y-%m-%d %H:%M:%S.%f") if start else stamps[0]
    epoch_s = (stamps[-1] - first).total_seconds() / len(stamps)
    test = text.split("Error-table on TEST")[-1]
    row = re.search(r"^\|\s*[\w-]+\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|", test, re.M)
    return {
        "E": float(row.group(1)),
        "F": float(row.group(2)),
        "epoch_s": epoch_s,
        "epochs": len(stamps),
    }


def precise_mace_errors(args, log: Path) -> dict | None:
    """mace-torch prints one decimal; convert its final model (openmace must be importable in
    the mace-torch venv: ``pip install --no-deps -e .``) and evaluate it exactly in float64."""
    model = log.parent / f"mace_{args.molecule}.model"
    if not (args.mace_python and model.exists()):
        return None
    converted = log.parent / "converted.safetensors"
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [args.mace_python, "-m", "openmace.cli.main", "convert", str(model), "-o", str(converted)],
        env=env,
        capture_output=True,
    )
    if done.returncode != 0:
        return None
    out = log.parent / "test_predicted.xyz"
    text = subprocess.run(
        [
            sys.executable,
            "-m",
            "openmace.cli.main",
            "eval",
            "--model",
            str(converted),
            "--configs",
            str(args.data / f"{args.molecule}_test.xyz"),
            "--output",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = [line.split() for line in text.splitlines() if line.startswith("eval")][0]
    return {"E": float(row[3]), "F": float(row[5])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with rMD17 files")
    parser.add_argument("--molecule", default="ethanol")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="seed of both trainings")
    parser.add_argument("--work", type=Path, default=Path("bench_runs"))
    parser.add_argument("--mace-python", help="python of a venv with mace-torch 0.3.16")
    parser.add_argument("--mace-log", type=Path, help="reuse a finished mace-torch log")
    parser.add_argument("--skip-openmace", action="store_true")
    args = parser.parse_args()
    e0s = isolated_e0s(args.data)
    from ase.io import read

    atoms = len(read(args.data / f"{args.molecule}_test.xyz", 0))
    train, valid = write_split(args)
    ours_work, mace_work = (
        args.work / f"openmace_{args.molecule}",
        args.work / f"mace_{args.molecule}",
    )
    # the two trainings run at the same time (one core each with --threads 1): same load
    jobs = []
    cmd = None if args.skip_openmace else openmace_command(args, e0s, ours_work, train, valid)
    if cmd:
        jobs.append(subprocess.Popen(cmd))
    log = args.mace_log
    if log is None and args.mace_python:
        jobs.append(start_mace(args, e0s, mace_work, train, valid))
        log = mace_work / "mace.log"
    for job in jobs:
        if job.wait() != 0:
            raise SystemExit(f"training failed: {job.args}")
    rows = {}
    if not args.skip_openmace:
        rows["openmace"] = openmace_results(args, ours_work)
    if log is not None:
        rows["mace-torch 0.3.16"] = parse_mace_log(log, atoms)
        precise = precise_mace_errors(args, log)
        if precise:
            rows["mace-torch 0.3.16"].update(precise)
    e_paper, f_paper = PAPER.get(args.molecule, (float("nan"), float("nan")))
    print(f"rMD17 {args.molecule}: test MAE, {args.epochs} epochs, {args.threads} thread(s)")
    print(
        f"{'code':<20}{'epochs':>7}{'E meV/atom':>12}{'E meV/mol':>11}{'F meV/Å':>10}{'s/epoch':>9}"
    )
    for name, r in rows.items():
        print(
            f"{name:<20}{r['epochs']:>7}{r['E']:>12.2f}{r['E'] * atoms:>11.2f}{r['F']:>10.2f}"
            f"{r['epoch_s']:>9.1f}"
        )
    print(
        f"{'paper (Table 1)':<20}{'-':>7}{e_paper / atoms:>12.2f}{e_paper:>11.2f}"
        f"{f_paper:>10.2f}{'-':>9}"
    )
    if len(rows) == 2:
        ratio = rows["openmace"]["F"] / rows["mace-torch 0.3.16"]["F"]
        print(f"force MAE ratio openmace / mace-torch: {ratio:.3f} (bar: <= 1.05)")


if __name__ == "__main__":
    main()
