"""Preparing a data set: ASE-readable files → HDF5 shards (:mod:`openmace.data.prepared`).

Streaming and parallel. The input is cut into units of at most ``shard_size`` structures
(an extended-XYZ file is scanned for where each frame starts, so one large file is cut too;
any other format is one unit per file, read frame by frame); worker processes each parse,
validate and summarise one unit at a time, build its neighbour lists within ``r_max`` (always
counted: ``avg_num_neighbors``; stored on request) and write its shard. Memory is bounded by a
unit, never by the data set. The per-structure summaries written into the shards carry the
statistics (:class:`openmace.data.summary.Summary`): the manifest states the whole set's
(E0 least-squares fit, ``avg_num_neighbors``, shift, scale), and training computes those of its
own split from the summaries without reading the shards again.

Nothing half-made is left under the output name: the work happens in ``OUT.partial``, each
finished unit is recorded there (``units/``), and the folder becomes ``OUT`` only when the
manifest is written. An interrupted run is resumed by running the same command again (finished
units are kept when the inputs and options are the same; otherwise ``OUT.partial`` starts over).
A run that fails on bad data removes ``OUT.partial``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from openmace.data.configurations import Configuration, Keys, configuration_from_atoms
from openmace.data.errors import DataError
from openmace.data.prepared import FORMAT, MANIFEST, VERSION, PreparedStore
from openmace.data.summary import forces_sumsq

log = logging.getLogger("openmace.data")

XYZ_SUFFIXES = (".xyz", ".extxyz")
READABLE_SUFFIXES = XYZ_SUFFIXES + (".traj", ".db", ".json", ".cif", ".vasp", ".xml", ".pdb")


@dataclass(frozen=True)
class Unit:
    """A piece of work: structures ``first .. first + count - 1`` of ``path`` (bytes
    ``start:stop`` of an extended-XYZ file; ``start == -1``: the whole file, read frame by
    frame, ``count`` unknown)."""

    number: int
    path: str
    file_number: int
    first: int
    count: int
    start: int
    stop: int


@dataclass
class PrepareOptions:
    r_max: float  # Å: the model's cutoff (the CLI's default is MACEConfig's)
    keys: Keys = field(default_factory=Keys)
    shard_size: int = 10_000
    neighbours: bool = False
    skip_invalid: bool = False
    workers: int = 1


def input_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """The files to read: each input file, and the ASE-readable files of each input folder
    (sorted by name, not recursive)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in READABLE_SUFFIXES
            )
            if not found:
                raise DataError(path, None, "folder holds no ASE-readable data files")
            files.extend(found)
        elif path.is_file():
            if path.stat().st_size == 0:
                raise DataError(path, None, "file is empty")
            files.append(path)
        else:
            raise DataError(path, None, "no such file or folder")
    return files


def xyz_frames(path: Path) -> list[int] | None:
    """Byte offset of each frame of an extended-XYZ file and the end ([frames + 1]); None if
    the file does not have the count-comment-atoms layout (then ASE reads it whole)."""
    starts = []
    with open(path, "rb") as fh:
        while True:
            offset = fh.tell()
            line = fh.readline()
            if not line:
                break
            if not line.strip():
                continue  # blank lines between or after frames
            try:
                count = int(line.split()[0])
            except ValueError:
                return None
            if count < 0:
                return None
            starts.append(offset)
            for _ in range(count + 1):
                if not fh.readline():
                    return None
        starts.append(fh.tell())
    return starts


def plan_units(files: list[Path], shard_size: int) -> list[Unit]:
    units: list[Unit] = []
    for file_number, path in enumerate(files):
        frames = xyz_frames(path) if path.suffix.lower() in XYZ_SUFFIXES else None
        if frames is None:
            units.append(Unit(len(units), str(path), file_number, 0, -1, -1, -1))
            continue
        n = len(frames) - 1
        for first in range(0, n, shard_size):
            last = min(first + shard_size, n)
            units.append(
                Unit(
                    len(units),
                    str(path),
                    file_number,
                    first,
                    last - first,
                    frames[first],
                    frames[last],
                )
            )
    return units


def _frames(unit: Unit) -> Iterator:
    import ase.io

    if unit.start < 0:
        yield from ase.io.iread(unit.path, index=":")
        return
    with open(unit.path, "rb") as fh:
        fh.seek(unit.start)
        text = fh.read(unit.stop - unit.start).decode()
    yield from ase.io.iread(io.StringIO(text), index=":", format="extxyz")


class _ShardBuilder:
    """One shard's columns, filled structure by structure, written at once."""

    def __init__(self, neighbours: bool) -> None:
        self.neighbours = neighbours
        self.rows: list[dict] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, config: Configuration, file_number: int, pairs) -> None:
        i, j, shift = pairs
        half = len(i) // 2
        self.rows.append(
            {
                "config": config,
                "file": file_number,
                "num_edges": len(i),
                "pairs": (i[:half], j[:half], shift[:half]) if self.neighbours else None,
            }
        )

    def write(self, path: Path) -> dict:
        import h5py

        configs = [r["config"] for r in self.rows]
        nan33 = np.full((3, 3), np.nan)

        def per(fn, dtype=np.float64):
            return np.array([fn(c) for c in configs], dtype=dtype)

        columns = {
            "atom_offsets": np.concatenate([[0], np.cumsum([len(c) for c in configs])]),
            "positions": np.concatenate([c.positions for c in configs]).reshape(-1, 3),
            "numbers": np.concatenate([c.atomic_numbers for c in configs]).astype(np.uint8),
            "forces": np.concatenate(
                [c.forces if c.forces is not None else np.zeros((len(c), 3)) for c in configs]
            ).reshape(-1, 3),
            "cell": per(lambda c: c.cell),
            "pbc": per(lambda c: c.pbc, bool),
            "energy": per(lambda c: np.nan if c.energy is None else c.energy),
            "stress": per(lambda c: nan33 if c.stress is None else c.stress),
            "virials": per(lambda c: nan33 if c.virials is None else c.virials),
            "charge": per(lambda c: np.nan if c.total_charge is None else c.total_charge),
            "spin": per(lambda c: np.nan if c.total_spin is None else c.total_spin),
            "has_forces": per(lambda c: c.forces is not None, bool),
            "weight": per(lambda c: c.weight),
            "source_file": np.array([r["file"] for r in self.rows], dtype=np.int32),
            "source_index": per(lambda c: c.index, np.int64),
            "num_edges": np.array([r["num_edges"] for r in self.rows], dtype=np.int64),
            "forces_sumsq": per(lambda c: forces_sumsq(c.forces)),
        }
        if self.neighbours:
            pairs = [r["pairs"] for r in self.rows]
            columns["pair_offsets"] = np.concatenate([[0], np.cumsum([len(p[0]) for p in pairs])])
            columns["pair_i"] = np.concatenate([p[0] for p in pairs]).astype(np.int32)
            columns["pair_j"] = np.concatenate([p[1] for p in pairs]).astype(np.int32)
            shifts = np.concatenate([p[2] for p in pairs]).reshape(-1, 3)
            if len(shifts) and np.abs(shifts).max() > np.iinfo(np.int16).max:
                raise DataError(path, None, "lattice shifts too large to store")
            columns["pair_shift"] = shifts.astype(np.int16)
        partial = path.with_name(path.name + ".tmp")
        with h5py.File(partial, "w") as h:
            for name, values in columns.items():
                h.create_dataset(name, data=values)
            h.create_dataset(
                "config_type",
                data=[c.config_type for c in configs],
                dtype=h5py.string_dtype(),
            )
        os.replace(partial, path)
        return {
            "name": path.name,
            "structures": len(configs),
            "atoms": int(columns["atom_offsets"][-1]),
            "sha256": _sha256(path),
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_unit(unit: Unit, options: PrepareOptions, folder: str) -> dict:
    """Parse, validate, summarise and write one unit (in a worker process); returns its
    record: shards written, structures skipped (with the problem of each)."""
    from openmace.data.graph import neighbour_list

    folder_path = Path(folder)
    shards, skipped = [], []
    builder = _ShardBuilder(options.neighbours)

    def flush() -> None:
        nonlocal builder
        if len(builder):
            name = f"shard-{unit.number:06d}-{len(shards):03d}.h5"
            shards.append(builder.write(folder_path / name))
            builder = _ShardBuilder(options.neighbours)

    index = unit.first
    frames = _frames(unit)
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as err:  # ASE raises many types for malformed frames
            raise DataError(
                unit.path, index, f"cannot read the structure: {type(err).__name__}: {err}"
            ) from err
        try:
            config = configuration_from_atoms(atoms, options.keys, unit.path, index)
            try:
                pairs = neighbour_list(config.positions, config.cell, config.pbc, options.r_max)
            except ValueError as err:
                raise DataError(unit.path, index, str(err)) from err
        except DataError as err:
            if not options.skip_invalid:
                raise
            skipped.append({"source": unit.path, "index": index, "problem": err.problem})
        else:
            builder.add(config, unit.file_number, pairs)
            if len(builder) >= options.shard_size:
                flush()
        index += 1
    flush()
    record = {"unit": unit.number, "shards": shards, "skipped": skipped, "read": index - unit.first}
    done = folder_path / "units" / f"{unit.number:06d}.json"
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, done)
    return record


def _plan_key(files: list[Path], options: PrepareOptions) -> dict:
    return {
        "files": [
            {"path": str(p), "size": p.stat().st_size, "mtime": p.stat().st_mtime_ns} for p in files
        ],
        "options": {
            k: (asdict(v) if k == "keys" else v) for k, v in vars(options).items() if k != "workers"
        },
    }


def prepare(
    inputs: list[str | os.PathLike],
    out: str | os.PathLike,
    options: PrepareOptions,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Prepare ``inputs`` (files and folders) into the folder ``out``; returns the manifest.
    ``progress(done_units, total_units)`` is called as units finish."""
    out = Path(out)
    files = input_files(inputs)
    if out.exists():
        raise DataError(out, None, "exists; choose another output folder or remove it")
    partial = out.with_name(out.name + ".partial")
    key = _plan_key(files, options)
    plan_path = partial / "plan.json"
    if partial.is_dir():
        try:
            same = json.loads(plan_path.read_text()) == json.loads(json.dumps(key))
        except (OSError, ValueError):
            same = False
        if not same:
            log.info("%s is from another run: starting over", partial)
            shutil.rmtree(partial)
    (partial / "units").mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(key))
    units = plan_units(files, options.shard_size)
    records: dict[int, dict] = {}
    for unit in units:
        done = partial / "units" / f"{unit.number:06d}.json"
        if done.is_file():
            record = json.loads(done.read_text())
            if all((partial / s["name"]).is_file() for s in record["shards"]):
                records[unit.number] = record
    if records:
        log.info("resuming: %d of %d units were done", len(records), len(units))
    todo = [u for u in units if u.number not in records]
    if progress:
        progress(len(records), len(units))
    try:
        for record in _run_units(todo, options, partial):
            records[record["unit"]] = record
            if progress:
                progress(len(records), len(units))
        manifest = _manifest(files, units, records, options, partial)
    except Exception:  # bad data: nothing to resume (an interruption keeps the shards)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    tmp = partial / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, partial / MANIFEST)
    shutil.rmtree(partial / "units")
    plan_path.unlink()
    os.replace(partial, out)
    return manifest


def _run_units(todo: list[Unit], options: PrepareOptions, folder: Path) -> Iterator[dict]:
    if options.workers <= 1 or len(todo) <= 1:
        for unit in todo:
            yield prepare_unit(unit, options, str(folder))
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no forked copy of a threaded parent
    with context.Pool(min(options.workers, len(todo))) as pool:
        args = [(u, options, str(folder)) for u in todo]
        yield from pool.imap(_prepare_star, args)


def _prepare_star(args) -> dict:
    return prepare_unit(*args)


def _manifest(files, units, records, options: PrepareOptions, folder: Path) -> dict:
    shards, skipped, read = [], [], {}
    for unit in units:
        record = records[unit.number]
        shards.extend(record["shards"])
        skipped.extend(record["skipped"])
        read[unit.file_number] = read.get(unit.file_number, 0) + record["read"]
    structures = sum(s["structures"] for s in shards)
    if not structures:
        raise DataError(files[0] if len(files) == 1 else folder, None, "no valid structures")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "r_max": options.r_max,
        "neighbours": options.neighbours,
        "keys": asdict(options.keys),
        "files": [
            {"path": str(p), "sha256": _sha256(p), "structures": read.get(k, 0)}
            for k, p in enumerate(files)
        ],
        "shards": shards,
        "structures": structures,
        "atoms": sum(s["atoms"] for s in shards),
        "skipped_count": len(skipped),
        "skipped": skipped[:1000],
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))  # to read the summaries back
    manifest["statistics"] = whole_set_statistics(PreparedStore(folder))
    return manifest


def whole_set_statistics(store: PreparedStore) -> dict:
    """The statistics of every structure in ``store`` (isolated atoms give the E0s where
    present, else the least-squares fit): for the manifest and ``openmace info``-style reports;
    training computes its own split's from the summaries."""
    from openmace.data.e0 import ISOLATED_TYPES, fit_e0s
    from openmace.data.statistics import compute_statistics

    summary = store.summary
    isolated = summary.isolated(ISOLATED_TYPES)
    rest = summary.take(np.flatnonzero(~isolated))
    elements = summary.elements()
    out: dict = {"elements": elements, "structures": len(summary)}
    if len(rest) and rest.has_energy.any():
        iso = summary.take(np.flatnonzero(isolated))
        e0s = {int(z): float(e) for z, e in zip(iso.numbers, iso.energy) if e == e}
        source = "isolated atoms"
        if not set(rest.elements()) <= set(e0s):
            e0s, source = fit_e0s(rest, rest.elements()), "least-squares fit"
        stats = compute_statistics(rest, e0s)
        out |= {
            "e0s": {str(z): v for z, v in e0s.items()},
            "e0s_source": source,
            "avg_num_neighbors": stats.avg_num_neighbors,
            "shift": stats.shift,
            "scale": stats.scale,
        }
    return out
