"""HDF5 shards (openmace's prepared format) vs LMDB (one record per structure): write time,
bytes per structure, random-read time per structure, on the same structures.

    python benchmarks/dataset_formats.py --structures 20000

LMDB records hold the same arrays as an ``.npz`` (numpy's format, no pickle) keyed by index;
HDF5 is written by openmace's own shard writer and read by ``PreparedStore.read``. Needs
``pip install lmdb`` (a benchmark-only dependency). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def structures(n: int, seed: int = 0):
    """Rattled fcc Cu cells (32 atoms) and water/methanol molecules, with labels."""
    import ase.build

    from openmace.data.configurations import Configuration

    rng = np.random.default_rng(seed)
    cu = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    molecules = [ase.build.molecule("H2O"), ase.build.molecule("CH3OH")]
    out = []
    for k in range(n):
        atoms = cu if k % 3 == 0 else molecules[k % 2]
        positions = atoms.positions + rng.normal(0, 0.05, atoms.positions.shape)
        out.append(
            Configuration(
                atomic_numbers=atoms.numbers.copy(),
                positions=positions,
                cell=np.asarray(atoms.cell[:], dtype=float),
                pbc=np.asarray(atoms.pbc, dtype=bool),
                energy=float(rng.normal()),
                forces=rng.normal(size=(len(atoms), 3)),
                stress=rng.normal(size=(3, 3)) if atoms.pbc.all() else None,
                source="synthetic.xyz",
                index=k,
            )
        )
    return out


def write_hdf5(configs, folder: Path, shard_size: int) -> None:
    from openmace.data.graph import neighbour_list
    from openmace.data.prepare import _ShardBuilder
    from openmace.data.prepared import FORMAT, MANIFEST, VERSION

    shards = []
    for start in range(0, len(configs), shard_size):
        builder = _ShardBuilder(neighbours=False)
        for c in configs[start : start + shard_size]:
            builder.add(c, 0, neighbour_list(c.positions, c.cell, c.pbc, 5.0))
        shards.append(builder.write(folder / f"shard-{start // shard_size:06d}-000.h5"))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "r_max": 5.0,
        "neighbours": False,
        "keys": {},
        "files": [{"path": "synthetic.xyz"}],
        "shards": shards,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))


def write_lmdb(configs, folder: Path) -> None:
    import lmdb

    from openmace.data.graph import neighbour_list

    env = lmdb.open(str(folder), map_size=1 << 36)
    with env.begin(write=True) as txn:
        for k, c in enumerate(configs):
            neighbour_list(c.positions, c.cell, c.pbc, 5.0)  # the same work as the HDF5 side
            buffer = io.BytesIO()
            arrays = dict(
                numbers=c.atomic_numbers.astype(np.uint8),
                positions=c.positions,
                cell=c.cell,
                pbc=c.pbc,
                energy=np.array(c.energy),
                forces=c.forces,
            )
            if c.stress is not None:
                arrays["stress"] = c.stress
            np.savez(buffer, **arrays)
            txn.put(str(k).encode(), buffer.getvalue())
    env.close()


def read_lmdb(folder: Path, order) -> float:
    import lmdb

    env = lmdb.open(str(folder), readonly=True, lock=False)
    start = time.perf_counter()
    with env.begin() as txn:
        for k in order:
            with np.load(io.BytesIO(txn.get(str(int(k)).encode()))) as data:
                _ = {name: data[name] for name in data.files}
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed


def read_hdf5(folder: Path, order) -> float:
    from openmace.data.prepared import PreparedStore

    store = PreparedStore(folder)
    start = time.perf_counter()
    for k in order:
        store.read(int(k))
    return time.perf_counter() - start


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=20000)
    parser.add_argument("--shard-size", type=int, default=10000)
    parser.add_argument("--reads", type=int, default=5000)
    args = parser.parse_args()
    configs = structures(args.structures)
    order = np.random.default_rng(1).permutation(args.structures)[: args.reads]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, write, read in (
            ("HDF5 shards (h5py)", lambda f: write_hdf5(configs, f, args.shard_size), read_hdf5),
            ("LMDB, npz records", lambda f: write_lmdb(configs, f), read_lmdb),
        ):
            folder = Path(tmp) / name.split()[0]
            folder.mkdir()
            start = time.perf_counter()
            write(folder)
            written = time.perf_counter() - start
            read(folder, order[:100])  # open, warm the page cache
            elapsed = read(folder, order)
            rows.append(
                (name, written, size_of(folder) / args.structures, 1e6 * elapsed / len(order))
            )
    atoms = sum(len(c) for c in configs) / len(configs)
    print(f"{args.structures} structures ({atoms:.1f} atoms on average), {len(order)} random reads")
    print("| format | write s | bytes / structure | random read µs / structure |")
    print("|---|---|---|---|")
    for name, written, size, read_us in rows:
        print(f"| {name} | {written:.1f} | {size:.0f} | {read_us:.0f} |")


if __name__ == "__main__":
    main()
