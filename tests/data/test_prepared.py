"""Prepared data sets (``openmace prepare-data``): what is read back is what was parsed, bit
for bit; training from a prepared folder equals training from the file; bad structures,
interrupted runs and mismatched options."""

from __future__ import annotations

import json

import ase
import numpy as np
import pytest
import torch

from openmace.cli.main import main
from openmace.data.configurations import Keys, read_configurations
from openmace.data.dataset import GraphDataset
from openmace.data.errors import DataError
from openmace.data.prepare import PrepareOptions, plan_units, prepare, xyz_frames
from openmace.data.prepared import PreparedStore, PreparedStructures, prepared_dataset
from openmace.data.summary import Summary
from openmace.train.loop import Trainer, train
from tests.helpers import copper_cells, make_config, molecules, write_xyz


def _mixed(tmp_path, name="data.xyz"):
    frames = molecules(9, seed=1) + copper_cells(4, seed=2)
    frames[2].info["config_type"] = "special"
    frames[3].info["config_weight"] = 0.5
    frames[4].info["charge"] = 1.0
    frames[4].info["spin"] = 2.0
    del frames[5].arrays["REF_forces"]  # a structure without forces
    isolated = ase.Atoms("H", positions=[[0, 0, 0]])
    isolated.info.update(REF_energy=-13.6, config_type="IsolatedAtom")
    frames.insert(6, isolated)
    return write_xyz(tmp_path / name, frames)


def _same_config(a, b) -> None:
    for name in ("atomic_numbers", "positions", "cell", "pbc"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name in ("forces", "stress", "virials"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert np.array_equal(x, y), name
    for name in ("energy", "config_type", "weight", "source", "index"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.total_charge == b.total_charge and a.total_spin == b.total_spin


@pytest.mark.parametrize("workers", [1, 2])
def test_read_back_equals_parsed(tmp_path, workers):
    data = _mixed(tmp_path)
    options = PrepareOptions(r_max=3.0, shard_size=4, neighbours=True, workers=workers)
    manifest = prepare([data], tmp_path / "prep", options)
    parsed = read_configurations(data)
    assert manifest["structures"] == len(parsed) == 14
    assert len(manifest["shards"]) == 4  # 14 structures, 4 per shard
    store = PreparedStore(tmp_path / "prep")
    prepared = PreparedStructures(store)
    for a, b in zip(parsed, prepared):
        _same_config(a, b)
    # graphs from the stored pairs equal the ones built from the parsed structure
    built = GraphDataset(parsed, 3.0)
    lazy = prepared_dataset(prepared, 3.0)
    for g, h in zip(built.graphs, lazy.graphs):
        assert torch.equal(g.edge_index, h.edge_index)
        assert torch.equal(g.unit_shifts, h.unit_shifts)
        assert torch.equal(g.positions, h.positions)
    # the summary written with the shards is the parsed structures' summary
    a, b = built.summary, store.summary
    for name in Summary.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        assert np.array_equal(x.astype(y.dtype), y, equal_nan=x.dtype.kind == "f"), name
    assert manifest["files"][0]["structures"] == 14
    assert not (tmp_path / "prep.partial").exists()


def test_extxyz_frames_are_cut_where_they_start(tmp_path):
    data = _mixed(tmp_path)
    frames = xyz_frames(data)
    assert len(frames) == 15 and frames[-1] == data.stat().st_size
    units = plan_units([data], 5)
    assert [u.count for u in units] == [5, 5, 4]
    assert [u.first for u in units] == [0, 5, 10]


def test_training_from_prepared_equals_training_from_the_file(tmp_path):
    """Same split, statistics, E0s, batches and weights, bit for bit; with the neighbour lists
    stored and without."""
    data = _mixed(tmp_path)
    main(
        [
            "prepare-data",
            str(data),
            "-o",
            str(tmp_path / "p1"),
            "--r-max",
            "3",
            "--quiet",
            "--shard-size",
            "5",
            "--store-neighbours",
        ]
    )
    prepare([data], tmp_path / "p2", PrepareOptions(r_max=3.0, shard_size=3))
    runs = {}
    for name, source in (("file", data), ("p1", tmp_path / "p1"), ("p2", tmp_path / "p2")):
        cfg = make_config(tmp_path / name, source, epochs=2, e0s="average", valid_fraction=0.2)
        train(cfg, progress=False)
        runs[name] = torch.load(
            tmp_path / name / "run" / "checkpoints" / "model.ckpt", weights_only=True
        )
    reference = runs["file"]
    for name in ("p1", "p2"):
        state = runs[name]
        assert state["model_config"] == reference["model_config"]
        for key, value in reference["model"].items():
            assert torch.equal(value, state["model"][key]), (name, key)
        assert state["history"] == [
            {**h, "time_s": s["time_s"]} for h, s in zip(reference["history"], state["history"])
        ]


def test_isolated_atoms_of_a_prepared_set_give_the_e0s(tmp_path):
    frames = molecules(8, seed=5)
    for k, (symbol, energy) in enumerate((("H", -13.6), ("C", -1030.0), ("O", -2040.0))):
        atom = ase.Atoms(symbol, positions=[[0, 0, 0]])
        atom.info.update(REF_energy=energy, config_type="IsolatedAtom")
        frames.insert(2 * k + 1, atom)
    data = write_xyz(tmp_path / "iso.xyz", frames)
    prepare([data], tmp_path / "prep", PrepareOptions(r_max=3.0))
    cfg = make_config(tmp_path, tmp_path / "prep", e0s="isolated", epochs=1)
    from openmace.train.data_setup import load_training_data

    loaded = load_training_data(cfg)
    direct = load_training_data(make_config(tmp_path, data, e0s="isolated", epochs=1))
    assert loaded.e0s == direct.e0s and loaded.e0s[1] == -13.6
    assert len(loaded.train) == len(direct.train) and len(loaded.valid) == len(direct.valid)


def _with_bad_frame(tmp_path):
    frames = molecules(6, seed=3)
    frames[4].arrays["REF_forces"][1, 2] = np.nan
    return write_xyz(tmp_path / "bad.xyz", frames)


def test_bad_structure_names_file_and_index_or_is_skipped(tmp_path):
    data = _with_bad_frame(tmp_path)
    with pytest.raises(DataError, match=r"bad.xyz: structure 4: forces .* NaN"):
        prepare([data], tmp_path / "prep", PrepareOptions(r_max=3.0, shard_size=2, workers=2))
    assert not (tmp_path / "prep").exists() and not (tmp_path / "prep.partial").exists()
    manifest = prepare([data], tmp_path / "prep", PrepareOptions(r_max=3.0, skip_invalid=True))
    assert manifest["structures"] == 5 and manifest["skipped_count"] == 1
    assert manifest["skipped"][0]["index"] == 4 and "NaN" in manifest["skipped"][0]["problem"]
    indices = [c.index for c in PreparedStructures(PreparedStore(tmp_path / "prep"))]
    assert indices == [0, 1, 2, 3, 5]


def test_an_interrupted_run_continues_with_the_finished_shards(tmp_path, monkeypatch):
    import openmace.data.prepare as prep

    data = _mixed(tmp_path)
    options = PrepareOptions(r_max=3.0, shard_size=4)
    real, calls = prep.prepare_unit, []

    def failing(unit, opts, folder):
        calls.append(unit.number)
        if unit.number == 2:
            raise KeyboardInterrupt
        return real(unit, opts, folder)

    monkeypatch.setattr(prep, "prepare_unit", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare([data], tmp_path / "prep", options)
    assert not (tmp_path / "prep").exists()
    kept = sorted(p.name for p in (tmp_path / "prep.partial").glob("*.h5"))
    assert len(kept) == 2
    stamps = {n: (tmp_path / "prep.partial" / n).stat().st_mtime_ns for n in kept}
    calls.clear()
    monkeypatch.setattr(prep, "prepare_unit", real)
    manifest = prepare([data], tmp_path / "prep", options)
    assert manifest["structures"] == 14
    for name, stamp in stamps.items():  # not rewritten
        assert (tmp_path / "prep" / name).stat().st_mtime_ns == stamp
    for a, b in zip(
        read_configurations(data), PreparedStructures(PreparedStore(tmp_path / "prep"))
    ):
        _same_config(a, b)


def test_options_that_do_not_match_the_prepared_set_are_refused(tmp_path):
    data = _mixed(tmp_path)
    prepare([data], tmp_path / "prep", PrepareOptions(r_max=3.0))
    with pytest.raises(DataError, match="prepared with --r-max 3.*r_max is 4"):
        train(make_config(tmp_path, tmp_path / "prep", r_max=4.0, epochs=1), progress=False)
    with pytest.raises(DataError, match="label keys"):
        Trainer(make_config(tmp_path, tmp_path / "prep", energy_key="E", epochs=1)).setup()
    manifest = json.loads((tmp_path / "prep" / "dataset.json").read_text())
    assert manifest["keys"] == vars(Keys())


def test_cli_refuses_existing_output_and_output_equal_to_input(tmp_path, capsys):
    data = _mixed(tmp_path)
    assert main(["prepare-data", str(data), "-o", str(data)]) == 2
    assert "also an input" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    assert main(["prepare-data", str(data), "-o", str(tmp_path / "out")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["prepare-data", str(tmp_path / "nothing.xyz"), "-o", str(tmp_path / "x")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["prepare-data", str(data), "-o", str(tmp_path / "ok"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "14 structures" in out and "avg_num_neighbors" in out
