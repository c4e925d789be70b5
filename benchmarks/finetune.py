"""Fine-tuning benchmark: from scratch vs naive vs multi-head replay, openmace and mace-torch.

    python benchmarks/finetune.py --data /path/to/shared/data --mace-python venv-mace/bin/python \\
        --work /tmp/ftbench [--sizes 25,100] [--pretrain-epochs 25] [--epochs 40] [--threads 1]

1. **Data** (written once to ``WORK/data``, every key renamed to ``REF_energy``/``REF_forces``):
   the foundation's training set: 100 Cu and 100 Si cells of Zuo et al. 2020 (PBE, periodic,
   107 and 63 atoms) and 60 structures each of rMD17 ethanol, malonaldehyde, salicylic acid,
   aspirin and toluene (PBE/def2-SVP); its test set: the Zuo test sets (31 Cu, 25 Si) and 50 of
   each molecule's rMD17 test set. The new system: acetylacetone (BOTNet, PBE+D3/def2-SVP, a
   molecule the foundation never saw, at another level of theory): ``--sizes`` training
   structures drawn from ``train_300K.xyz`` (seed 1), tested on 200 structures of
   ``test_MD_300K.xyz``.
2. **Foundation**: trained once by mace-torch 0.3.16 (``mace_run_train``: 64x0e, max_ell 3,
   correlation 3, r_max 5 Å, 2 layers, E0s average, ``--pretrain-epochs``), saved as a
   mace-torch ``.model`` file, as every published foundation is. openmace reads that same file
   with its safe reader, so both codes fine-tune the same weights.
3. **Runs**, per size: (a) openmace from scratch (the foundation's architecture, lr 0.01, E0s
   average; squared loss, and Huber with threshold 0.01 as the fine-tunes use); (b) naive
   fine-tuning, openmace and mace-torch (``--E0s estimated``, lr 1e-3,
   all weights); (c) multi-head replay fine-tuning, openmace and mace-torch (replay: the same
   ``--replay`` random structures of the foundation's training set for both, written once to
   ``replay_N.xyz``; ``weight_pt_head`` 1; mace-torch with ``--force_mh_ft_lr True`` so that it
   uses the same lr and EMA). Every run: ``--epochs``,
   batch 5, EMA 0.99, loss weights 1/100, float32, seed 1, 10 % validation; an openmace run and
   a mace-torch run go side by side, ``--threads`` each.
4. **Table**: test energy MAE (meV/atom) and force MAE (meV/Å) on the new system, and the
   force MAE on the foundation's test set (the foundation's head for multi-head models:
   forgetting); every model evaluated by openmace's evaluator (mace-torch files through the
   safe reader). Bars (issue 16): (b) and (c) beat (a); (c) keeps the foundation-test force MAE
   within 10 % of the foundation's own; mace-torch within 5 % of openmace or worse.

``--stage`` runs one stage again (``data``, ``foundation``, ``runs``, ``table``); finished runs
are skipped (their model file exists).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MOLECULES = ("ethanol", "malonaldehyde", "salicylic", "aspirin", "toluene")
ARCH = {"channels": 64, "max_L": 0, "max_ell": 3, "correlation": 3, "r_max": 5.0}
COMMON = {"batch_size": 5, "valid_batch_size": 20, "ema_decay": 0.99, "seed": 1}


def _frames(path: Path, energy: str, forces: str, count: int | None, seed: int, index=":"):
    """Structures of ``path`` with labels renamed to REF_energy/REF_forces (a random
    ``count`` of them, by ``seed``), as plain Atoms."""
    import ase
    from ase.io import read

    frames = read(path, index)
    if count is not None and count < len(frames):
        pick = np.random.default_rng(seed).choice(len(frames), count, replace=False)
        frames = [frames[k] for k in sorted(pick)]
    out = []
    for atoms in frames:
        calc = atoms.calc
        values = dict(atoms.info, **(calc.results if calc is not None else {}))
        values.update(atoms.arrays)
        clean = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        clean.info["REF_energy"] = float(values[energy])
        clean.arrays["REF_forces"] = np.asarray(values[forces], dtype=float)
        out.append(clean)
    return out


def prepare(data: Path, folder: Path, sizes: list[int]) -> None:
    from ase.io import write

    folder.mkdir(parents=True, exist_ok=True)
    periodic = data / "periodic"
    pretrain, ptest = [], []
    for element in ("Cu", "Si"):
        pretrain += _frames(periodic / f"zuo2020_{element}_train.xyz", "energy", "force", 100, 1)
        ptest += _frames(periodic / f"zuo2020_{element}_test.xyz", "energy", "force", None, 1)
    for name in MOLECULES:
        rmd = data / "rmd17"
        pretrain += _frames(rmd / f"{name}_train.xyz", "REF_energy", "REF_forces", 60, 1)
        ptest += _frames(rmd / f"{name}_test.xyz", "REF_energy", "REF_forces", 50, 1)
    write(folder / "pretrain.xyz", pretrain)
    write(folder / "foundation_test.xyz", ptest)
    acac = data / "acac"
    pool = _frames(acac / "train_300K.xyz", "energy", "forces", None, 1)
    order = np.random.default_rng(1).permutation(len(pool))
    for n in sizes:
        write(folder / f"target_{n}.xyz", [pool[k] for k in order[:n]])
    test = _frames(acac / "test_MD_300K.xyz", "energy", "forces", 200, 1)
    write(folder / "target_test.xyz", test)


def replay_file(folder: Path, count: int) -> Path:
    """``count`` random structures (seed 1) of the foundation's training set: the replay data
    both codes get (mace-torch 0.3.16 ignores ``--num_samples_pt`` for a ``--pt_train_file``
    and replays all of it, so the subsample is made here, once, for both)."""
    from ase.io import read, write

    path = folder / f"replay_{count}.xyz"
    if not path.exists():
        frames = read(folder / "pretrain.xyz", ":")
        pick = np.random.default_rng(1).choice(len(frames), count, replace=False)
        write(path, [frames[k] for k in sorted(pick)])
    return path


def mace_command(args, name: str, train: Path, extra: dict) -> list[str]:
    flags = {
        "name": name,
        "train_file": str(train),
        "valid_fraction": "0.1",
        "energy_key": "REF_energy",
        "forces_key": "REF_forces",
        "batch_size": str(COMMON["batch_size"]),
        "valid_batch_size": str(COMMON["valid_batch_size"]),
        "ema_decay": str(COMMON["ema_decay"]),
        "seed": str(COMMON["seed"]),
        "energy_weight": "1.0",
        "forces_weight": "100.0",
        "default_dtype": "float32",
        "device": "cpu",
        **extra,
    }
    cmd = [args.mace_python, "-m", "mace.cli.run_train", "--ema", "--amsgrad"]
    for key, value in flags.items():
        cmd += [f"--{key}", value]
    return cmd


def openmace_command(args, name: str, work: Path, train: Path, extra: dict) -> list[str]:
    flags = {
        "name": name,
        "work_dir": str(work),
        "train_file": str(train),
        "valid_fraction": "0.1",
        "energy_key": "REF_energy",
        "forces_key": "REF_forces",
        "dtype": "float32",
        "quiet": "true",
        **{k: str(v) for k, v in COMMON.items()},
        **extra,
    }
    cmd = [sys.executable, "-m", "openmace.cli.main", "train"]
    for key, value in flags.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    return cmd


def runs(args, folder: Path, size: int) -> list[tuple[str, str, list[str], Path, Path]]:
    """(label, tool, command, size folder, model file) of every run of one size (each tool
    runs in its own subfolder of the size folder)."""
    train = folder / "data" / f"target_{size}.xyz"
    foundation = folder / "foundation" / "foundation.model"
    replay = replay_file(folder / "data", args.replay)
    epochs = str(args.epochs)
    out = []
    work = folder / f"n{size}"
    arch = {k: str(v) for k, v in ARCH.items()}
    tuned = {"foundation_model": str(foundation), "e0s": "estimated", "lr": "0.001"}
    multi = {
        "multihead_finetuning": "true",
        "pt_train_file": str(replay),
        "num_samples_pt": str(args.replay),
        "subselect_pt": "random",
        "weight_pt_head": "1.0",
    }
    ours = {
        "(a) scratch": {**arch, "e0s": "average", "lr": "0.01"},
        "(a) scratch-huber": {**arch, "e0s": "average", "lr": "0.01", "loss": "huber"},
        "(b) naive": tuned,
        "(c) multi-head": {**tuned, **multi},
    }
    for label, extra in ours.items():
        name = label.split()[1].replace("-", "")
        cmd = openmace_command(args, name, work / "openmace", train, {**extra, "epochs": epochs})
        out.append((label, "openmace", cmd, work, work / "openmace" / f"{name}.safetensors"))
    mace_tuned = {
        "foundation_model": str(foundation),
        "foundation_model_elements": "True",  # keep Cu and Si, as openmace does by default
        "E0s": "estimated",
        "lr": "0.001",
        "max_num_epochs": epochs,
    }
    theirs = {
        "(b) naive": {**mace_tuned, "multiheads_finetuning": "False"},
        "(c) multi-head": {
            **mace_tuned,
            "multiheads_finetuning": "True",
            "pt_train_file": str(replay),
            "num_samples_pt": str(args.replay),
            "subselect_pt": "random",
            "weight_pt_head": "1.0",
            "force_mh_ft_lr": "True",
        },
    }
    for label, extra in theirs.items():
        name = "mace_" + label.split()[1].replace("-", "")
        cmd = mace_command(args, name, train, extra)
        out.append((label, "mace-torch", cmd, work, work / "mace" / f"{name}.model"))
    return out


def run_pairs(args, jobs: list[tuple[str, str, list[str], Path, Path]]) -> None:
    """Run the jobs two at a time (an openmace and a mace-torch job side by side)."""
    env = dict(
        os.environ, OMP_NUM_THREADS=str(args.threads), TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"
    )
    todo = [j for j in jobs if not j[4].exists()]
    ours = [j for j in todo if j[1] == "openmace"]
    theirs = [j for j in todo if j[1] == "mace-torch"]
    while ours or theirs:
        batch = [q.pop(0) for q in (ours, theirs) if q]
        procs = []
        for label, tool, cmd, work, _ in batch:
            folder = work / ("openmace" if tool == "openmace" else "mace")
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / f"{label.split()[1]}.log", "w")
            print(f"  start {tool} {label} in {folder}", file=sys.stderr)
            procs.append((subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=log), log))
        for proc, log in procs:
            proc.wait()
            log.close()


def pretrain(args, folder: Path) -> Path:
    target = folder / "foundation" / "foundation.model"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    extra = {
        "model": "ScaleShiftMACE",
        "num_channels": str(ARCH["channels"]),
        "max_L": str(ARCH["max_L"]),
        "max_ell": str(ARCH["max_ell"]),
        "correlation": str(ARCH["correlation"]),
        "r_max": str(ARCH["r_max"]),
        "num_interactions": "2",
        "E0s": "average",
        "lr": "0.01",
        "max_num_epochs": str(args.pretrain_epochs),
    }
    cmd = mace_command(args, "foundation", folder / "data" / "pretrain.xyz", extra)
    env = dict(os.environ, OMP_NUM_THREADS=str(2 * args.threads))
    start = time.perf_counter()
    with open(target.parent / "pretrain.log", "w") as log:
        subprocess.run(cmd, cwd=target.parent, env=env, stdout=log, stderr=log, check=True)
    print(f"foundation trained in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return target


def errors(model_path: Path, test: Path, head: str | None) -> dict[str, float]:
    """Energy MAE (meV/atom) and force MAE (meV/Å) of a model (one head) on a test file."""
    from openmace import load_model
    from openmace.accel import for_inference
    from openmace.data.configurations import Keys, read_configurations
    from openmace.evaluation.predict import predict_configurations
    from openmace.model.heads import single_head

    model = load_model(model_path)
    if len(model.config.heads) > 1:
        model = single_head(model, head)
    configs = read_configurations(test, Keys(energy="REF_energy", forces="REF_forces"))
    e_err, f_err = [], []
    for config, out in zip(configs, predict_configurations(for_inference(model), configs, 20)):
        e_err.append(abs(out["energy"] - config.energy) / len(config))
        f_err.append(np.abs(out["forces"] - config.forces).ravel())
    return {"e": 1000 * float(np.mean(e_err)), "f": 1000 * float(np.mean(np.concatenate(f_err)))}


def covers(model_path: Path, test: Path) -> bool:
    """Whether the model knows every element of the test file."""
    from ase.io import read

    from openmace import load_model

    known = set(load_model(model_path).config.atomic_numbers)
    return all(set(a.numbers.tolist()) <= known for a in read(test, ":"))


def user_head(model_path: Path) -> str | None:
    from openmace import load_model

    heads = load_model(model_path).config.heads
    return next((h for h in heads if h != "pt_head"), None) if len(heads) > 1 else None


def table(args, folder: Path, sizes: list[int]) -> list[dict]:
    data = folder / "data"
    foundation = folder / "foundation" / "foundation.model"
    base = errors(foundation, data / "foundation_test.xyz", None)
    rows = [{"size": "-", "run": "foundation", "tool": "mace-torch", "new": None, "old": base}]
    for size in sizes:
        for label, tool, _, _, path in runs(args, folder, size):
            if not path.exists():
                rows.append({"size": size, "run": label, "tool": tool, "missing": True})
                continue
            head = user_head(path)
            new = errors(path, data / "target_test.xyz", head)
            old = None  # a model without Cu and Si (from scratch) has no foundation-test error
            if covers(path, data / "foundation_test.xyz"):
                old = errors(path, data / "foundation_test.xyz", "pt_head" if head else None)
            rows.append({"size": size, "run": label, "tool": tool, "new": new, "old": old})
    print(
        f"fine-tuning benchmark, {time.strftime('%Y-%m-%d %H:%M')}; epochs {args.epochs}, "
        f"foundation {args.pretrain_epochs} epochs; replay {args.replay} structures"
    )
    print(
        "| train size | run | tool | acac E MAE meV/atom | acac F MAE meV/Å "
        "| foundation-test F MAE meV/Å | vs foundation |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if row.get("missing"):
            print(f"| {row['size']} | {row['run']} | {row['tool']} | (not run) | | | |")
            continue
        new = row["new"]
        cells = [str(row["size"]), row["run"], row["tool"]]
        cells += [f"{new['e']:.2f}", f"{new['f']:.1f}"] if new else ["-", "-"]
        if row["old"] is None:
            cells += ["-", "-"]
        else:
            old = row["old"]["f"]
            cells += [f"{old:.1f}", f"{old / base['f']:.2f}×"]
        print("| " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--mace-python", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sizes", default="25,100")
    parser.add_argument("--pretrain-epochs", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--replay", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stage", choices=["data", "foundation", "runs", "table"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    folder = args.work
    if args.stage in (None, "data") and not (folder / "data" / "target_test.xyz").exists():
        prepare(args.data, folder / "data", sizes)
    if args.stage in (None, "foundation"):
        pretrain(args, folder)
    if args.stage in (None, "runs"):
        for size in sizes:
            run_pairs(args, runs(args, folder, size))
    if args.stage in (None, "table"):
        rows = table(args, folder, sizes)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
