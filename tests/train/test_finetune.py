"""Fine-tuning a foundation model (openmace.train.finetune): E0s, freezing, elements, replay
heads, resume and the errors of bad options."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch

from openmace import load_model
from openmace.accel import for_inference
from openmace.data.errors import DataError
from openmace.data.graph import collate, graph_from_atoms
from openmace.io.model_file import save_model
from openmace.model.elements import keep_elements
from openmace.train.config import build_config
from openmace.train.finetune import farthest_points, frozen_layers
from openmace.train.loop import Trainer, train
from tests.helpers import TINY_MODEL, copper_cells, labelled, make_config, molecules, write_xyz

OFFSETS = {1: 0.3, 6: -1.2, 8: 0.7}  # eV per atom of each element: "another level of theory"
NAMES = ("H2O", "CH3OH", "CH4", "CO2", "C2H6", "H2CO")  # compositions that fix every E0


def varied(n: int, seed: int = 0) -> list[ase.Atoms]:
    """``n`` rattled H/C/O molecules of six compositions, labelled with EMT."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = ase.build.molecule(NAMES[k % len(NAMES)])
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        out.append(labelled(atoms))
    return out


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    """A tiny model trained for two epochs on H/C/O molecules (plus Cu, an element the
    fine-tuning data below lacks), saved as an openmace file."""
    tmp = tmp_path_factory.mktemp("foundation")
    frames = varied(20, seed=1) + copper_cells(4)
    data = write_xyz(tmp / "pretrain.xyz", frames)
    result = train(make_config(tmp, data, epochs=2, stress_weight=0.0, valid_fraction=0.2))
    return result.model_path


def predictions(model, frames):
    model = for_inference(model)
    graph = collate([graph_from_atoms(a, model.config.r_max) for a in frames])
    out = model(graph, compute_forces=True)
    return out["energy"].detach(), out["forces"].detach()


def relabelled(model_path, frames, offsets=None):
    """``frames`` labelled with the model's own predictions, plus per-element offsets."""
    model = load_model(model_path)
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        energy, forces = predictions(model, [atoms])
        shift = sum((offsets or {}).get(int(z), 0.0) for z in atoms.numbers)
        atoms.info["REF_energy"] = float(energy[0]) + shift
        atoms.arrays["REF_forces"] = forces.numpy()
        out.append(atoms)
    return out


def fine_tune_config(tmp, data, foundation, **overrides):
    return make_config(tmp, data, foundation_model=str(foundation), **overrides)


def test_estimated_e0s_recover_known_offsets(tmp_path, foundation):
    frames = relabelled(foundation, varied(12, seed=3), OFFSETS)
    data = write_xyz(tmp_path / "ft.xyz", frames)
    trainer = Trainer(fine_tune_config(tmp_path, data, foundation, e0s="estimated"), False)
    trainer.setup()
    base = load_model(foundation).config
    tuned = trainer.model.config
    for z, offset in OFFSETS.items():
        before = base.atomic_energies[base.atomic_numbers.index(z)]
        after = tuned.atomic_energies[tuned.atomic_numbers.index(z)]
        assert after - before == pytest.approx(offset, abs=1e-6), z  # xyz precision
    # elements the data lacks keep the foundation's E0
    cu = base.atomic_numbers.index(29)
    assert tuned.atomic_energies[cu] == base.atomic_energies[cu]
    # the fine-tune starts with the labels' energies
    energy, _ = predictions(trainer.model, frames)
    labels = torch.tensor([a.info["REF_energy"] for a in frames], dtype=energy.dtype)
    assert torch.allclose(energy, labels, atol=1e-5, rtol=0)


def test_e0s_foundation_and_the_starting_offset_warning(tmp_path, foundation, caplog):
    frames = relabelled(foundation, varied(8, seed=3), OFFSETS)
    data = write_xyz(tmp_path / "ft.xyz", frames)
    with caplog.at_level("INFO", logger="openmace.train"):
        trainer = Trainer(fine_tune_config(tmp_path, data, foundation, e0s="foundation"), False)
        trainer.setup()
    assert trainer.model.config.atomic_energies == load_model(foundation).config.atomic_energies
    offsets = next(r.message for r in caplog.records if "starting offset" in r.message)
    for symbol, value in (("H", 0.3), ("C", -1.2), ("O", 0.7)):
        assert f"{symbol} {value:+.3f}" in offsets
    warning = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "C, O" in warning[0].message  # |offset| > 0.4 eV/atom


def test_freezing_leaves_frozen_weights_bit_identical(tmp_path, foundation):
    data = write_xyz(tmp_path / "ft.xyz", molecules(10, seed=4))
    result = train(fine_tune_config(tmp_path, data, foundation, freeze=1, epochs=2, lr=0.01))
    before = load_model(foundation).state_dict()
    after = load_model(result.model_path).state_dict()
    frozen = [k for k in before if k.startswith(("embedding", "interactions.0.", "products.0."))]
    frozen += [k for k in before if k.startswith("readouts.0.")]
    assert frozen
    for name in frozen:
        assert torch.equal(before[name], after[name]), name
    trained = [k for k in before if k.startswith(("interactions.1.", "products.1."))]
    assert any(not torch.equal(before[k], after[k]) for k in trained)


def test_freeze_counts_layers_from_either_end():
    assert frozen_layers(None, 2) == 0
    assert frozen_layers(1, 2) == 1 and frozen_layers(-1, 2) == 1 and frozen_layers(-2, 2) == 0
    with pytest.raises(ValueError, match="2 layers"):
        frozen_layers(3, 2)


def test_learning_rate_factors_set_each_group(tmp_path, foundation):
    data = write_xyz(tmp_path / "ft.xyz", molecules(6, seed=4))
    cfg = fine_tune_config(tmp_path, data, foundation, lr=0.002, lr_readouts=5.0, lr_embedding=0)
    trainer = Trainer(cfg, False)
    trainer.setup()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            expected = 0.002 * (5.0 if name.startswith("readouts") else 1.0)
            expected = 0.0 if name.startswith("embedding") else expected
            assert group["lr"] == pytest.approx(expected), name


def test_keeping_the_data_elements_keeps_the_predictions(tmp_path, foundation):
    frames = molecules(6, seed=5)
    data = write_xyz(tmp_path / "ft.xyz", frames)
    cfg = fine_tune_config(tmp_path, data, foundation, foundation_elements="data", e0s="foundation")
    trainer = Trainer(cfg, False)
    trainer.setup()
    assert trainer.model.config.atomic_numbers == [1, 6, 8]
    e_small, f_small = predictions(trainer.model, frames)
    e_full, f_full = predictions(load_model(foundation), frames)
    assert torch.allclose(e_small, e_full, atol=1e-10, rtol=0)
    assert torch.allclose(f_small, f_full, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "options",
    [{}, {"interaction": "density"}, {"interaction": "nonlinear", "agnostic_product": True}],
)
def test_keep_elements_is_exact_for_every_block(options):
    from tests.helpers import make_model, molecule

    model = make_model(seed=2, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    small = keep_elements(model, [8, 1, 6])
    assert small.config.atomic_numbers == [1, 6, 8]
    frames = [molecule(1), molecule(2)]
    e_a, f_a = predictions(model, frames)
    e_b, f_b = predictions(small, frames)
    assert torch.allclose(e_a, e_b, atol=1e-11, rtol=0)
    assert torch.allclose(f_a, f_b, atol=1e-11, rtol=0)
    with pytest.raises(ValueError, match="no element.*Fe"):
        keep_elements(model, [26])


def test_multihead_fine_tune_keeps_the_foundation_head(tmp_path, foundation):
    """The foundation's head stays close to the foundation on its replay data, while naive
    fine-tuning with the same settings moves it further."""
    target = relabelled(foundation, varied(12, seed=6), OFFSETS)
    for atoms in target:  # a "different level of theory": stiffer forces too
        atoms.arrays["REF_forces"] = 1.5 * atoms.arrays["REF_forces"]
    data = write_xyz(tmp_path / "ft.xyz", target)
    replay_frames = varied(16, seed=7)
    replay = write_xyz(tmp_path / "replay.xyz", replay_frames)
    common = dict(epochs=4, lr=0.01, e0s="estimated", ema_decay=0.0)
    naive = train(fine_tune_config(tmp_path / "naive", data, foundation, **common))
    multi = train(
        fine_tune_config(
            tmp_path / "multi",
            data,
            foundation,
            multihead_finetuning=True,
            pt_train_file=str(replay),
            pseudolabel_replay=True,
            num_samples_pt=10,
            subselect_pt="fps",
            **common,
        )
    )
    model = load_model(multi.model_path)
    assert model.config.heads == ["pt_head", "default"]
    _, reference = predictions(load_model(foundation), replay_frames)

    def drift(model_path, head=None):
        """Mean |ΔF| (eV/Å) from the foundation's forces on the replay structures."""
        tuned = load_model(model_path)
        if head is not None:
            from openmace.model.heads import single_head

            tuned = single_head(tuned, head)
        _, forces = predictions(tuned, replay_frames)
        return float((forces - reference).abs().mean())

    assert drift(multi.model_path, "pt_head") < 0.5 * drift(naive.model_path)
    assert {"pt_train", "pt_valid"} <= set(multi.tables)


def test_resume_of_a_multihead_fine_tune_equals_an_uninterrupted_run(tmp_path, foundation):
    data = write_xyz(tmp_path / "ft.xyz", molecules(8, seed=8))
    replay = write_xyz(tmp_path / "replay.xyz", molecules(8, seed=9))
    options = dict(
        foundation_model=str(foundation),
        multihead_finetuning=True,
        pt_train_file=str(replay),
        num_samples_pt=6,
        freeze=-1,
    )
    one = Trainer(make_config(tmp_path / "a", data, epochs=3, **options), False)
    one.setup()
    one.run()
    part = Trainer(make_config(tmp_path / "b", data, epochs=1, **options), False)
    part.setup()
    part.run()
    resumed = Trainer(make_config(tmp_path / "b", data, epochs=3, resume=True, **options), False)
    resumed.setup()
    assert resumed.epoch == 1
    resumed.run()
    for (name, a), b in zip(one.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["valid_loss"] for h in one.history] == [h["valid_loss"] for h in resumed.history]


def test_conflicting_model_options_are_named(tmp_path, foundation):
    data = write_xyz(tmp_path / "ft.xyz", molecules(6))
    with pytest.raises(ValueError, match=r"hidden_irreps '8x0e\+8x1o'.*foundation: '4x0e\+4x1o'"):
        Trainer(fine_tune_config(tmp_path, data, foundation, channels=8), False).setup()
    with pytest.raises(ValueError, match="r_max 4.5.*foundation: 3.0"):
        Trainer(fine_tune_config(tmp_path, data, foundation, r_max=4.5), False).setup()
    # given explicitly, a value equal to plain training's default conflicts too
    with pytest.raises(ValueError, match="r_max 5.0.*foundation: 3.0"):
        Trainer(fine_tune_config(tmp_path, data, foundation, r_max=5.0), False).setup()


def test_an_element_the_foundation_lacks_is_one_clear_error(tmp_path, foundation):
    names = ("H2O", "NH3", "CH4", "NH3", "H2O", "CH3OH")
    frames = [labelled(ase.build.molecule(name)) for name in names]
    data = write_xyz(tmp_path / "ft.xyz", frames)
    with pytest.raises(DataError, match=r"ft.xyz.*element\(s\) N in the data.*foundation"):
        Trainer(fine_tune_config(tmp_path, data, foundation, valid_fraction=0.2), False).setup()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"freeze": 1}, "freeze needs --foundation-model"),
        ({"e0s": "estimated"}, "e0s estimated needs --foundation-model"),
        ({"multihead_finetuning": True}, "multihead_finetuning needs --foundation-model"),
        ({"pt_train_file": "x.xyz"}, "pt_train_file needs --multihead-finetuning"),
        ({"subselect_pt": "best"}, "subselect_pt must be random or fps"),
    ],
)
def test_fine_tuning_flags_without_a_foundation_are_refused(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        build_config({}, dict(TINY_MODEL, train_file="x.xyz", **options))


def test_fine_tuning_defaults_are_applied_only_where_not_given():
    cfg = build_config({}, {"train_file": "x.xyz", "foundation_model": "f.model"})
    assert cfg.lr == 1e-3 and cfg.e0s == "estimated" and cfg.loss == "huber"
    assert cfg.fine_tuning_defaults == {
        "lr": 1e-3,
        "e0s": "estimated",
        "loss": "huber",
        "huber_delta": 0.01,
    }
    cfg = build_config({"lr": 0.01}, {"train_file": "x.xyz", "foundation_model": "f.model"})
    assert cfg.lr == 0.01 and "lr" not in cfg.fine_tuning_defaults
    assert build_config({}, {"train_file": "x.xyz"}).lr == 0.01


def test_farthest_point_sampling_takes_the_extremes_first():
    points = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [0.0, 10.0], [5.0, 5.0], [0.2, 0.1]])
    chosen = farthest_points(points, 3, seed=0)
    assert len(set(chosen)) == 3
    assert {2, 3} <= set(chosen) or chosen[0] in (2, 3)
    assert farthest_points(points, 3, seed=0) == chosen  # deterministic
    assert sorted(farthest_points(points, 10, seed=0)) == list(range(6))


def test_replay_data_without_labels_asks_for_pseudolabels(tmp_path, foundation):
    data = write_xyz(tmp_path / "ft.xyz", molecules(6))
    bare = [a.copy() for a in molecules(4, seed=2)]
    for atoms in bare:
        atoms.info.pop("REF_energy")
        del atoms.arrays["REF_forces"]
    replay = write_xyz(tmp_path / "replay.xyz", bare)
    cfg = fine_tune_config(
        tmp_path, data, foundation, multihead_finetuning=True, pt_train_file=str(replay)
    )
    with pytest.raises(DataError, match="--pseudolabel-replay"):
        Trainer(cfg, False).setup()


def test_a_fine_tuned_model_records_its_foundation(tmp_path, foundation):
    data = write_xyz(tmp_path / "ft.xyz", molecules(6))
    result = train(fine_tune_config(tmp_path, data, foundation, epochs=1))
    provenance = load_model(result.model_path).provenance
    assert provenance["foundation"]["path"] == str(foundation)
    assert len(provenance["foundation"]["sha256"]) == 64
    assert any("starting offset" in line for line in provenance["fine_tuning"])


def test_add_head_keeps_the_existing_heads(tmp_path):
    from openmace.model.heads import add_head, single_head
    from tests.helpers import make_model, molecule

    model = make_model(seed=3)
    two = add_head(model, "new", [-1.0, -2.0, -3.0, -4.0], scale=2.0)
    three = add_head(two, "third", [0.0, 0.0, 0.0, 0.0], copy_from="default")
    frames = [molecule(3)]
    e_ref, f_ref = predictions(model, frames)
    for heads_model in (two, three):
        e, f = predictions(single_head(heads_model, "default"), frames)
        assert torch.allclose(e, e_ref, atol=1e-12, rtol=0) and torch.allclose(f, f_ref, atol=1e-12)
    new = single_head(two, "new")
    assert new.config.scale == 2.0 and new.config.atomic_energies == [-1.0, -2.0, -3.0, -4.0]
    with pytest.raises(ValueError, match="already has a head 'new'"):
        add_head(two, "new", [0.0] * 4)


def test_save_and_load_of_a_multihead_fine_tune(tmp_path):
    from openmace.model.heads import add_head
    from tests.helpers import make_model, molecule

    two = add_head(make_model(seed=4), "new", [-1.0, -2.0, -3.0, -4.0])
    path = save_model(two, tmp_path / "two.safetensors")
    again = load_model(path)
    assert again.config.heads == ["default", "new"]
    for head in (0, 1):
        graph = graph_from_atoms(molecule(2), again.config.r_max)
        graph.head = torch.tensor([head])
        a = two(graph)["energy"]
        b = again(graph)["energy"]
        assert torch.equal(a.detach(), b.detach())


def test_a_foundation_head_called_default_in_any_case_becomes_pt_head(tmp_path, foundation):
    """mace-torch names a single head "Default": the replay fine-tune must not end up with
    heads "Default" and "default" (and pick the foundation's for ``head=None``)."""
    from openmace.model.heads import head_index
    from openmace.train.finetune import replace_head_names

    renamed = replace_head_names(load_model(foundation), ["Default"])
    path = save_model(renamed, tmp_path / "mace_style.safetensors")
    data = write_xyz(tmp_path / "ft.xyz", molecules(6, seed=2))
    replay = write_xyz(tmp_path / "replay.xyz", molecules(6, seed=3))
    cfg = fine_tune_config(
        tmp_path, data, path, multihead_finetuning=True, pt_train_file=str(replay)
    )
    trainer = Trainer(cfg, False)
    trainer.setup()
    assert trainer.model.config.heads == ["pt_head", "default"]
    assert head_index(trainer.model.config, None) == 1


def test_one_composition_warns_that_estimated_e0s_are_a_split(tmp_path, foundation, caplog):
    def warnings(name, frames):
        data = write_xyz(tmp_path / f"{name}.xyz", relabelled(foundation, frames))
        cfg = fine_tune_config(tmp_path / name, data, foundation, e0s="estimated")
        caplog.clear()
        with caplog.at_level("INFO", logger="openmace.train"):
            Trainer(cfg, False).setup()
        return [r.message for r in caplog.records if r.levelname == "WARNING"]

    assert not any("compositions fix only" in w for w in warnings("six", varied(12, seed=4)))
    water = [a for a in varied(24, seed=5) if a.get_chemical_formula() == "H2O"]
    assert any("fix only 1 of the 2 elements" in w for w in warnings("water", water))
