"""Foundation-model look-alikes at published width: openmace vs mace-torch, and the allocator.

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 venv-mace/bin/python \\
        tests/fixtures/make_foundation_fixtures.py --full /tmp/fullmodels \\
        --families mp0a mp0b3 off23_small off23_large mh1
    python benchmarks/compare_foundations.py --models /tmp/fullmodels \\
        --mace-python venv-mace/bin/python [--families mp0a,mh1] [--sizes 64,1000]
        [--dtypes float64,float32] [--allocators glibc,jemalloc,mallopt] [--repeats 3]
        [--threads 2] [--json out.json]

Each family folder holds a random-weight mace-torch ``model.model`` at the published width
(written by ``make_foundation_fixtures.py --full``). Both tools read that same file: mace-torch
with its ``MACECalculator`` in its own venv, openmace with ``MACECalculator(model=<.model>)``
(the safe reader, converting at load). Structures: for materials families (MP-0a, MP-0b3/MPA-0,
MH-1) rattled fcc Cu, 64 atoms (2x2x4 cubic cells) and 1000 atoms (5x5x10); for OFF families a
periodic liquid-like box of small organic molecules from ``ase.build.molecule`` (H C N O S Cl)
at 0.8 g/cm^3 with exactly 64 or 1000 atoms. All cells are periodic, so both calculators
compute energy, forces and stress at every call.

A case runs in fresh processes, one per (tool, allocator), in the order mace-torch glibc,
openmace glibc, mace-torch jemalloc, openmace jemalloc, openmace mallopt (``keep_freed_memory``
of ``openmace.allocator``, what ``openmace md/eval/train`` do), so the tools alternate.
Allocators: ``glibc`` = the default malloc; ``jemalloc`` = ``LD_PRELOAD`` of libjemalloc.so.2
with its default configuration; ``mallopt`` = openmace only. A process loads the calculator
(``load_s``), makes one call and, when that took under a second, two more warm-up calls, then
``--repeats`` timed calls (a position nudged by 1e-6 Å before each so that nothing is cached);
it reports the median ms per call, the first call's energy and forces, and its peak RSS
(``ru_maxrss``, including the load). mace-torch runs under an address-space cap
(``--mace-memory-gb``) and a timeout, so a case it cannot do is reported, not fatal.

Prints one table: ms per call for each tool and allocator, the ratio mace-torch/openmace at the
default allocator and at each tool's best, |ΔE|/atom and max |ΔF| between the tools (first
call, glibc processes), peak RSS; the load average before and after each case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ase
import ase.build
import numpy as np
from ase.io import write
from compare_mace_torch import run_json  # this folder is on sys.path when run as a script

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
#: family -> (label, head, kind of structure, number of elements)
FAMILIES = {
    "mp0a": ("MP-0a medium", None, "cu", 89),
    "mp0b3": ("MP-0b3/MPA-0 medium", None, "cu", 89),
    "off23_small": ("OFF23 small", None, "organic", 10),
    "off23_large": ("OFF23 large", None, "organic", 10),
    "mh1": ("MH-1", "omat_pbe", "cu", 89),
}
#: molecules of the organic boxes (ase.build.molecule names)
ORGANIC = ["CH3CH2OH", "H2O", "C6H6", "CH3CN", "CH3SH", "CH3COOH", "CH3Cl", "NH3", "CH4"]


def copper(n_atoms: int) -> ase.Atoms:
    """Rattled fcc Cu (a = 3.61 Å) of 64 (2x2x4 cubic cells) or 1000 (5x5x10) atoms."""
    reps = {64: (2, 2, 4), 1000: (5, 5, 10)}[n_atoms]
    atoms = ase.build.bulk("Cu", cubic=True) * reps
    atoms.rattle(0.02, seed=1)
    return atoms


def organic_box(n_atoms: int, density: float = 0.8, seed: int = 0) -> ase.Atoms:
    """A periodic cubic box of randomly placed and oriented small molecules with exactly
    ``n_atoms`` atoms at ``density`` g/cm^3; atoms of different molecules >= 1.7 Å apart."""
    rng = np.random.default_rng(seed)
    mols: list[ase.Atoms] = []
    left = n_atoms
    while left > 12:
        mol = ase.build.molecule(ORGANIC[rng.integers(len(ORGANIC))])
        mols.append(mol)
        left -= len(mol)
    while left:  # top up exactly with water (3), NH3 (4) or CH4 (5)
        name = {1: None, 2: None, 4: "NH3", 5: "CH4"}.get(left, "H2O")
        if name is None:  # 1 or 2 left: swap one water for NH3/CH4
            i = next(i for i, m in enumerate(mols) if len(m) == 3)
            mols[i] = ase.build.molecule("NH3" if left == 1 else "CH4")
            left = 0
            break
        mols.append(ase.build.molecule(name))
        left -= len(mols[-1])
    mass = sum(m.get_masses().sum() for m in mols)  # amu
    side = (mass * 1.66054 / density) ** (1 / 3)  # Å
    cell = np.eye(3) * side
    placed = np.zeros((0, 3))
    box = ase.Atoms(cell=cell, pbc=True)
    order = sorted(range(len(mols)), key=lambda i: -len(mols[i]))  # large molecules first
    for i in order:
        mol = mols[i]
        for _ in range(20000):
            trial = mol.copy()
            trial.rotate(rng.normal(size=3), rng.uniform(0, 360), center="COM")
            trial.translate(rng.random(3) @ cell - trial.get_center_of_mass())
            if len(placed):
                d = trial.positions[:, None, :] - placed[None, :, :]
                d -= np.round(d / side) * side
                if np.sqrt((d**2).sum(-1)).min() < 1.7:
                    continue
            break
        else:
            raise RuntimeError("could not pack the organic box; lower the density")
        box += trial
        placed = box.positions
    box.wrap()
    assert len(box) == n_atoms
    return box


COMMON = """
import json, resource, sys, time
import numpy as np
from ase.io import read
xyz, model, dtype, repeats, head, threads = sys.argv[1:7]
import torch
torch.set_num_threads(int(threads))
"""

MACE_TIMER = (
    COMMON
    + """
from mace.calculators import MACECalculator
start = time.perf_counter()
calc = MACECalculator(model_paths=model, device="cpu", default_dtype=dtype,
                      **({"head": head} if head != "-" else {}))
"""
)

OPENMACE_TIMER = (
    COMMON
    + """
if sys.argv[7] == "mallopt":
    from openmace.allocator import keep_freed_memory
    assert keep_freed_memory()
from openmace import MACECalculator
start = time.perf_counter()
calc = MACECalculator(model=model, dtype=dtype, head=None if head == "-" else head)
"""
)

TIMED = """
load_s = time.perf_counter() - start
atoms = read(xyz)
atoms.calc = calc
start = time.perf_counter()
energy = float(atoms.get_potential_energy())
forces = atoms.get_forces().tolist()
first_s = time.perf_counter() - start
for k in range(2 if first_s < 1.0 else 0):
    atoms.positions[0, 0] += 1e-6 * (-1) ** k
    atoms.get_forces()
times = []
for k in range(int(repeats)):
    atoms.positions[0, 0] += 1e-6 * (-1) ** (k + 1)
    start = time.perf_counter()
    atoms.get_forces()
    times.append(time.perf_counter() - start)
print(json.dumps({"energy": energy, "forces": forces, "load_s": load_s, "first_s": first_s,
                  "ms": 1000 * float(np.median(times)), "all_ms": [1000 * t for t in times],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, help="folder of family folders")
    parser.add_argument("--mace-python")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--sizes", default="64,1000")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--allocators", default="glibc,jemalloc,mallopt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mace-memory-gb", type=float, default=16.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument(
        "--from-json", type=Path, nargs="+", help="only print the table of earlier --json files"
    )
    args = parser.parse_args()
    allocators = args.allocators.split(",")
    if args.from_json:
        rows = [row for path in args.from_json for row in json.loads(path.read_text())]
        print_table(rows, allocators, args.threads)
        return
    if args.models is None or args.mace_python is None:
        parser.error("--models and --mace-python are needed (unless --from-json)")
    base_env = dict(
        os.environ, OMP_NUM_THREADS=str(args.threads), TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"
    )
    base_env.pop("LD_PRELOAD", None)
    if "jemalloc" in allocators and not Path(JEMALLOC).exists():
        sys.exit(f"{JEMALLOC} not found (apt-get install libjemalloc2) or drop it: --allocators")
    work = Path(tempfile.mkdtemp(prefix="openmace_foundations_"))
    results = []
    for family in args.families.split(","):
        label, head, kind, _ = FAMILIES[family]
        model = str(args.models / family / "model.model")
        for n in map(int, args.sizes.split(",")):
            atoms = copper(n) if kind == "cu" else organic_box(n)
            xyz = work / f"{kind}{n}.xyz"
            write(xyz, atoms)
            for dtype in args.dtypes.split(","):
                load_before = os.getloadavg()[0]
                row = {"family": family, "label": label, "atoms": n, "kind": kind}
                row |= {"dtype": dtype, "load_before": load_before}
                plan = [("mace", "glibc"), ("openmace", "glibc")]
                if "jemalloc" in allocators:
                    plan += [("mace", "jemalloc"), ("openmace", "jemalloc")]
                if "mallopt" in allocators:
                    plan += [("openmace", "mallopt")]
                for tool, alloc in plan:
                    env = dict(base_env)
                    if alloc == "jemalloc":
                        env["LD_PRELOAD"] = JEMALLOC
                    argv = [str(xyz), model, dtype, str(args.repeats), head or "-"]
                    argv += [str(args.threads), alloc]
                    if tool == "mace":
                        cmd = [args.mace_python, "-c", MACE_TIMER + TIMED, *argv]
                        res = run_json(cmd, env, args.timeout, args.mace_memory_gb)
                    else:
                        cmd = [sys.executable, "-c", OPENMACE_TIMER + TIMED, *argv]
                        res = run_json(cmd, env, args.timeout)
                    row[f"{tool}_{alloc}"] = res
                    shown = res.get("error") or f"{res['ms']:.1f} ms, {res['peak_mb']:.0f} MB"
                    print(f"  {family} {n} {dtype} {tool} {alloc}: {shown}", file=sys.stderr)
                row["load_after"] = os.getloadavg()[0]
                mace, ours = row["mace_glibc"], row["openmace_glibc"]
                if "energy" in mace and "energy" in ours:
                    row["de_per_atom"] = abs(mace["energy"] - ours["energy"]) / n
                    row["df_max"] = float(
                        np.abs(np.array(mace["forces"]) - np.array(ours["forces"])).max()
                    )
                for res in row.values():
                    if isinstance(res, dict):
                        res.pop("forces", None)
                results.append(row)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1))
    print_table(results, allocators, args.threads)


def _ms(row: dict, key: str) -> float | None:
    res = row.get(key) or {}
    return res.get("ms")


def print_table(results: list[dict], allocators: list[str], threads: int) -> None:
    """A Markdown table of ``results``: ms per call, ratios, |ΔE|/atom, max |ΔF|, peak RSS."""
    keys = [("mace", "glibc"), ("openmace", "glibc")]
    if "jemalloc" in allocators:
        keys += [("mace", "jemalloc"), ("openmace", "jemalloc")]
    if "mallopt" in allocators:
        keys += [("openmace", "mallopt")]
    names = {"mace": "mace-torch", "openmace": "openmace"}
    print(
        f"energy + forces + stress through each ASE calculator; {threads} thread(s); "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    head = ["model", "structure", "dtype"]
    head += [f"{names[t]} {a} ms" for t, a in keys]
    head += ["ratio (glibc)", "ratio (best/best)"]
    head += ["|ΔE|/atom eV (float64)", "max |ΔF| eV/Å", "mace-torch MB", "openmace MB", "load"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for row in results:
        what = "Cu" if row["kind"] == "cu" else "organic box"
        cells = [row["label"], f"{what} {row['atoms']}", row["dtype"]]
        for tool, alloc in keys:
            res = row.get(f"{tool}_{alloc}", {})
            cells.append(f"{res['ms']:.1f}" if "ms" in res else res.get("error", "-"))
        m, o = _ms(row, "mace_glibc"), _ms(row, "openmace_glibc")
        cells.append(f"{m / o:.2f}" if m and o else "-")
        best_m = min(filter(None, [_ms(row, f"mace_{a}") for a in allocators]), default=None)
        best_o = min(filter(None, [_ms(row, f"openmace_{a}") for a in allocators]), default=None)
        cells.append(f"{best_m / best_o:.2f}" if best_m and best_o else "-")
        de = row.get("de_per_atom")
        cells.append(f"{de:.1e}" if de is not None and row["dtype"] == "float64" else "-")
        df = row.get("df_max")
        cells.append(f"{df:.1e}" if df is not None else "-")
        for tool in ("mace", "openmace"):
            res = row.get(f"{tool}_glibc", {})
            cells.append(f"{res['peak_mb']:.0f}" if "peak_mb" in res else "-")
        cells.append(f"{row['load_before']:.1f}-{row['load_after']:.1f}")
        print("| " + " | ".join(cells) + " |")
    print()
    print("peak RSS (MB) and load time (s) of each process")
    head = ["model", "structure", "dtype"]
    head += [f"{names[t]} {a} MB" for t, a in keys] + [f"{names[t]} {a} load s" for t, a in keys]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for row in results:
        what = "Cu" if row["kind"] == "cu" else "organic box"
        cells = [row["label"], f"{what} {row['atoms']}", row["dtype"]]
        for field, fmt in (("peak_mb", "{:.0f}"), ("load_s", "{:.1f}")):
            for tool, alloc in keys:
                res = row.get(f"{tool}_{alloc}", {})
                cells.append(fmt.format(res[field]) if field in res else "-")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
