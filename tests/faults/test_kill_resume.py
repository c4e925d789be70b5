"""Interrupted training (SIGKILL at a random point, SIGINT) resumes to the uninterrupted result,
and no checkpoint is ever left half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from openmace import load_model
from openmace.train.checkpoint import load_checkpoint
from tests.helpers import molecules, write_xyz

ARGS = [
    "--channels",
    "4",
    "--max-L",
    "1",
    "--max-ell",
    "1",
    "--correlation",
    "2",
    "--radial-mlp",
    "8",
    "--r-max",
    "3.0",
    "--batch-size",
    "2",
    "--readout-mlp",
    "4",
    "--e0s",
    "average",
    "--seed",
    "5",
    "--quiet",
    "--name",
    "run",
]


def command(data, work, epochs, *extra):
    return [
        sys.executable,
        "-m",
        "openmace.cli.main",
        "train",
        "--train-file",
        str(data),
        "--epochs",
        str(epochs),
        "--work-dir",
        str(work),
        *ARGS,
        *extra,
    ]


def epochs_done(work) -> int:
    log = work / "run.log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def assert_same_model(a, b):
    ma, mb = load_model(a / "run.safetensors"), load_model(b / "run.safetensors")
    for (name, x), y in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.allclose(x, y, rtol=0, atol=1e-12), name
    errors_a = json.loads((a / "run.errors.json").read_text())
    errors_b = json.loads((b / "run.errors.json").read_text())
    for set_name, rows in errors_a.items():
        for row_a, row_b in zip(rows, errors_b[set_name]):
            for key, value in row_a.items():
                if isinstance(value, float):
                    assert value == pytest.approx(row_b[key], rel=1e-9), (set_name, key)


EPOCHS = 6


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Training data and the uninterrupted run every interrupted run must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    data = write_xyz(root / "train.xyz", molecules(16))
    subprocess.run(command(data, root / "run", EPOCHS), check=True, capture_output=True)
    return data, root / "run"


def assert_checkpoint_complete(work) -> dict:
    """The checkpoint is complete and readable; only temporary files may be left beside it."""
    checkpoint = work / "checkpoints" / "run.ckpt"
    state = load_checkpoint(checkpoint)
    leftovers = [p.name for p in checkpoint.parent.iterdir() if p.name != "run.ckpt"]
    assert all(name.endswith(".tmp") for name in leftovers)
    return state


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, reference_run):
    data, reference = reference_run
    epochs = EPOCHS
    work = tmp_path / "killed"
    for kill_after in (1, 3):  # two kills at different points, resuming in between
        extra = ["--resume"] if (work / "checkpoints").exists() else []
        proc = subprocess.Popen(
            command(data, work, epochs, *extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while epochs_done(work) < kill_after and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.05 * kill_after)  # land somewhere inside the next epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert assert_checkpoint_complete(work)["epoch"] >= 1
    subprocess.run(command(data, work, epochs, "--resume"), check=True, capture_output=True)
    assert_same_model(reference, work)


DIE_DURING_SAVE = """
import io, os, signal, sys
import torch
from openmace.cli.main import main

real_save, calls = torch.save, [0]

def save_then_die(obj, fh, *args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["KILL_AT_SAVE"]):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half a checkpoint
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, fh, *args, **kwargs)

torch.save = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_checkpoint_write_keeps_the_previous_one(tmp_path, reference_run):
    data, reference = reference_run
    work = tmp_path / "killed_while_saving"
    argv = command(data, work, EPOCHS)[3:]  # drop "python -m openmace.cli.main"
    env = {**os.environ, "KILL_AT_SAVE": "3"}
    done = subprocess.run(
        [sys.executable, "-c", DIE_DURING_SAVE, *argv], env=env, capture_output=True
    )
    assert done.returncode == -signal.SIGKILL
    state = assert_checkpoint_complete(work)
    assert state["epoch"] == 2  # the third write died; the second checkpoint is intact
    assert any(p.name.endswith(".tmp") for p in (work / "checkpoints").iterdir())
    subprocess.run(command(data, work, EPOCHS, "--resume"), check=True, capture_output=True)
    assert_same_model(reference, work)
    assert [p.name for p in (work / "checkpoints").iterdir()] == ["run.ckpt"]  # cleaned up


def test_sigint_stops_cleanly_and_resumes(tmp_path):
    data = write_xyz(tmp_path / "train.xyz", molecules(16))
    work = tmp_path / "interrupted"
    proc = subprocess.Popen(
        command(data, work, 40), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while epochs_done(work) < 1 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    state = load_checkpoint(work / "checkpoints" / "run.ckpt")
    assert 1 <= state["epoch"] < 40
    done = subprocess.run(
        command(data, work, state["epoch"] + 1, "--resume"), capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1].startswith("model: ")
