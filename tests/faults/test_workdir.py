"""Training work is never lost or replaced (issue 14, class 5): a lock on the run's files, no
new run over an earlier run's checkpoint or model, ``--resume`` needs its checkpoint, changed
options on resume are refused or applied for real and recorded, ``--name`` stays in the work dir.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from openmace import load_model
from openmace.cli.main import main
from openmace.train.checkpoint import WorkDirLock, WorkDirLocked, load_checkpoint
from openmace.train.config import TrainConfig
from openmace.train.loop import (
    RESUME_FREE,
    RESUME_OPTIMISATION,
    RESUME_REPORTED,
    Trainer,
    train,
)
from tests.helpers import make_config, molecules, write_xyz

SMALL = dict(max_L=0, num_interactions=1, valid_fraction=0.25, epochs=1)


def config(root, data, **overrides):
    return make_config(root, data, **{**SMALL, **overrides})


def cli_args(root, data, *extra) -> list[str]:
    """``openmace train`` flags of :func:`config` (the same run)."""
    args = [
        "train", "--train-file", data, "--work-dir", root / "run", "--channels", "4",
        "--max-L", "0", "--max-ell", "1", "--correlation", "2", "--radial-mlp", "8",
        "--r-max", "3.0", "--num-interactions", "2", "--batch-size", "4",
        "--valid-batch-size", "8", "--readout-mlp", "4", "--e0s", "average", "--seed", "7",
        "--quiet", "--valid-fraction", "0.25", "--num-interactions", "1", "--epochs", "1",
    ]  # fmt: skip
    return [str(a) for a in [*args, *extra]]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("openmace")]
    assert len(lines) == 1 and lines[0].startswith("openmace train: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_xyz(tmp_path_factory.mktemp("data") / "train.xyz", molecules(8))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished one-epoch run: its work dir holds the checkpoint and the model."""
    root = tmp_path_factory.mktemp("finished")
    train(config(root, data))
    return root / "run"


@pytest.fixture
def earlier(tmp_path, finished):
    """A copy of the finished run's work dir (tmp_path / "run")."""
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


# ---- the lock ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model", "run-2", "a.b"])
def test_a_run_whose_files_are_locked_is_refused(tmp_path, data, name):
    cfg = config(tmp_path, data, name=name)
    with WorkDirLock(cfg.run_dir, name) as lock:
        with pytest.raises(WorkDirLocked, match=f"{lock.path}.*process {os.getpid()}"):
            train(cfg)
        assert sorted(p.name for p in cfg.run_dir.iterdir()) == [f"{name}.lock"]
    assert not cfg.run_dir.exists()  # the lock made the folder and took it away again
    train(cfg)  # free again
    assert (cfg.run_dir / f"{name}.safetensors").exists()
    assert not (cfg.run_dir / f"{name}.lock").exists()


HOLDER = textwrap.dedent(
    """
    import fcntl, os, socket, sys, time
    fh = open(sys.argv[1], "a+")
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write(f"{os.getpid()} {socket.gethostname()}\\n"); fh.flush()
    print("held", flush=True)
    time.sleep(120)
    """
)


def test_lock_held_by_another_process_then_released_when_it_dies(tmp_path, data, capsys):
    work = tmp_path / "run"
    work.mkdir()
    lock = work / "model.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_error_line(main(cli_args(tmp_path, data)), capsys.readouterr().err)
        assert str(lock) in line and f"process {holder.pid}" in line and "delete" in line
        assert sorted(p.name for p in work.iterdir()) == ["model.lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.exists()  # a dead holder's file is left behind, but holds no lock
    assert main(cli_args(tmp_path, data)) == 0
    assert (work / "model.safetensors").exists() and not lock.exists()


# ---- no new run over earlier work; --resume needs its checkpoint --------------------------------

MISTYPED = ["modle", "Model", "model2", "mode", "model.ckpt"]


@pytest.mark.parametrize("name", MISTYPED)
def test_resume_with_a_mistyped_name_lists_the_checkpoints(earlier, data, capsys, name):
    before = {p: digest(p) for p in earlier.rglob("*") if p.is_file()}
    argv = cli_args(earlier.parent, data, "--name", name, "--resume", "--epochs", "2")
    line = one_error_line(main(argv), capsys.readouterr().err)
    assert f"no checkpoint {earlier / 'checkpoints' / name}.ckpt" in line
    assert "model.ckpt (--name model)" in line
    assert {p: digest(p) for p in earlier.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("situation", ["no work dir", "empty work dir", "checkpoint deleted"])
def test_resume_without_a_checkpoint_is_an_error(tmp_path, earlier, data, capsys, situation):
    root = tmp_path / "elsewhere"
    if situation == "empty work dir":
        (root / "run").mkdir(parents=True)
    elif situation == "checkpoint deleted":
        root = earlier.parent
        (earlier / "checkpoints" / "model.ckpt").unlink()
    model = root / "run" / "model.safetensors"
    before = digest(model) if model.exists() else None
    argv = cli_args(root, data, "--resume", "--epochs", "2")
    line = one_error_line(main(argv), capsys.readouterr().err)
    assert "--resume: there is no checkpoint" in line and "holds no checkpoints" in line
    if before is not None:
        assert f"{model} is a finished model" in line and digest(model) == before
    else:
        assert not (root / "run").exists() or not any((root / "run").iterdir())


@pytest.mark.parametrize(
    ("kept", "name"), [("checkpoint", "model"), ("model only", "model"), ("model only", "other")]
)
def test_an_earlier_runs_files_are_never_replaced_by_a_new_run(earlier, data, capsys, kept, name):
    if name != "model":
        for p in earlier.glob("model.*"):
            p.rename(earlier / p.name.replace("model.", f"{name}.", 1))
    if kept == "model only":
        shutil.rmtree(earlier / "checkpoints")
    before = {p: digest(p) for p in earlier.rglob("*") if p.is_file()}
    line = one_error_line(
        main(cli_args(earlier.parent, data, "--name", name)), capsys.readouterr().err
    )
    if kept == "checkpoint":
        assert f"{earlier / 'checkpoints' / name}.ckpt exists" in line and "--resume" in line
    else:
        assert f"{earlier / name}.safetensors exists" in line and "--name" in line
    assert {p: digest(p) for p in earlier.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("name", ["../x", "../../x", "a/b", "/tmp/x", "..", ".", "", "a\\b"])
def test_name_must_be_a_plain_file_name(tmp_path, data, capsys, name):
    work = tmp_path / "deep" / "run"
    argv = [*cli_args(tmp_path, data, "--name", name)]
    argv[argv.index("--work-dir") + 1] = str(work)
    line = one_error_line(main(argv), capsys.readouterr().err)
    assert "name must be a plain file name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere


def test_a_full_disk_at_a_checkpoint_names_it_and_keeps_the_previous(earlier, data, monkeypatch):
    checkpoint = earlier / "checkpoints" / "model.ckpt"
    before = digest(checkpoint)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OSError, match="previous checkpoint is unchanged") as caught:
        train(config(earlier.parent, data, epochs=2, resume=True))
    assert caught.value.filename == str(checkpoint) and caught.value.errno == errno.ENOSPC
    assert digest(checkpoint) == before
    assert [p.name for p in checkpoint.parent.iterdir()] == ["model.ckpt"]


# ---- changed options on resume ------------------------------------------------------------------


def test_every_option_has_a_resume_decision():
    """Options not listed in the three tuples are refused on resume (model, data, seed, dtype)."""
    names = {f.name for f in TrainConfig.__dataclass_fields__.values()}
    listed = [*RESUME_FREE, *RESUME_REPORTED, *RESUME_OPTIMISATION]
    assert len(listed) == len(set(listed)) and set(listed) <= names
    assert {"lr", "batch_size", "weight_decay", "scheduler_factor"} <= set(RESUME_OPTIMISATION)
    assert not {"r_max", "seed", "train_file", "dtype", "e0s", "energy_key"} & set(listed)


REFUSED = [
    ("r_max", 3.5),
    ("channels", 8),
    ("max_ell", 2),
    ("correlation", 1),
    ("num_interactions", 2),
    ("radial_mlp", [16]),
    ("seed", 8),
    ("dtype", "float32"),
    ("e0s", "{1: -1.0, 6: -2.0, 8: -3.0}"),
    ("energy_key", "other_energy"),
    ("forces_key", "other_forces"),
    ("valid_fraction", 0.5),
    ("isolated_atom_types", ["free_atom"]),
]
OPTIMISATION = [
    ("lr", 0.02),
    ("batch_size", 2),
    ("eval_interval", 2),
    ("ema_decay", 0.9),
    ("energy_weight", 2.0),
    ("forces_weight", 10.0),
    ("loss", "huber"),
    ("huber_delta", 0.1),
    ("weight_decay", 1e-4),
    ("clip_grad", 1.0),
    ("scheduler_patience", 3),
    ("scheduler_factor", 0.5),
    ("stage_two_start", 0.5),
    ("stage_two_lr", 0.005),
]


@pytest.mark.parametrize(("option", "value"), REFUSED, ids=[c[0] for c in REFUSED])
@pytest.mark.parametrize("flag", [False, True], ids=["", "apply-new-options"])
def test_changed_model_and_data_options_are_refused(earlier, data, option, value, flag):
    checkpoint = earlier / "checkpoints" / "model.ckpt"
    before = digest(checkpoint)
    cfg = config(earlier.parent, data, epochs=2, resume=True, apply_new_options=flag)
    setattr(cfg, option, value)  # as given (build_config would derive hidden_irreps first)
    if option == "channels":
        cfg.hidden_irreps = "8x0e"
    with pytest.raises(ValueError, match=f"cannot change in a resumed run.*{option}"):
        train(cfg)
    assert digest(checkpoint) == before


@pytest.mark.parametrize(("option", "value"), OPTIMISATION, ids=[c[0] for c in OPTIMISATION])
def test_changed_optimisation_options_are_refused_without_the_flag(earlier, data, option, value):
    checkpoint = earlier / "checkpoints" / "model.ckpt"
    before = digest(checkpoint)
    cfg = config(earlier.parent, data, epochs=2, resume=True, **{option: value})
    with pytest.raises(ValueError, match=f"{option} .* -> .*--apply-new-options"):
        train(cfg)
    assert digest(checkpoint) == before


APPLIED = {  # option: (new value, what in the resumed trainer shows it applied)
    "lr": (0.02, lambda t: t.optimizer.param_groups[0]["lr"]),
    "weight_decay": (1e-4, lambda t: t.optimizer.param_groups[0]["weight_decay"]),
    "scheduler_factor": (0.5, lambda t: t.scheduler.factor),
    "scheduler_patience": (3, lambda t: t.scheduler.patience),
    "ema_decay": (0.9, lambda t: t.ema.decay),
    "batch_size": (2, lambda t: t.cfg.batch_size),
}


@pytest.mark.parametrize("option", list(APPLIED))
def test_changed_optimisation_options_are_applied_and_recorded_with_the_flag(earlier, data, option):
    value, shown = APPLIED[option]
    old = load_checkpoint(earlier / "checkpoints" / "model.ckpt")
    assert old["train_config"][option] != value
    cfg = config(earlier.parent, data, epochs=2, resume=True, apply_new_options=True)
    setattr(cfg, option, value)
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    assert shown(trainer) == value  # set in the restored optimiser / scheduler / EMA
    trainer.run()
    state = load_checkpoint(earlier / "checkpoints" / "model.ckpt")
    assert state["epoch"] == 2 and state["train_config"][option] == value
    change = {"epoch": 1, "option": option, "checkpoint": old["train_config"][option]}
    assert {**change, "now": value} in state["resume_changes"]
    if option == "lr":
        assert [h["lr"] for h in state["history"]] == [0.01, 0.02]
    if option == "batch_size":  # the epoch ran with the new batches
        assert len(trainer.train_set) == 6


def test_extended_epochs_are_applied_reported_and_recorded(earlier, data, caplog):
    caplog.set_level("INFO", logger="openmace")
    result = train(config(earlier.parent, data, epochs=3, resume=True))
    assert "resuming with changed options (applied from epoch 2): epochs 1 -> 3" in caplog.text
    state = load_checkpoint(earlier / "checkpoints" / "model.ckpt")
    assert state["epoch"] == 3 and state["train_config"]["epochs"] == 3
    recorded = [{"epoch": 1, "option": "epochs", "checkpoint": 1, "now": 3}]
    assert state["resume_changes"] == recorded
    assert load_model(result.model_path).provenance["resume_changes"] == recorded


def test_changed_training_data_is_refused_moved_data_is_accepted(tmp_path, earlier, data):
    moved = shutil.copyfile(data, tmp_path / "moved.xyz")
    train(config(earlier.parent, moved, epochs=2, resume=True))  # same content, new path
    state = load_checkpoint(earlier / "checkpoints" / "model.ckpt")
    assert state["resume_changes"][0]["option"] == "train_file"
    changed = write_xyz(tmp_path / "changed.xyz", molecules(8, seed=1))
    with pytest.raises(ValueError, match="content changed since the checkpoint"):
        train(config(earlier.parent, changed, epochs=3, resume=True))
    write_xyz(moved, molecules(8, seed=1))  # the same path, new content
    with pytest.raises(ValueError, match="content changed since the checkpoint"):
        train(config(earlier.parent, moved, epochs=3, resume=True))


def test_after_stage_two_began_lr_and_stage_two_start_are_refused(tmp_path, data):
    cfg = dict(stage_two_start=0.0, stage_two_lr=0.004)
    train(config(tmp_path, data, **cfg))  # stage two from the first epoch
    for option, value in (("lr", 0.02), ("stage_two_start", 0.5)):
        with pytest.raises(ValueError, match="stage two began"):
            changed = {**cfg, option: value}
            train(config(tmp_path, data, epochs=2, resume=True, apply_new_options=True, **changed))
    trainer = Trainer(
        config(tmp_path, data, epochs=2, resume=True, apply_new_options=True, **cfg),
        progress=False,
    )
    trainer.setup()  # unchanged options: the stage-two lr of the checkpoint, not reset
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "model.ckpt")
    assert trainer.optimizer.param_groups[0]["lr"] == state["optimizer"]["param_groups"][0]["lr"]


def test_the_ema_cannot_be_switched_off_on_resume(earlier, data):
    with pytest.raises(ValueError, match="EMA cannot be switched"):
        train(config(earlier.parent, data, epochs=2, resume=True, apply_new_options=True,
                     ema_decay=0.0))  # fmt: skip
