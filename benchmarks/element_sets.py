"""What an 89-element model costs on a structure of one element, before and after the symmetric
contraction stopped contracting the weights of absent elements (issue 15, item 5).

    git worktree add --detach /tmp/base <commit>        # checkout A, the main tree untouched
    python benchmarks/element_sets.py --base-src /tmp/base/src --new-src src \
        [--dtypes float64,float32] [--cells cu64,cu1000] \
        [--implementations compiled,pytorch,train,torchscript]
        [--threads 2] [--rounds 1] [--json out.json]

The model: a full-size random-weight look-alike of the 89-element materials models (atomic
numbers 1..89, 128x0e+128x1o, max_ell 3, correlation 3, two interactions, r_max 6 Å, 10 Bessel
functions, p = 5, radial MLP [64, 64, 64]), written once as a model file by checkout A (seed 0,
float64; both versions read it) and loaded in ``float64`` or ``float32``.

Every case runs in a fresh subprocess of this interpreter with ``PYTHONPATH=<checkout's src>``
and its own ``TORCH_EXTENSIONS_DIR`` per checkout (a shared build folder would rebuild the kernels
at every switch); one untimed warm-up subprocess per checkout builds or loads the compiled kernels
first. A case measures:

* ``build``: ``MACECalculator(model=<file>, dtype=..., implementation=...)``: reading the file,
  building the model (coupling bases) and :func:`openmace.accel.for_inference`, in seconds;
* ``first``: the first energy + forces + stress call on the cell (rattled fcc Cu: ``cu64`` = 4x4x4
  primitive cells, ``cu1000`` = 10x10x10), seconds; ``second``: the next call, positions
  rattled by 1e-4 Å (no cache can answer it);
* ``held``: MB of contracted weights the model keeps after the calls (the swaps' buffers ``p``,
  ``p_top``, ``kernel_weights`` or their per-element cache);
* ``rss``: the process's resident memory after the calls and ``peak``: its high-water mark
  (``VmHWM`` of ``/proc/self/status``), MB, including PyTorch itself (``base``: the resident
  memory after the imports).

Implementations: ``compiled`` (the calculator's default on CPU: compiled kernels), ``pytorch``
(the PyTorch operations; the contraction swap the TorchScript export also uses), ``train``
(no calculator: the reference model as in training, forces with ``create_graph=True`` and the
backward pass of ``energy + Σ forces²``; ``held`` is 0, the weights are contracted at each call),
``torchscript`` (``build``: load, :func:`openmace.io.torchscript.export_torchscript` and
``torch.jit.load``; ``file``: the exported file's size in MB; the calls' neighbour lists are
built outside the timed calls).
The load average is printed before and after.
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
from typing import Any

ATOMIC_NUMBERS = list(range(1, 90))
CONFIG = {
    "atomic_numbers": ATOMIC_NUMBERS,
    "atomic_energies": [-0.5 * z for z in ATOMIC_NUMBERS],
    "r_max": 6.0,
    "num_bessel": 10,
    "num_polynomial_cutoff": 5,
    "max_ell": 3,
    "hidden_irreps": "128x0e+128x1o",
    "correlation": 3,
    "num_interactions": 2,
    "radial_mlp": [64, 64, 64],
    "avg_num_neighbors": 60.0,
}
CELLS = {"cu64": 4, "cu1000": 10}  # repeats of the primitive fcc cell along each axis


def _status(field: str) -> float:
    """A memory field of /proc/self/status in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _held_bytes(model: Any) -> int:
    """Bytes of contracted weights held by the model's symmetric contractions (old and new
    forms: buffers ``p``, ``p_top``, ``kernel_weights``; a per-element ``cache``)."""
    total = 0
    for product in model.products:
        contraction = product.contraction
        for name, buffer in contraction.named_buffers(recurse=False):
            if name in ("p", "p_top", "kernel_weights"):
                total += buffer.nbytes
        for entry in getattr(contraction, "cache", {}).values():
            total += sum(t.nbytes for t in entry)
    return total


def write_model(path: str) -> None:
    """Checkout A's side: the look-alike model file."""
    import torch

    from openmace import MACE, MACEConfig, save_model

    torch.manual_seed(0)
    save_model(MACE(MACEConfig(**CONFIG), dtype=torch.float64), path)


def worker(case: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this process (see the module docstring)."""
    import ase.build
    import numpy as np
    import torch

    import openmace
    from openmace import MACECalculator, load_model

    torch.set_num_threads(case["threads"])
    base = _status("VmRSS")
    atoms = ase.build.bulk("Cu", "fcc", a=3.61) * ((CELLS[case["cell"]],) * 3)
    atoms.rattle(0.05, seed=0)
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {"openmace": openmace.__file__, "atoms": len(atoms), "base": base}
    if case["implementation"] == "train":
        from openmace.data.graph import graph_from_atoms

        start = time.perf_counter()
        model = load_model(case["model"], dtype=getattr(torch, case["dtype"]))
        out["build"] = time.perf_counter() - start
        times = []
        for _ in range(2):
            graph = graph_from_atoms(atoms, model.config.r_max)
            start = time.perf_counter()
            result = model(graph, compute_stress=True, create_graph=True)
            loss = result["energy"].sum() + result["forces"].square().sum()
            loss.backward()
            times.append(time.perf_counter() - start)
            atoms.positions += rng.normal(scale=1e-4, size=atoms.positions.shape)
        out["energy"] = float(result["energy"].detach().sum())
        held = _held_bytes(model)
    elif case["implementation"] == "torchscript":
        from openmace.data.graph import graph_from_atoms
        from openmace.io.torchscript import export_torchscript

        start = time.perf_counter()
        model = load_model(case["model"], dtype=getattr(torch, case["dtype"]))
        path = Path(case["model"]).with_name(f"scripted-{os.getpid()}.pt")
        export_torchscript(model, path)
        del model
        scripted = torch.jit.load(str(path))
        out["build"] = time.perf_counter() - start
        out["file"] = path.stat().st_size / 2**20
        path.unlink()
        times = []
        for _ in range(2):
            g = graph_from_atoms(atoms, CONFIG["r_max"])
            inputs = (g.positions, g.atomic_numbers, g.cell[0], g.pbc[0], g.edge_index)
            start = time.perf_counter()
            result = scripted(*inputs, g.unit_shifts, compute_stress=True)
            times.append(time.perf_counter() - start)
            if len(times) == 1:
                out["energy"] = float(result["energy"].sum())
            atoms.positions += rng.normal(scale=1e-4, size=atoms.positions.shape)
        held = 0
        for layer in range(CONFIG["num_interactions"]):
            # a scripted ModuleList yields the Python modules when iterated: by name
            contraction = getattr(scripted.model.products, str(layer)).contraction
            for name, buffer in contraction.named_buffers(recurse=False):
                if name in ("p", "p_top"):
                    held += buffer.nbytes
            if hasattr(contraction, "cache"):
                held += sum(t.nbytes for entry in contraction.cache.values() for t in entry)
    else:
        start = time.perf_counter()
        calc = MACECalculator(
            model=case["model"], dtype=case["dtype"], implementation=case["implementation"]
        )
        out["build"] = time.perf_counter() - start
        atoms.calc = calc
        times = []
        for _ in range(2):
            start = time.perf_counter()
            energy = atoms.get_potential_energy()
            atoms.get_forces()
            atoms.get_stress()
            times.append(time.perf_counter() - start)
            if len(times) == 1:
                out["energy"] = energy
            atoms.positions += rng.normal(scale=1e-4, size=atoms.positions.shape)
        held = sum(_held_bytes(m) for m in calc.models)
    out.update(
        first=times[0],
        second=times[1],
        held=held / 2**20,
        rss=_status("VmRSS"),
        peak=_status("VmHWM"),
    )
    return out


def _run(src: str, extensions: Path, args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=src, TORCH_EXTENSIONS_DIR=str(extensions))
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed ({args}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-src", help="checkout A's src folder (before); required")
    parser.add_argument("--new-src", help="checkout B's src folder (after); required")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--cells", default="cu64,cu1000")
    parser.add_argument("--implementations", default="compiled,pytorch,train,torchscript")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--extensions-dir", default=None, help="kernel build folders (before/, after/)"
    )
    parser.add_argument("--json", default=None, help="write the raw results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--write-model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.write_model is not None:
        write_model(args.write_model)
        return
    if not args.base_src or not args.new_src:
        parser.error("--base-src and --new-src are required")

    versions = {"before": str(Path(args.base_src).resolve()), "after": str(Path(args.new_src))}
    versions["after"] = str(Path(versions["after"]).resolve())
    workdir = Path(tempfile.mkdtemp(prefix="element_sets_"))
    extensions = Path(args.extensions_dir or workdir / "extensions")
    model = str(workdir / "model89.safetensors")
    print(f"load average before: {_load()}", flush=True)
    _run(versions["before"], extensions / "before", ["--write-model", model])
    warm = {"model": model, "dtype": "float64", "cell": "cu64", "threads": args.threads}
    for label, src in versions.items():  # build or load the kernels, untimed
        _run(
            src, extensions / label, ["--worker", json.dumps(warm | {"implementation": "compiled"})]
        )
    cases = [
        {"dtype": d, "cell": c, "implementation": i}
        for i in args.implementations.split(",")
        for d in args.dtypes.split(",")
        for c in args.cells.split(",")
        if not (i in ("train", "torchscript") and c != "cu64")  # these: the 64-atom cell only
    ]
    results: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for case in cases:
            order = list(versions) if round_ % 2 == 0 else list(versions)[::-1]
            for label in order:
                spec = case | {"model": model, "threads": args.threads}
                measured = _run(versions[label], extensions / label, ["--worker", json.dumps(spec)])
                results.append(case | {"version": label, "round": round_} | measured)
                print(".", end="", flush=True)
    print(f"\nload average after: {_load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print_table(results, cases)


def print_table(results: list[dict[str, Any]], cases: list[dict[str, Any]]) -> None:
    columns = ("build", "first", "second", "held", "rss", "peak", "file")
    units = ("s", "s", "s", "MB", "MB", "MB", "MB")
    header = f"{'implementation':<14} {'dtype':<8} {'cell':<7} {'version':<7}"
    header += "".join(f" {c + ' ' + u:>11}" for c, u in zip(columns, units)) + "   dE/atom"
    print(header)
    print("-" * len(header))
    for case in cases:
        rows = {}
        for label in ("before", "after"):
            mine = [
                r for r in results if r["version"] == label and all(r[k] == case[k] for k in case)
            ]
            if not mine:
                continue
            best = {c: min(r.get(c, float("nan")) for r in mine) for c in columns}
            rows[label] = (best, mine[0])
        for label, (best, first) in rows.items():
            line = f"{case['implementation']:<14} {case['dtype']:<8} {case['cell']:<7} {label:<7}"
            line += "".join(f" {best[c]:>11.2f}" for c in columns)
            if label == "after" and "before" in rows:
                diff = abs(first["energy"] - rows["before"][1]["energy"]) / first["atoms"]
                line += f"   {diff:.1e}"
            print(line)


if __name__ == "__main__":
    main()
