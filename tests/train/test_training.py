from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from openmace import load_model
from openmace.accel import for_inference
from openmace.cli.main import main
from openmace.train.config import build_config
from openmace.train.loop import Trainer, train
from tests.helpers import copper_cells, make_config, make_model, molecules, write_xyz


def test_loss_goes_down(tmp_path):
    data = write_xyz(tmp_path / "train.xyz", molecules(24))
    trainer = Trainer(make_config(tmp_path, data, epochs=6, lr=0.01), progress=False)
    trainer.setup()
    trainer.run()
    valid = [h["valid_loss"] for h in trainer.history]
    train_loss = [h["train_loss"] for h in trainer.history]
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert valid[-1] < valid[0]


def test_resume_equals_uninterrupted_run(tmp_path):
    data = write_xyz(tmp_path / "train.xyz", molecules(16))
    full = make_config(tmp_path / "a", data, epochs=3)
    one = Trainer(full, progress=False)
    one.setup()
    one.run()
    first = make_config(tmp_path / "b", data, epochs=1)
    part = Trainer(first, progress=False)
    part.setup()
    part.run()
    resumed = Trainer(make_config(tmp_path / "b", data, epochs=3, resume=True), progress=False)
    resumed.setup()
    assert resumed.epoch == 1
    resumed.run()
    for (name, a), b in zip(one.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), name
    assert [h["valid_loss"] for h in one.history] == pytest.approx(
        [h["valid_loss"] for h in resumed.history], rel=1e-12
    )


def test_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    data = write_xyz(tmp_path / "train.xyz", molecules(10))
    train(make_config(tmp_path, data, epochs=1))
    with pytest.raises(ValueError, match="--resume"):
        train(make_config(tmp_path, data, epochs=1))


def test_checkpoint_of_an_incompatible_version_is_a_clear_error(tmp_path):
    from openmace.train.checkpoint import load_checkpoint, save_checkpoint

    data = write_xyz(tmp_path / "train.xyz", molecules(10))
    result = train(make_config(tmp_path, data, epochs=1))
    path = result.model_path.parent / "checkpoints" / "model.ckpt"
    state = load_checkpoint(path)
    key = max(
        (k for k in state["model"] if ".contraction.weights." in k),
        key=lambda k: state["model"][k].shape[1],
    )
    assert state["model"][key].shape[1] > 1
    state["model"][key] = state["model"][key][:, :1]  # e.g. the format before tree weights
    save_checkpoint(state, path)
    with pytest.raises(ValueError, match="incompatible openmace version"):
        train(make_config(tmp_path, data, epochs=2, resume=True))


def test_periodic_dataset_with_stress_trains(tmp_path):
    data = write_xyz(tmp_path / "cu.xyz", copper_cells(12))
    result = train(make_config(tmp_path, data, epochs=2, stress_weight=10.0, r_max=3.0))
    rows = result.tables["train"][-1]
    assert "stress_mae" in rows and np.isfinite(rows["stress_mae"])
    model = load_model(result.model_path)
    assert model.config.atomic_numbers == [29]


def test_partial_labels(tmp_path):
    frames = molecules(12)
    for atoms in frames[::3]:
        del atoms.arrays["REF_forces"]  # some structures have no forces
    frames[1].info.pop("REF_energy")  # one has no energy
    data = write_xyz(tmp_path / "partial.xyz", frames)
    result = train(make_config(tmp_path, data, epochs=1, valid_fraction=0.25))
    assert result.model_path.exists()


def test_cli_train_writes_everything_and_prints_model_last(tmp_path, capsys):
    data = write_xyz(tmp_path / "train.xyz", molecules(14))
    test = write_xyz(tmp_path / "test.xyz", molecules(4, seed=9))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"train_file: {data}\nchannels: 4\nmax_L: 0\nmax_ell: 1\n"
        "correlation: 2\nradial_MLP: [8]\nepochs: 5\n"
    )
    work = tmp_path / "work"
    code = main(
        [
            "train",
            "--config",
            str(config),
            "--test-file",
            str(test),
            "--max_num_epochs",
            "2",
            "--work-dir",
            str(work),
            "--name",
            "tiny",
            "--quiet",
            "--e0s",
            "average",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"model: {work / 'tiny.safetensors'}"
    assert any(line.startswith("test ") for line in out)
    log = [json.loads(line) for line in (work / "tiny.log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # the flag overrode the file's epochs: 5
    for name in (
        "tiny.learning_curves.png",
        "tiny.parity.png",
        "tiny.errors.txt",
        "checkpoints/tiny.ckpt",
    ):
        assert (work / name).exists(), name
    assert load_model(work / "tiny.safetensors").provenance["files"]["train_file"]["sha256"]


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown option 'max_ellz'.*max_ell"):
        build_config({"max_ellz": 3}, {})
    with pytest.raises(ValueError, match="invalid value for epochs"):
        build_config({"train_file": "x", "epochs": "many"}, {})
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        build_config({"train_file": "x", "dtype": "float16"}, {})
    cfg = build_config({"train_file": "x", "num_channels": 32, "max_L": 2}, {"lr": "0.005"})
    assert cfg.hidden == "32x0e+32x1o+32x2e" and cfg.lr == 0.005


def test_stage_two_and_early_stopping(tmp_path):
    data = write_xyz(tmp_path / "train.xyz", molecules(12))
    trainer = Trainer(
        make_config(tmp_path / "a", data, epochs=4, stage_two_start=0.5, stage_two_lr=0.002),
        progress=False,
    )
    trainer.setup()
    trainer.run()
    assert [h["stage"] for h in trainer.history] == [1, 1, 2, 2]
    assert trainer.history[-1]["lr"] == pytest.approx(0.002)
    stopper = Trainer(
        make_config(tmp_path / "b", data, epochs=30, patience=0, lr=5.0), progress=False
    )
    stopper.setup()
    assert stopper.run() < 30  # a huge lr stops improving quickly; patience 0 stops then


def test_virials_and_huber_loss_train(tmp_path):
    frames = copper_cells(8)
    for atoms in frames:
        stress = atoms.info.pop("REF_stress").reshape(3, 3)
        atoms.info["REF_virials"] = (-stress * atoms.get_volume()).reshape(-1)
    data = write_xyz(tmp_path / "cu.xyz", frames)
    result = train(make_config(tmp_path, data, epochs=1, loss="huber", virials_weight=1.0))
    assert result.model_path.exists()


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    data = write_xyz(tmp_path / "train.xyz", molecules(10))
    models = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = train(make_config(tmp_path / name, data, epochs=2, seed=seed))
        models.append(load_model(result.model_path).state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert not all(torch.equal(models[0][k], models[2][k]) for k in models[0])


def test_evaluation_runs_on_a_frozen_copy_and_leaves_the_model_alone():
    """Evaluation runs the inference operators on a frozen copy (for_inference): the trained
    model's flags, including a weight the user froze, stay as they were; the copy shares no
    tensor with it and has the same state dict."""
    model = make_model()
    first = next(model.parameters())
    first.requires_grad_(False)  # a weight the user froze stays frozen
    before = [p.requires_grad for p in model.parameters()]
    frozen = for_inference(model)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert [p.requires_grad for p in model.parameters()] == before
    state, frozen_state = model.state_dict(), frozen.state_dict()
    assert list(state) == list(frozen_state)
    assert all(torch.equal(state[k], frozen_state[k]) for k in state)
    assert all(state[k].data_ptr() != frozen_state[k].data_ptr() for k in state)


@pytest.mark.parametrize(
    "options",
    [
        dict(interaction="density", interaction_first="standard", distance_transform="agnesi"),
        dict(
            interaction="nonlinear",
            distance_transform="soft",
            apply_cutoff=False,
            edge_irreps="3x0e+3x1o",
            edge_irreps_first=True,
            agnostic_product=True,
            readout_bias=True,
            pair_repulsion=True,
        ),
    ],
    ids=["density-agnesi", "nonlinear-all-options"],
)
def test_foundation_model_options_train(tmp_path, options):
    """The blocks of the foundation models are training options too: the loss goes down and
    the saved model gives the trained model's numbers through the inference path."""
    from openmace.data.graph import batch_atoms

    data = write_xyz(tmp_path / "train.xyz", molecules(16))
    config = make_config(tmp_path, data, epochs=4, lr=0.01, **options)
    trainer = Trainer(config, progress=False)
    trainer.setup()
    trainer.run()
    losses = [h["train_loss"] for h in trainer.history]
    assert losses[-1] < losses[0]
    result = trainer.finish()
    saved = load_model(result.model_path)
    for name, value in options.items():
        assert getattr(saved.config, name) == value
    graph = batch_atoms(molecules(1, seed=3), saved.config.r_max)
    expected = trainer.model.to(torch.float64)(graph)["energy"].detach()
    got = for_inference(saved)(graph)["energy"]
    assert torch.allclose(got, expected, rtol=0, atol=1e-9)
