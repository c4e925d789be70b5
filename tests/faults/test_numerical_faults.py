"""A non-finite loss stops training before the weights change, with a clear message; the last
good checkpoint stays intact and loadable."""

from __future__ import annotations

import pytest
import torch

import openmace.train.loop as loop
from openmace.train.checkpoint import load_checkpoint
from tests.train.helpers import molecules, write_xyz
from tests.train.test_training import make_config


def test_nan_loss_stops_without_touching_weights(tmp_path, monkeypatch):
    data = write_xyz(tmp_path / "train.xyz", molecules(12))
    trainer = loop.Trainer(make_config(tmp_path, data, epochs=3), progress=False)
    trainer.setup()
    real = loop.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 8:  # after the first epoch's checkpoint
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(loop, "compute_loss", poisoned)
    with pytest.raises(loop.TrainingError, match="non-finite loss.*last good checkpoint"):
        trainer.run()
    for p in trainer.model.parameters():
        assert torch.isfinite(p).all()
    state = load_checkpoint(trainer.checkpoint_path)
    assert state["epoch"] >= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
