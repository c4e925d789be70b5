"""Outputs never destroy data: an output path that names an input (under any spelling) is
refused before any work, an existing output is replaced only with ``--overwrite``, a write that
fails (a full disk) leaves no partial file and the previous file intact, and labels that ASE
holds in a SinglePointCalculator survive ``eval``."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import ase.build
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openmace import save_model
from openmace.cli.eval import keep_calculator_labels
from openmace.cli.main import main
from openmace.io import files
from openmace.io.files import OutputPathError, OutputWriteError, atomic_open, check_outputs
from tests.helpers import copper_cells, make_model, molecule, molecules, write_xyz

SPELLINGS = [
    "same",
    "relative",
    "dotdot",
    "double-slash",
    "symlink",
    "hardlink",
    "symlinked-folder",
]


def spell(target: Path, how: str) -> str:
    """Another name for ``target`` (the test's working directory is its folder)."""
    folder = target.parent
    if how == "same":
        return str(target)
    if how == "relative":
        return target.name
    if how == "dotdot":
        (folder / "sub").mkdir(exist_ok=True)
        return str(folder / "sub" / ".." / target.name)
    if how == "double-slash":
        return f"{folder}//{target.name}"
    if how == "symlink":
        link = folder / f"link-{target.name}"
        link.symlink_to(target)
        return str(link)
    if how == "hardlink":
        link = folder / f"hard-{target.name}"
        os.link(target, link)
        return str(link)
    if how == "symlinked-folder":
        alias = folder / "alias"
        alias.symlink_to(folder, target_is_directory=True)
        return str(alias / target.name)
    raise AssertionError(how)


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink()
    }


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"openmace {command}: error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    path = save_model(make_model(), tmp_path_factory.mktemp("model") / "m.safetensors")
    return path.read_bytes()


# (command, the input the output collides with, the colliding output)
COLLISIONS = (
    [("eval", role, "--output") for role in ("--configs", "--model")]
    + [("export", "MODEL", "-o")]
    + [
        ("md", role, out)
        for role in ("--structure", "--model")
        for out in ("--trajectory", "--log")
    ]
    + [("md", "--trajectory", "--log")]
)
COLLISION_CASES = [(*c, how) for c in COLLISIONS for how in SPELLINGS]


@pytest.mark.parametrize("command,victim,flag,how", COLLISION_CASES)
def test_an_output_never_replaces_an_input(
    tmp_path, monkeypatch, capsys, model_bytes, command, victim, flag, how
):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.safetensors"
    model.write_bytes(model_bytes)
    structures = write_xyz(tmp_path / "in.xyz", [molecule()])
    paths = {
        "--model": model,
        "MODEL": model,
        "--configs": structures,
        "--structure": structures,
        "--trajectory": tmp_path / "md.traj",
    }
    if victim == "--trajectory":
        paths["--trajectory"].write_bytes(b"an earlier trajectory")
    out = spell(paths[victim], how)
    before = digest(tmp_path)
    if command == "eval":
        argv = ["eval", "--model", str(model), "--configs", str(structures), "--output", out]
    elif command == "export":
        argv = ["export", "--torchscript", str(model), "-o", out]
    else:
        other = {"--trajectory": str(paths["--trajectory"]), "--log": str(tmp_path / "md.csv")}
        other[flag] = out
        argv = ["md", "--model", str(model), "--structure", str(structures), "--steps", "2"]
        argv += ["--trajectory", other["--trajectory"], "--log", other["--log"]]
    assert main([*argv, "--overwrite"]) == 2
    line = one_error_line(capsys.readouterr().err, command)
    assert "same file" in line and flag in line
    assert digest(tmp_path) == before  # every input byte for byte, nothing new written


EXISTING = [
    ("eval", "--output", "out.xyz"),
    ("export", "-o", "m.pt"),
    ("md", "--trajectory", "md.traj"),
    ("md", "--log", "md.csv"),
]


@pytest.mark.parametrize("command,flag,name", EXISTING)
def test_an_existing_output_needs_overwrite(tmp_path, capsys, model_bytes, command, flag, name):
    model = tmp_path / "m.safetensors"
    model.write_bytes(model_bytes)
    structures = write_xyz(tmp_path / "in.xyz", [molecule()])
    (tmp_path / name).write_text("results of an earlier run\n")
    before = digest(tmp_path)
    if command == "eval":
        argv = ["eval", "--model", str(model), "--configs", str(structures)]
    elif command == "export":
        argv = ["export", "--torchscript", str(model)]
    else:
        argv = ["md", "--model", str(model), "--structure", str(structures), "--steps", "2"]
        argv += ["--trajectory", str(tmp_path / "md.traj"), "--log", str(tmp_path / "md.csv")]
    argv += [flag, str(tmp_path / name)]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, command)
    assert "exists" in line and "--overwrite" in line
    assert digest(tmp_path) == before


def test_eval_overwrite_replaces_and_a_rerun_without_it_is_refused(tmp_path, capsys, model_bytes):
    model = tmp_path / "m.safetensors"
    model.write_bytes(model_bytes)
    structures = write_xyz(tmp_path / "in.xyz", molecules(2))
    out = tmp_path / "out.xyz"
    out.write_text("old\n")
    argv = ["eval", "--model", str(model), "--configs", str(structures), "--output", str(out)]
    assert main([*argv, "--quiet", "--overwrite"]) == 0
    assert len(read(out, ":")) == 2 and (tmp_path / "out.parity.png").exists()
    capsys.readouterr()
    before = digest(tmp_path)
    assert main([*argv, "--quiet"]) == 2  # the second run would replace the first's results
    assert "--overwrite" in one_error_line(capsys.readouterr().err, "eval")
    assert digest(tmp_path) == before


@pytest.mark.parametrize("size", [0, -1, -16])
def test_eval_batch_size_must_be_positive(tmp_path, capsys, model_bytes, size):
    model = tmp_path / "m.safetensors"
    model.write_bytes(model_bytes)
    structures = write_xyz(tmp_path / "in.xyz", [molecule()])
    out = tmp_path / "out.xyz"
    argv = ["eval", "--model", str(model), "--configs", str(structures), "--output", str(out)]
    assert main([*argv, "--batch-size", str(size)]) == 2
    assert "--batch-size" in one_error_line(capsys.readouterr().err, "eval")
    assert not out.exists()


# --- full disk ---------------------------------------------------------------------------


class FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes (or characters) are written
    (or are interrupted there, as by Ctrl-C)."""

    def __init__(self, fh, room: int, interrupt: bool = False) -> None:
        self.fh, self.room, self.written, self.interrupt = fh, room, 0, interrupt

    def write(self, data):
        if self.written + len(data) > self.room:
            self.fh.write(data[: max(self.room - self.written, 0)])
            self.written = self.room
            if self.interrupt:
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def full_disk(monkeypatch, room: int, interrupt: bool = False) -> None:
    real = files._open
    monkeypatch.setattr(
        files, "_open", lambda path, mode: FullDisk(real(path, mode), room, interrupt)
    )


def failing(name: str):
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC if name == "fsync" else errno.EIO, f"simulated {name} failure")

    return fail


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=st.binary(max_size=3000),
    room=st.integers(0, 4000),
    existing=st.one_of(st.none(), st.binary(max_size=200)),
    stage=st.sampled_from(["write", "fsync", "replace"]),
)
def test_atomic_write_leaves_old_file_or_none(tmp_path, content, room, existing, stage):
    folder = tmp_path / f"case-{os.urandom(4).hex()}"
    folder.mkdir()
    target = folder / "out.bin"
    if existing is not None:
        target.write_bytes(existing)
    fails = stage != "write" or room < len(content)
    with pytest.MonkeyPatch.context() as mp:
        if stage == "write":
            full_disk(mp, room)
        else:
            mp.setattr(os, stage, failing(stage))
        if fails:
            with pytest.raises(OutputWriteError, match="cannot write .*out.bin"):
                with atomic_open(target, "wb") as fh:
                    fh.write(content)
        else:
            with atomic_open(target, "wb") as fh:
                fh.write(content)
    assert leftovers(folder) == []
    if fails:
        assert target.read_bytes() == existing if existing is not None else not target.exists()
    else:
        assert target.read_bytes() == content


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("point", ["room=0", "room=1", "room=700", "fsync", "replace", "interrupt"])
def test_eval_on_a_full_disk_keeps_input_and_old_output(
    tmp_path, monkeypatch, capsys, model_bytes, point, existing
):
    model = tmp_path / "m.safetensors"
    model.write_bytes(model_bytes)
    structures = write_xyz(tmp_path / "in.xyz", [molecule(0), molecule(1)])
    out = tmp_path / "out.xyz"
    if existing:
        write(out, [molecule(2)], format="extxyz")
    before = digest(tmp_path)
    if point.startswith("room="):
        full_disk(monkeypatch, int(point[5:]))
    elif point == "interrupt":
        full_disk(monkeypatch, 500, interrupt=True)
    else:
        real_open = files._open

        def open_then_fail_at(path, mode):
            monkeypatch.setattr(os, point, failing(point))  # only after the model is loaded
            return real_open(path, mode)

        monkeypatch.setattr(files, "_open", open_then_fail_at)
    argv = ["eval", "--model", str(model), "--configs", str(structures), "--output", str(out)]
    code = main([*argv, "--quiet", "--overwrite"])
    monkeypatch.undo()
    line = one_error_line(capsys.readouterr().err, "eval")
    if point == "interrupt":
        assert code == 130 and "interrupted by SIGINT" in line and "only when complete" in line
    else:
        assert code == 2 and "cannot write" in line and str(out) in line
    assert digest(tmp_path) == before  # input and old output intact, no partial file
    assert leftovers(tmp_path) == []
    if existing:
        assert len(read(out, ":")) == 1


def test_export_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch, capsys, model_bytes):
    model = tmp_path / "m.safetensors"
    model.write_bytes(model_bytes)
    target = tmp_path / "m.pt"
    target.write_bytes(b"an earlier export")
    full_disk(monkeypatch, 1000)
    argv = ["export", "--torchscript", str(model), "-o", str(target), "--overwrite"]
    assert main(argv) == 2
    assert "cannot write" in one_error_line(capsys.readouterr().err, "export")
    assert target.read_bytes() == b"an earlier export" and leftovers(tmp_path) == []


# --- labels held by ASE's SinglePointCalculator -------------------------------------------

LABELS = ["energy", "free_energy", "forces", "energies", "stress", "charges", "dipole", "magmom"]


def with_labels(atoms: ase.Atoms, kinds: list[str], rng: np.random.Generator) -> ase.Atoms:
    n = len(atoms)
    values = {
        "energy": float(rng.normal()),
        "free_energy": float(rng.normal()),
        "forces": rng.normal(size=(n, 3)),
        "energies": rng.normal(size=n),
        "stress": rng.normal(size=6),
        "charges": rng.normal(size=n),
        "dipole": rng.normal(size=3),
        "magmom": float(rng.normal()),
    }
    atoms.calc = SinglePointCalculator(atoms, **{k: values[k] for k in kinds})
    return atoms


def label_cases(count: int, seed: int) -> list[tuple[ase.Atoms, list[str]]]:
    """Molecules and copper cells, each with a random non-empty set of plain ASE labels
    (stress only on periodic cells)."""
    rng = np.random.default_rng(seed)
    structures = [molecule(seed=k) for k in range(count // 2)]
    structures += copper_cells(count - count // 2, seed=seed)
    cases = []
    for atoms in structures:
        atoms = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        allowed = [k for k in LABELS if k != "stress" or atoms.pbc.all()]
        size = int(rng.integers(1, len(allowed)))
        kinds = [str(k) for k in rng.choice(allowed, size=size, replace=False)]
        cases.append((with_labels(atoms, kinds, rng), kinds))
    return cases


def assert_labels_kept(original: ase.Atoms, kinds: list[str], written: ase.Atoms) -> None:
    held = {**written.info, **written.arrays}
    held.update(getattr(written.calc, "results", None) or {})
    for kind in kinds:
        assert kind in held, (kind, sorted(held))
        np.testing.assert_allclose(
            np.asarray(held[kind], dtype=float).reshape(-1),
            np.asarray(original.calc.results[kind], dtype=float).reshape(-1),
            rtol=1e-9,
            atol=1e-7,  # extended XYZ writes per-atom columns with 8 decimals
            err_msg=kind,
        )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_calculator_labels_become_keys(seed):
    for atoms, kinds in label_cases(4, seed):
        kept = atoms.copy()
        kept.calc = SinglePointCalculator(kept, **atoms.calc.results)
        keep_calculator_labels(kept)
        assert kept.calc is None
        assert_labels_kept(atoms, kinds, kept)


def test_eval_keeps_single_point_labels(tmp_path, capsys, model_bytes):
    model = tmp_path / "m.safetensors"
    model.write_bytes(model_bytes)
    cases = label_cases(12, seed=3)
    structures = tmp_path / "in.xyz"
    write(structures, [atoms for atoms, _ in cases], format="extxyz")
    out = tmp_path / "out.xyz"
    argv = ["eval", "--model", str(model), "--configs", str(structures), "--output", str(out)]
    argv += ["--energy-key", "energy", "--forces-key", "forces", "--stress-key", "stress"]
    assert main([*argv, "--quiet", "--batch-size", "5"]) == 0
    written = read(out, ":")
    assert len(written) == len(cases)
    for (atoms, kinds), frame in zip(cases, written):
        assert_labels_kept(atoms, kinds, frame)
        assert "MACE_energy" in frame.info and frame.arrays["MACE_forces"].shape == (len(frame), 3)


def test_eval_refuses_a_prefix_that_replaces_labels(tmp_path, capsys, model_bytes):
    model = tmp_path / "m.safetensors"
    model.write_bytes(model_bytes)
    structures = write_xyz(tmp_path / "in.xyz", molecules(2))  # REF_energy, REF_forces
    out = tmp_path / "out.xyz"
    argv = ["eval", "--model", str(model), "--configs", str(structures), "--output", str(out)]
    assert main([*argv, "--prefix", "REF_"]) == 2
    assert "--prefix" in one_error_line(capsys.readouterr().err, "eval")
    assert not out.exists()


# --- the checks themselves, on generated path sets ------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    how=st.sampled_from(SPELLINGS),
    n_inputs=st.integers(1, 3),
    pick=st.integers(0, 2),
    overwrite=st.booleans(),
)
def test_check_outputs_finds_the_input_under_any_name(tmp_path, how, n_inputs, pick, overwrite):
    folder = tmp_path / f"case-{os.urandom(4).hex()}"
    folder.mkdir()
    inputs = {f"--in{k}": folder / f"input{k}.dat" for k in range(n_inputs)}
    for path in inputs.values():
        path.write_text("data")
    victim = list(inputs.values())[pick % n_inputs]
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        out = spell(victim, how)
        with pytest.raises(OutputPathError, match="same file"):
            check_outputs({"--out": out}, inputs, overwrite=overwrite)
        check_outputs({"--out": folder / "fresh.dat"}, inputs, overwrite=overwrite)  # accepted
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("bad", ["missing-folder", "folder", "file-as-folder"])
def test_check_outputs_refuses_paths_that_cannot_be_written(tmp_path, bad):
    (tmp_path / "a-file").write_text("x")
    path = {
        "missing-folder": tmp_path / "no" / "such" / "out.xyz",
        "folder": tmp_path,
        "file-as-folder": tmp_path / "a-file" / "out.xyz",
    }[bad]
    with pytest.raises(OutputPathError, match="--out"):
        check_outputs({"--out": path}, {}, overwrite=True)
