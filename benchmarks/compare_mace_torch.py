"""Speed and memory: openmace vs mace-torch, same weights, same machine, same run.

    python benchmarks/compare_mace_torch.py --mace-python /path/to/venv-mace/bin/python \
        --molecule /path/to/3bpa/train_300K.xyz [--repeats 5] [--threads 2] [--cases a,b,c,d]
        [--rmd17 /path/to/rmd17]

For each model size (small 32x0e+32x1o, default 128x0e+128x1o; max_ell 3, correlation 3,
r_max 6 Å, elements H C N O Cu) a mace-torch model is built in the mace-torch venv
(``mace_torch_worker.py``), converted with openmace, and both ASE calculators evaluate
energy + forces on (a) a 27-atom 3BPA molecule, (b) 64, (c) 1000 and (d) 4000-atom Cu cells, in
float64 and float32. Each case runs in fresh processes (for peak memory), the two tools
alternating, after checking both give the same energy. Each tool is warmed up with three calls
when one call takes under a second (mace-torch's first calls are slower), one otherwise.
mace-torch runs with an address-space cap (``--mace-memory-gb``, default 16) and a timeout, so a
case it cannot do is reported, not fatal.
Prints one table: median ms per call through the calculator and through the bare model on a
prepared graph (forces, and stress for periodic cells), ratios, peak RSS; with ``--rmd17`` also
the time of one training epoch on aspirin.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.build
from ase.io import read, write

HERE = Path(__file__).parent
SIZES = {"small": "32x0e+32x1o", "default": "128x0e+128x1o"}
ELEMENTS = [1, 6, 7, 8, 29]


def cases(molecule: Path) -> dict:
    mol = read(molecule, 0)
    mol.info.clear()
    out = {"a": ("3BPA 27 atoms", mol)}
    for key, reps in (("b", (2, 2, 4)), ("c", (5, 5, 10)), ("d", (10, 10, 10))):
        atoms = ase.build.bulk("Cu", cubic=True) * reps
        atoms.rattle(0.02, seed=1)
        out[key] = (f"Cu {len(atoms)} atoms", atoms)
    return out


OPENMACE_TIMER = """
import json, resource, sys, time
import numpy as np, torch
from ase.io import read
from openmace import MACECalculator
atoms = read(sys.argv[1]); calc = MACECalculator(model=sys.argv[2], dtype=sys.argv[3])
start = time.perf_counter(); atoms.calc = calc; energy = atoms.get_potential_energy()
for k in range(2 if time.perf_counter() - start < 1.0 else 0):  # warm-up as mace-torch's
    atoms.positions[0, 0] += 1e-6 * (-1) ** k; atoms.get_forces()
times = []
for k in range(int(sys.argv[4])):
    atoms.positions[0, 0] += 1e-6 * (-1) ** k
    start = time.perf_counter(); atoms.get_forces(); times.append(time.perf_counter() - start)
# the bare model on a prepared graph: forces (and stress for periodic cells)
periodic = bool(atoms.pbc.all()); graph = calc.neighbours.graph(atoms); model = calc.models[0]
bare = []
for k in range(int(sys.argv[4])):
    start = time.perf_counter(); model(graph, compute_forces=True, compute_stress=periodic)
    bare.append(time.perf_counter() - start)
print(json.dumps({"energy": energy, "ms": 1000 * float(np.median(times)),
                  "bare_ms": 1000 * float(np.median(bare)),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_json(cmd: list[str], env: dict, timeout: float, memory_gb: float | None = None) -> dict:
    """Run a timer process (address space capped at ``memory_gb``); its last stdout line as
    JSON, or ``{"error": ...}``."""

    def limit() -> None:
        if memory_gb:
            import resource

            cap = int(memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, preexec_fn=limit
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": "out of memory" if "memory" in proc.stderr.lower() else tail[:80]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mace-python", required=True)
    parser.add_argument("--molecule", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default="a,b,c,d")
    parser.add_argument("--sizes", default="small,default")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--mace-memory-gb", type=float, default=16.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--rmd17",
        type=Path,
        help="rMD17 folder: also time one training epoch on aspirin (both tools at once, "
        "one thread each, via rmd17.py)",
    )
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    work = Path(tempfile.mkdtemp(prefix="openmace_bench_"))
    structures = cases(args.molecule)
    rows = []
    for size in args.sizes.split(","):
        cfg = {
            "r_max": 6.0,
            "max_ell": 3,
            "hidden_irreps": SIZES[size],
            "correlation": 3,
            "atomic_numbers": ELEMENTS,
            "atomic_energies": [-1.0, -2.0, -3.0, -4.0, -5.0],
            "avg_num_neighbors": 30.0,
        }
        (work / f"{size}.json").write_text(json.dumps(cfg))
        mace_dir = work / f"mace_{size}"
        run_json(
            [
                args.mace_python,
                str(HERE / "mace_torch_worker.py"),
                "build",
                str(work / f"{size}.json"),
                str(mace_dir),
            ],
            env,
            args.timeout,
        )
        ours = work / f"openmace_{size}.safetensors"
        subprocess.run(
            [sys.executable, "-m", "openmace.cli.main", "convert", str(mace_dir), "-o", str(ours)],
            check=True,
            capture_output=True,
        )
        for key in args.cases.split(","):
            label, atoms = structures[key]
            xyz = work / f"{key}.xyz"
            write(xyz, atoms)
            for dtype in args.dtypes.split(","):
                mace = run_json(
                    [
                        args.mace_python,
                        str(HERE / "mace_torch_worker.py"),
                        "time",
                        str(mace_dir),
                        str(xyz),
                        dtype,
                        str(args.repeats),
                    ],
                    env,
                    args.timeout,
                    args.mace_memory_gb,
                )
                om = run_json(
                    [
                        sys.executable,
                        "-c",
                        OPENMACE_TIMER,
                        str(xyz),
                        str(ours),
                        dtype,
                        str(args.repeats),
                    ],
                    env,
                    args.timeout,
                )
                rows.append((size, label, dtype, len(atoms), mace, om))
                print(f"done {size} {label} {dtype}", file=sys.stderr)
    load = os.getloadavg()[0]
    print(
        f"energy + forces through the ASE calculator; {args.threads} thread(s); "
        f"load average at end {load:.1f}; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(
        f"{'model':<8}{'structure':<16}{'dtype':<9}{'mace ms':>10}{'openmace ms':>13}"
        f"{'ratio':>7}{'bare mace':>11}{'bare ours':>11}{'ratio':>7}{'mace MB':>9}"
        f"{'ours MB':>9}{'dE/atom':>10}"
    )
    for size, label, dtype, n, mace, om in rows:
        if "error" in mace or "error" in om:
            m = mace.get("error", f"{mace.get('ms', 0):.0f}")
            o = om.get("error", f"{om.get('ms', 0):.0f}")
            ours_mb = f"{om['peak_mb']:.0f}" if "peak_mb" in om else "-"
            print(f"{size:<8}{label:<16}{dtype:<9}{m:>10}{o:>13}  (openmace peak {ours_mb} MB)")
            continue
        de = abs(mace["energy"] - om["energy"]) / n
        print(
            f"{size:<8}{label:<16}{dtype:<9}{mace['ms']:>10.1f}{om['ms']:>13.1f}"
            f"{mace['ms'] / om['ms']:>7.2f}{mace['bare_ms']:>11.1f}{om['bare_ms']:>11.1f}"
            f"{mace['bare_ms'] / om['bare_ms']:>7.2f}{mace['peak_mb']:>9.0f}{om['peak_mb']:>9.0f}"
            f"{de:>10.1e}"
        )
    if args.rmd17:
        training_epoch(args, env, work)


def training_epoch(args, env: dict, work: Path) -> None:
    """One epoch of rMD17 aspirin (950 train / 50 validation, batch 5, 64 channels, float32) of
    each tool, run at the same time with one thread each; s/epoch includes the validation."""
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "rmd17.py"),
            "--data",
            str(args.rmd17),
            "--molecule",
            "aspirin",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--work",
            str(work / "train"),
            "--mace-python",
            args.mace_python,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    epoch_s = {}
    for line in done.stdout.splitlines():
        for name in ("openmace", "mace-torch 0.3.16"):
            if line.startswith(name + " "):
                epoch_s[name] = float(line.split()[-1])
    ours, mace = epoch_s["openmace"], epoch_s["mace-torch 0.3.16"]
    print(
        f"training epoch, rMD17 aspirin 950 structures, batch 5, float32, 1 thread each: "
        f"mace-torch {mace:.1f} s, openmace {ours:.1f} s, ratio {mace / ours:.2f}"
    )


if __name__ == "__main__":
    main()
