"""A non-finite loss stops training before the weights change, with a clear message; the last
good checkpoint stays intact and loadable."""

from __future__ import annotations

import pytest
import torch

import openmace.train.loop as loop
from openmace.train.checkpoint import load_checkpoint
from tests.helpers import make_config, molecules, write_xyz


def test_nan_loss_stops_without_touching_weights(tmp_path, monkeypatch):
    data = write_xyz(tmp_path / "train.xyz", molecules(12))
    trainer = loop.Trainer(make_config(tmp_path, data, epochs=3), progress=False)
    trainer.setup()
    real = loop.combine  # the training step's loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 3:  # after the first epoch's checkpoint (3 batches of 4)
            loss = loss * float("nan")
        return loss

    monkeypatch.setattr(loop, "combine", poisoned)
    with pytest.raises(loop.TrainingError, match="non-finite loss.*last good checkpoint"):
        trainer.run()
    for p in trainer.model.parameters():
        assert torch.isfinite(p).all()
    state = load_checkpoint(trainer.checkpoint_path)
    assert state["epoch"] >= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_absurd_learning_rate_never_writes_non_finite_weights(tmp_path):
    """lr = 1e8 blows the weights up; training must stop with the clear error (or finish), and
    every checkpoint and model file it leaves must hold finite numbers only."""
    from openmace import load_model

    data = write_xyz(tmp_path / "train.xyz", molecules(12))
    trainer = loop.Trainer(make_config(tmp_path, data, epochs=4, lr=1e8), progress=False)
    trainer.setup()
    try:
        trainer.run()
    except loop.TrainingError as err:
        assert "non-finite loss" in str(err)
        if not trainer.checkpoint_path.exists():
            assert "no checkpoint was written yet" in str(err)
    if trainer.checkpoint_path.exists():
        state = load_checkpoint(trainer.checkpoint_path)
        assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    for model_file in tmp_path.rglob("*.safetensors"):
        assert all(torch.isfinite(p).all() for p in load_model(model_file).parameters())


@pytest.mark.parametrize(
    "energy,force", [("nan", "0"), ("inf", "0"), ("-1.0", "inf"), ("-1.0", "nan")]
)
def test_non_finite_labels_are_refused_before_training(tmp_path, energy, force):
    from openmace.data.configurations import read_configurations
    from openmace.data.errors import DataError

    path = tmp_path / "bad.xyz"
    header = f'Properties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy={energy} pbc="F F F"'
    path.write_text(f"2\n{header}\nH 0 0 0 0 0 0\nH 0 0 1 0 0 {force}\n")
    with pytest.raises(DataError, match=r"(?i)structure 0: .*(nan|inf|non-finite)"):
        read_configurations(path)
