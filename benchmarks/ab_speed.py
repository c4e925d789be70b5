"""Inference speed of two openmace checkouts, A (base) against B (new), interleaved.

    git -C . archive d93d64a | tar -x -C /tmp/openmace_base     # checkout A, git state untouched
    python benchmarks/ab_speed.py --base-src /tmp/openmace_base/src --new-src src \
        --molecule /path/to/3bpa/train_300K.xyz [--rounds 3] [--repeats 15] [--threads 2] \
        [--cases 'small-*-mol-*,default-float64-cu64-compiled']

What it measures: the wall time of one energy + forces evaluation through the ASE calculator
(``atoms.get_potential_energy(); atoms.get_forces()``, positions rattled by 1e-4 Å before each
call with a fixed random generator so nothing is cached and both versions see the same
positions), median of ``--repeats`` calls after three warm-up calls. Cases: model size (small
``32x0e+32x1o``, default ``128x0e+128x1o``; max_ell 3, correlation 3, two interactions, r_max 5 Å,
elements H C N O Cu) x dtype (float64, float32) x structure (``mol``: the first 3BPA
configuration, 27 atoms, or 25 rattled C H N atoms without ``--molecule``; ``cu64``: fcc Cu, 64
atoms, rattled by 0.05 Å) x implementation (``compiled``: ``OPENMACE_KERNELS=1``, ``pytorch``:
``OPENMACE_KERNELS=0``).

How: both versions use the same weights, written once by checkout A (model file format 2, which
both read; seed 0, float64). Every measurement runs in a fresh subprocess of this interpreter with
``PYTHONPATH=<that checkout's src>`` (the worker also puts it first on ``sys.path`` and checks
``openmace.__file__``), so the two versions never share a process. Each version gets its own
``TORCH_EXTENSIONS_DIR`` (``--extensions-dir``/A and /B): PyTorch's build file names the source
paths, so two checkouts sharing one build folder rebuild it (a minute) at every switch, and would
rewrite the shared ``~/.cache/torch_extensions`` under other users. One untimed warm-up subprocess
per version builds (or loads) the compiled kernels first. Each round runs every case A then B (B
then A on odd rounds). The table gives per case the median over rounds of each version's median,
the ratio B/A (< 1: the new version is faster), the largest energy difference per atom and force
difference between the versions at the unrattled structure (~0: same weights), and whether the
compiled kernels were really loaded. The load average is printed before and after; B's source tree
is hashed before each of its runs, so edits made to it during the benchmark are reported.

A busy machine: a run that shares its cores with another busy process is not a little slower but
up to 30-100x (OpenMP threads waiting for a descheduled sibling); its cpu/wall (process CPU seconds
per wall second) drops from about ``--threads`` to 1 or less. The "clean" columns keep only rounds
in which both versions had the cores; ``--json`` keeps the raw results and ``--table-from`` prints
their table again.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SIZES = {"small": "32x0e+32x1o", "default": "128x0e+128x1o"}
DTYPES = ("float64", "float32")
STRUCTURES = ("mol", "cu64")
IMPLEMENTATIONS = {"compiled": "1", "pytorch": "0"}
ELEMENTS = [1, 6, 7, 8, 29]
ATOMIC_ENERGIES = [-13.587, -1029.86, -1484.92, -2042.03, -1392.5]
VERSIONS = ("A", "B")


# ----------------------------------------------------------------------------- worker side


def _import_openmace(src: str) -> Any:
    """Import openmace from ``src`` (first on sys.path) and check that it came from there."""
    sys.path.insert(0, src)
    import openmace

    where = Path(openmace.__file__).resolve()
    if Path(src).resolve() not in where.parents:
        raise RuntimeError(f"openmace imported from {where}, not from {src}")
    return openmace


def _worker_save(spec: dict[str, Any]) -> dict[str, Any]:
    """Write the model files (run with checkout A: its format is read by both versions)."""
    openmace = _import_openmace(spec["src"])
    import torch

    from openmace.io.model_file import save_model
    from openmace.model import MACE, MACEConfig

    for name, path in spec["models"].items():
        torch.set_default_dtype(torch.float64)
        torch.manual_seed(0)
        config = MACEConfig(
            atomic_numbers=ELEMENTS,
            atomic_energies=ATOMIC_ENERGIES,
            r_max=5.0,
            hidden_irreps=SIZES[name],
            correlation=3,
            max_ell=3,
            num_interactions=2,
            avg_num_neighbors=10.0,
        )
        save_model(MACE(config), path)
    return {"openmace_file": openmace.__file__}


def _worker_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Time energy + forces of one (model, dtype, structure) in this process."""
    openmace = _import_openmace(spec["src"])
    import numpy as np
    import torch
    from ase.io import read

    torch.set_num_threads(spec["threads"])
    from openmace import MACECalculator

    calc = MACECalculator(model=spec["model"], device="cpu", dtype=spec["dtype"])
    atoms = read(spec["structure"])
    atoms.calc = calc
    rng = np.random.default_rng(12345)
    energy = float(atoms.get_potential_energy())  # first warm-up call, unrattled structure
    forces = atoms.get_forces().tolist()
    times, cpu_times = [], []
    for k in range(spec["warmup"] - 1 + spec["repeats"]):
        atoms.positions = atoms.positions + rng.normal(scale=1e-4, size=atoms.positions.shape)
        start, cpu_start = time.perf_counter(), time.process_time()
        atoms.get_potential_energy()
        atoms.get_forces()
        if k >= spec["warmup"] - 1:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    from openmace import kernels

    return {
        "openmace_file": openmace.__file__,
        "n_atoms": len(atoms),
        "energy": energy,
        "forces": forces,
        "times_ms": [1000.0 * t for t in times],
        "median_ms": 1000.0 * statistics.median(times) if times else float("nan"),
        # CPU seconds of all this process's threads per wall second of the timed calls: about
        # the thread count when the process had the cores, much less when it was starved
        "cpu_per_wall": sum(cpu_times) / sum(times) if times else float("nan"),
        "kernels_loaded": getattr(kernels, "_state", {}).get("cpu") is not None,
        "threads": torch.get_num_threads(),
    }


def worker(spec_json: str) -> None:
    """Entry point of a subprocess: run the job described by ``spec_json``, print JSON."""
    spec = json.loads(spec_json)
    result = _worker_save(spec) if spec["job"] == "save" else _worker_time(spec)
    print("AB_RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------- driver side


def tree_digest(src: Path) -> str:
    """Short hash of every Python and C++ file under ``src/openmace``."""
    digest = hashlib.sha256()
    for path in sorted((src / "openmace").rglob("*")):
        if path.suffix in (".py", ".cpp", ".h", ".hpp") and path.is_file():
            digest.update(str(path.relative_to(src)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def run_worker(
    spec: dict[str, Any], kernels: str, threads: int, retries: int, wait: float, label: str
) -> dict[str, Any]:
    """Run one job in a fresh subprocess; retry after ``wait`` seconds on failure."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(
        PYTHONPATH=spec["src"],
        OPENMACE_KERNELS=kernels,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    if "extensions_dir" in spec:
        env["TORCH_EXTENSIONS_DIR"] = spec["extensions_dir"]
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    error = ""
    for attempt in range(retries + 1):
        if attempt:
            print(f"  retry {attempt}/{retries} of {label} in {wait:.0f} s", flush=True)
            time.sleep(wait)
        proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd="/")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("AB_RESULT ")]
        if proc.returncode == 0 and lines:
            return json.loads(lines[-1][len("AB_RESULT ") :])
        error = (proc.stderr or proc.stdout)[-4000:]
        print(f"  {label} failed (exit {proc.returncode}):\n{error}", flush=True)
    return {"error": error}


def write_structures(folder: Path, molecule: Path | None) -> dict[str, Path]:
    """The two structures as extended-XYZ files (read identically by both versions)."""
    import ase.build
    from ase.io import read, write

    if molecule is not None:
        mol = read(molecule, 0)
    else:  # 25 atoms of C, H, N: pyridine and isobutane 4 Å apart, rattled
        mol = ase.build.molecule("C5H5N")
        other = ase.build.molecule("isobutane")
        other.translate((0.0, 0.0, 4.0))
        mol += other
        mol.rattle(0.05, seed=0)
    mol.calc = None
    mol.info.clear()
    mol.pbc = False
    mol.cell = None
    copper = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * (4, 2, 2)
    copper.rattle(0.05, seed=0)
    paths = {"mol": folder / "mol.xyz", "cu64": folder / "cu64.xyz"}
    write(paths["mol"], mol)
    write(paths["cu64"], copper)
    return paths


def case_names(selection: str | None) -> list[str]:
    """Every case ``size-dtype-structure-implementation`` matching one of the patterns."""
    names = [
        f"{size}-{dtype}-{structure}-{impl}"
        for size in SIZES
        for dtype in DTYPES
        for structure in STRUCTURES
        for impl in IMPLEMENTATIONS
    ]
    if not selection:
        return names
    patterns = [p.strip() for p in selection.split(",") if p.strip()]
    chosen = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not chosen:
        raise SystemExit(f"--cases {selection!r} matches none of {names}")
    return chosen


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt(value: float, digits: int = 2, missing: str = "error") -> str:
    """``value`` to ``digits`` decimals; NaN (a failed run, no clean round) as ``missing``."""
    return missing if value != value else f"{value:.{digits}f}"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(
    names: list[str], results: dict[str, dict[str, list[dict[str, Any]]]], threads: int
) -> str:
    """The markdown table: per case, medians over rounds and the A/B agreement.

    A round is clean when both of its runs had the cores (CPU seconds per wall second at least
    0.75 x threads); the clean columns use those rounds only."""
    rows = [
        "| case | atoms | A ms | B ms | B/A | paired B/A | clean rounds | clean A ms | clean B ms "
        "| clean B/A | A spread | B spread | cpu/wall A/B | max dE/atom (eV) | max dF (eV/Å) "
        "| kernels A/B | rounds ok |",
        "|" + "---|" * 17,
    ]
    for name in names:
        good = {v: [r for r in results[name][v] if "error" not in r] for v in VERSIONS}
        med = {v: _median([r["median_ms"] for r in good[v]]) for v in VERSIONS}
        spread = {
            v: (
                f"{min(r['median_ms'] for r in good[v]):.2f}-"
                f"{max(r['median_ms'] for r in good[v]):.2f}"
                if good[v]
                else "error"
            )
            for v in VERSIONS
        }
        pairs = [
            (a, b)
            for a, b in zip(results[name]["A"], results[name]["B"])
            if "error" not in a and "error" not in b
        ]
        clean = [
            (a, b) for a, b in pairs if min(a["cpu_per_wall"], b["cpu_per_wall"]) >= 0.75 * threads
        ]
        paired = _median([b["median_ms"] / a["median_ms"] for a, b in pairs])
        clean_a = _median([a["median_ms"] for a, _ in clean])
        clean_b = _median([b["median_ms"] for _, b in clean])
        clean_ratio = _median([b["median_ms"] / a["median_ms"] for a, b in clean])
        cpu = "/".join(
            f"{statistics.median(r['cpu_per_wall'] for r in good[v]):.2f}" if good[v] else "-"
            for v in VERSIONS
        )
        d_energy = [abs(a["energy"] - b["energy"]) / a["n_atoms"] for a, b in pairs]
        d_force = [
            max(abs(x - y) for fa, fb in zip(a["forces"], b["forces"]) for x, y in zip(fa, fb))
            for a, b in pairs
        ]
        agree = f"{max(d_energy):.1e} | {max(d_force):.1e}" if pairs else "- | -"
        atoms = next((r["n_atoms"] for v in VERSIONS for r in good[v]), "?")
        kernels = "/".join(
            ",".join(sorted({"yes" if r["kernels_loaded"] else "no" for r in good[v]})) or "-"
            for v in VERSIONS
        )
        rows.append(
            f"| {name} | {atoms} | {fmt(med['A'])} | {fmt(med['B'])} "
            f"| {fmt(med['B'] / med['A'], 3)} | {fmt(paired, 3)} | {len(clean)}/{len(pairs)} "
            f"| {fmt(clean_a, 2, '-')} | {fmt(clean_b, 2, '-')} | {fmt(clean_ratio, 3, '-')} "
            f"| {spread['A']} | {spread['B']} | {cpu} | {agree} "
            f"| {kernels} | {len(good['A'])}/{len(good['B'])} |"
        )
    return "\n".join(rows)


def print_table(
    names: list[str], results: dict[str, dict[str, list[dict[str, Any]]]], meta: dict[str, Any]
) -> None:
    """The legend and the table."""
    print(
        f"Median over {meta['rounds']} rounds of each subprocess's median of {meta['repeats']} "
        f"energy+forces calls (ms), {meta['threads']} threads; B/A < 1: B (new) is faster. "
        "Paired: median over rounds of B/A within a round. Clean: only rounds in which both "
        "runs had the cores (cpu/wall >= 0.75 x threads; '-' when none). Spread: min-max "
        "over rounds. cpu/wall: process CPU seconds per wall second while timed (~threads when "
        "not starved, ~1 when a busy process shares the cores). dE, dF: A vs B at the unrattled "
        "structure."
    )
    print()
    print(table(names, results, meta["threads"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-src", type=Path, default=Path("/tmp/openmace_base/src"))
    parser.add_argument("--new-src", type=Path, default=REPO / "src")
    parser.add_argument("--molecule", type=Path, default=None, help="3BPA xyz (first frame)")
    parser.add_argument("--cases", default=None, help="comma-separated patterns, e.g. 'small-*'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retries", type=int, default=3, help="per failed subprocess")
    parser.add_argument("--retry-wait", type=float, default=60.0, help="seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="models and structures")
    parser.add_argument(
        "--extensions-dir",
        type=Path,
        default=Path("/tmp/ab_speed_torch_extensions"),
        help="TORCH_EXTENSIONS_DIR parent; each version builds its kernels in <dir>/A, <dir>/B",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument("--table-from", type=Path, default=None, help="print a --json's table")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return
    if args.table_from is not None:
        saved = json.loads(args.table_from.read_text())
        print_table(saved["names"], saved["results"], saved["meta"])
        return

    srcs = {"A": args.base_src.resolve(), "B": args.new_src.resolve()}
    for version, src in srcs.items():
        if not (src / "openmace" / "__init__.py").is_file():
            raise SystemExit(f"checkout {version}: no openmace package under {src}")
    names = case_names(args.cases)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="ab_speed_"))
    folder.mkdir(parents=True, exist_ok=True)
    common = dict(threads=args.threads, retries=args.retries, wait=args.retry_wait)

    print(f"load average before: {load()}")
    print(
        f"python {sys.executable}, threads {args.threads}, rounds {args.rounds}, "
        f"repeats {args.repeats}, warm-up {args.warmup}, work folder {folder}"
    )
    print(f"A (base) {srcs['A']}  tree {tree_digest(srcs['A'])}")
    print(f"B (new)  {srcs['B']}  tree {tree_digest(srcs['B'])}", flush=True)

    structures = write_structures(folder, args.molecule)
    models = {size: str(folder / f"{size}.safetensors") for size in SIZES}
    saved = run_worker(
        {"job": "save", "src": str(srcs["A"]), "models": models}, "0", label="save (A)", **common
    )
    if "error" in saved:
        raise SystemExit("checkout A could not write the model files")
    print(f"model files written by A ({saved['openmace_file']}): {', '.join(models.values())}")

    def spec(version: str, name: str, repeats: int, warmup: int) -> dict[str, Any]:
        size, dtype, structure, _ = name.split("-")
        return {
            "job": "time",
            "src": str(srcs[version]),
            "model": models[size],
            "dtype": dtype,
            "structure": str(structures[structure]),
            "extensions_dir": str(args.extensions_dir.resolve() / version),
            "threads": args.threads,
            "repeats": repeats,
            "warmup": warmup,
        }

    # untimed warm-up per version: builds (or loads) the compiled kernels, checks the import
    for version in VERSIONS:
        start = time.perf_counter()
        for dtype in DTYPES:
            out = run_worker(
                spec(version, f"small-{dtype}-mol-compiled", 0, 1),
                "1",
                label=f"warm-up {version} {dtype}",
                **common,
            )
            if "error" in out:
                raise SystemExit(f"checkout {version} does not run (see the traceback above)")
            if not out["kernels_loaded"]:
                print(f"  WARNING: checkout {version}: compiled kernels not loaded ({dtype})")
        print(
            f"warm-up {version}: {out['openmace_file']}, {time.perf_counter() - start:.1f} s",
            flush=True,
        )

    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {v: [] for v in VERSIONS} for name in names
    }
    digests_b: set[str] = set()
    started = time.perf_counter()
    for round_ in range(args.rounds):
        order = VERSIONS if round_ % 2 == 0 else VERSIONS[::-1]
        for name in names:
            kernels = IMPLEMENTATIONS[name.split("-")[3]]
            line = []
            for version in order:
                if version == "B":
                    digests_b.add(tree_digest(srcs["B"]))
                out = run_worker(
                    spec(version, name, args.repeats, args.warmup),
                    kernels,
                    label=f"{name} {version} round {round_}",
                    **common,
                )
                results[name][version].append(out)
                line.append(
                    f"{version} {fmt(out.get('median_ms', float('nan')))} ms "
                    f"(cpu/wall {fmt(out.get('cpu_per_wall', float('nan')))})"
                )
            print(
                f"round {round_} {name}: {', '.join(line)}  "
                f"(load {load()}, {time.perf_counter() - started:.0f} s)",
                flush=True,
            )

    print()
    print(f"load average after: {load()}")
    if len(digests_b) > 1:
        print(
            f"NOTE: B's source tree changed during the run ({len(digests_b)} versions: "
            f"{', '.join(sorted(digests_b))})"
        )
    meta = {"rounds": args.rounds, "repeats": args.repeats, "threads": args.threads}
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "names": names, "results": results}))
        print(f"raw results: {args.json}")
    print()
    print_table(names, results, meta)


if __name__ == "__main__":
    main()
