"""Data-parallel training (torchrun, gloo): two processes with global batch B train the same
weights as one process with batch B; a run resumes on another number of processes; a rank
that dies stops the job. Plus the pieces: worlds from the environment, global batches, the loss
split over ranks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from openmace.train.distributed import World, global_batches, share, world_from_env
from openmace.train.loop import Trainer
from openmace.train.loss import LossWeights, combine, compute_loss, loss_terms
from tests.helpers import TINY_MODEL, copper_cells, make_config, molecules, write_xyz

OPTIONS = {**TINY_MODEL, "batch_size": 5, "valid_batch_size": 4}


def _args(data: Path, work: Path, epochs: int, *extra: str) -> list[str]:
    args = ["train", "--train-file", str(data), "--work-dir", str(work), "--epochs", str(epochs)]
    for key, value in OPTIONS.items():
        value = ",".join(map(str, value)) if isinstance(value, list) else value
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args + ["--quiet", "--seed", "7", "--e0s", "average", "--threads", "1", *extra]


def _run(args: list[str], processes: int, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    if processes == 1:
        command = [sys.executable, "-m", "openmace", *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            str(29500 + os.getpid() % 1000),
            "-m",
            "openmace",
            *args,
        ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _checkpoint(work: Path) -> dict:
    return torch.load(work / "checkpoints" / "model.ckpt", weights_only=True)


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """17 structures (periodic with stress, and molecules): 16 train, batches of 5 (the last
    has one structure: one rank's share is empty). One process and two, 2 epochs each."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = write_xyz(tmp / "data.xyz", molecules(14, seed=1) + copper_cells(3, seed=2))
    _run(_args(data, tmp / "one", 2), 1)
    two = _run(_args(data, tmp / "two", 2), 2)
    return tmp, data, two


def test_two_processes_train_the_weights_of_one(runs):
    tmp, _, two = runs
    one, other = _checkpoint(tmp / "one"), _checkpoint(tmp / "two")
    assert _max_difference(one["model"], other["model"]) < 1e-10
    for a, b in zip(one["ema"]["shadow"], other["ema"]["shadow"]):
        assert float((a - b).abs().max()) < 1e-10
    for a, b in zip(one["history"], other["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-10)
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-10)
    assert one["history"][-1]["epoch"] == 2
    # rank 0 alone wrote the files and the report
    assert (tmp / "two" / "model.safetensors").is_file()
    assert two.stdout.count("model: ") == 1
    assert "rank 0 of 2" in two.stderr and "rank 1" not in two.stderr


def test_a_two_process_checkpoint_resumes_in_one_process(runs):
    tmp, data, _ = runs
    for name in ("one", "two"):
        shutil.copytree(tmp / name, tmp / f"{name}-resumed")
        (tmp / f"{name}-resumed" / "model.safetensors").unlink()
        _run(_args(data, tmp / f"{name}-resumed", 3, "--resume"), 1)
    a, b = _checkpoint(tmp / "one-resumed"), _checkpoint(tmp / "two-resumed")
    assert a["epoch"] == b["epoch"] == 3
    assert _max_difference(a["model"], b["model"]) < 1e-10
    assert _max_difference(a["model"], _checkpoint(tmp / "one")["model"]) > 1e-6  # it trained


def test_a_dead_rank_stops_the_job(tmp_path):
    """Rank 1 killed (as by the out-of-memory killer) mid-training: torchrun stops rank 0 and
    fails, instead of rank 0 waiting forever in a collective."""
    data = write_xyz(tmp_path / "data.xyz", molecules(30, seed=1))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(30500 + os.getpid() % 1000), "-m", "openmace",
               *_args(data, tmp_path / "run", 1000)]  # fmt: skip
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / "checkpoints" / "model.ckpt").exists():
            assert time.time() < deadline and job.poll() is None, "training did not start"
            time.sleep(0.2)
        os.kill(_rank_pid(job.pid, 1), signal.SIGKILL)
        started = time.time()
        code = job.wait(timeout=90)
        assert code != 0
        assert time.time() - started < 90
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def _rank_pid(parent: int, rank: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().split()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[3]) == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no process of rank {rank}")


def test_worlds_from_torchrun_and_slurm():
    assert world_from_env({}) == World()
    assert world_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(1, 4, 1)
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert world_from_env(slurm) == World()  # srun of a plain job: no rendezvous address
    assert world_from_env({**slurm, "MASTER_ADDR": "node1"}) == World(3, 8, 1)


def test_global_batches_do_not_depend_on_the_world():
    sizes = np.array([3, 9, 4, 1, 12, 5, 5, 2])
    batches = global_batches(sizes, 3, seed=11)
    assert np.array_equal(np.concatenate(batches), np.random.default_rng(11).permutation(8))
    for batch in batches:  # the ranks' shares make up each global batch
        shares = [share(batch, World(r, 2)) for r in range(2)]
        assert sorted(np.concatenate(shares).tolist()) == sorted(batch.tolist())
    packed = global_batches(sizes, 3, seed=11, max_atoms=10)
    assert np.array_equal(np.concatenate(packed), np.concatenate(batches))
    for batch in packed:
        assert sizes[batch].sum() <= 10 or len(batch) == 1
    # by edges, and by both limits: the same order, every batch within each limit and closed
    # only when the next structure would not fit
    edges = np.array([30, 2, 50, 8, 10, 40, 7, 22])
    for max_atoms, max_edges in ((None, 45), (10, 45)):
        packed = global_batches(sizes, 3, 11, max_atoms, edges, max_edges)
        assert np.array_equal(np.concatenate(packed), np.concatenate(batches))
        for k, batch in enumerate(packed):
            fits = edges[batch].sum() <= max_edges and (
                max_atoms is None or sizes[batch].sum() <= max_atoms
            )
            assert fits or len(batch) == 1
            if k + 1 < len(packed):
                nxt = packed[k + 1][0]
                grown = np.append(batch, nxt)
                assert edges[grown].sum() > max_edges or (
                    max_atoms is not None and sizes[grown].sum() > max_atoms
                )
    with pytest.raises(ValueError, match="edge counts"):
        global_batches(sizes, 3, 11, None, None, 45)


def test_loss_over_shares_with_the_batch_counts_is_the_batch_loss(tmp_path):
    """Σ over ranks of (their sums / the global batch's counts) = the one-process loss."""
    data = write_xyz(tmp_path / "d.xyz", molecules(4, seed=3) + copper_cells(3, seed=4))
    trainer = Trainer(make_config(tmp_path, data, valid_fraction=0.15))
    trainer.setup()
    weights = LossWeights(1.0, 100.0, 1.0, 1.0)
    everything = list(range(len(trainer.train_set)))

    def terms(indices):
        batch = trainer.train_set.batch(indices)
        out = trainer.model(batch.graph, compute_forces=True, compute_stress=True)
        return loss_terms(out, batch, weights), (out, batch)

    whole, (out, batch) = terms(everything)
    expected, _ = compute_loss(out, batch, weights)
    shares = [terms(share(np.array(everything), World(r, 2)))[0] for r in range(2)]
    counts = {k: float(sum(s[k][1] for s in shares if k in s)) for k in whole}
    split = sum(combine(s, weights, counts) for s in shares)
    assert float(split.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)


def test_dataloader_workers_and_atom_batches_train(tmp_path):
    """DataLoader workers give the same training as reading in the process; batches by atom
    or edge count train too."""
    data = write_xyz(tmp_path / "d.xyz", molecules(12, seed=5))
    states = []
    runs = (
        ("w0", {}),
        ("w2", {"num_workers": 2}),
        ("atoms", {"batch_max_atoms": 14}),
        ("edges", {"batch_max_edges": 150}),
    )
    for name, extra in runs:
        trainer = Trainer(make_config(tmp_path / name, data, epochs=1, **extra), progress=False)
        trainer.setup()
        losses = [trainer.train_epoch()]
        states.append((losses, {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    assert states[0][0] == states[1][0]
    for key, value in states[0][1].items():
        assert torch.equal(value, states[1][1][key])
    assert states[2][0] != states[0][0] and np.isfinite(states[2][0]).all()
    assert states[3][0] != states[0][0] and np.isfinite(states[3][0]).all()
