"""Incomplete or inconsistent mace-torch inputs: options implied by the weights come from them,
contradictions and unaccounted tensors are errors naming what is wrong, never a silently
wrong model (cases found with look-alike foundation models; issue 15, "Bad input")."""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch

from openmace import MACECalculator
from openmace.io.errors import ConversionError
from openmace.io.mace_torch import model_from_mace_torch
from tests.io.test_foundation_parity import _graph, fixture


def energy_error(family: str, cfg: dict, state: dict) -> float:
    """Largest |E - E_mace-torch| per atom (eV) over the fixture's structures, first head."""
    _, _, frames, reference = fixture(family)
    model = model_from_mace_torch(cfg, state)
    head = next(iter(reference))
    worst = 0.0
    for atoms, ref in zip(frames, reference[head]["structures"]):
        out = model(_graph(atoms, model.config.r_max), compute_forces=False)
        worst = max(worst, abs(float(out["energy"]) - ref["energy"]) / len(atoms))
    return worst


def test_a_config_without_the_distance_transform_takes_it_from_the_weights():
    cfg, state, _, _ = fixture("mp0b")
    cfg = {k: v for k, v in cfg.items() if k != "distance_transform"}
    assert energy_error("mp0b", cfg, state) < 1e-9  # was 3.7e-2 eV/atom


def test_a_config_without_pair_repulsion_takes_it_from_the_weights():
    cfg, state, _, _ = fixture("mp0b")
    cfg = {k: v for k, v in cfg.items() if k not in ("distance_transform", "pair_repulsion")}
    assert energy_error("mp0b", cfg, state) < 1e-9  # was 3.5 eV/atom


def test_model_class_mace_keeps_the_stored_scale_and_shift():
    cfg, state, _, _ = fixture("mp0b")
    assert energy_error("mp0b", {**cfg, "model_class": "MACE"}, state) < 1e-9


@pytest.mark.parametrize(
    "change,named",
    [
        ({"pair_repulsion": False}, "pair_repulsion"),
        ({"distance_transform": "Soft"}, "distance_transform"),
        ({"r_max": 5.0}, "r_max"),
        ({"num_bessel": 8}, "num_bessel"),
        ({"correlation": 2}, "correlation"),
        ({"heads": ["a", "b"]}, "head"),
        ({"interaction_cls": "RealAgnosticDensityResidualInteractionBlock"}, "interaction_cls"),
        ({"interaction_cls": "RealAgnosticAttResidualInteractionBlock"}, "not supported"),
        ({"model_class": "AtomicDipolesMACE"}, "AtomicDipolesMACE"),
        ({"radial_type": "gaussian"}, "radial_type"),
        ({"readout_cls": "NonLinearBiasReadoutBlock"}, "readout_cls"),
    ],
)
def test_contradictions_between_config_and_weights_are_refused(change, named):
    cfg, state, _, _ = fixture("mp0b")
    with pytest.raises(ConversionError, match=named):
        model_from_mace_torch({**cfg, **change}, state)


def test_an_omol_config_without_embedding_specs_is_one_clear_error():
    cfg, state, _, _ = fixture("omol")
    cfg = {k: v for k, v in cfg.items() if k != "embedding_specs"}
    with pytest.raises(ConversionError, match="embedding_specs"):
        model_from_mace_torch(cfg, state)


def test_a_config_without_hidden_irreps_is_one_clear_error():
    cfg, state, _, _ = fixture("mp0a")
    with pytest.raises(ConversionError, match="hidden_irreps"):
        model_from_mace_torch({k: v for k, v in cfg.items() if k != "hidden_irreps"}, state)


def test_an_unused_state_dict_entry_is_named():
    cfg, state, _, _ = fixture("mp0a")
    extra = {**state, "interactions.0.attention.weight": torch.zeros(3)}
    with pytest.raises(ConversionError, match="interactions.0.attention.weight"):
        model_from_mace_torch(cfg, extra)


def test_a_missing_state_dict_entry_is_named():
    cfg, state, _, _ = fixture("mp0a")
    missing = {k: v for k, v in state.items() if k != "interactions.1.linear.weight"}
    with pytest.raises(ConversionError, match="interactions.1.linear.weight"):
        model_from_mace_torch(cfg, missing)


def test_a_tensor_of_the_wrong_shape_is_named():
    cfg, state, _, _ = fixture("mp0a")
    bad = {**state, "interactions.0.linear_up.weight": torch.zeros(7)}
    with pytest.raises(ConversionError, match="interactions.0.linear_up.weight"):
        model_from_mace_torch(cfg, bad)


def test_a_head_that_does_not_exist_lists_the_heads():
    cfg, state, _, reference = fixture("mh1")
    model = model_from_mace_torch(cfg, state)
    with pytest.raises(ValueError, match="its heads are") as err:
        MACECalculator(model, head="no-such-head")
    for name in reference:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="choose one of"):
        MACECalculator(model)  # several heads, none called "default"


def test_missing_charge_or_spin_is_one_clear_error():
    cfg, state, frames, _ = fixture("omol")
    calc = MACECalculator(model_from_mace_torch(cfg, state))
    atoms = frames[0].copy()
    atoms.info.pop("charge", None)
    atoms.calc = calc
    with pytest.raises(ValueError, match="charge"):
        atoms.get_potential_energy()
    atoms.info["charge"] = 0.5
    with pytest.raises(ValueError, match="whole number"):
        atoms.get_potential_energy()


def test_charge_and_spin_change_the_energy():
    cfg, state, frames, _ = fixture("omol")
    calc = MACECalculator(model_from_mace_torch(cfg, state))
    atoms = frames[0].copy()
    atoms.calc = calc
    energies = []
    for charge, spin in ((0, 1), (1, 2), (-1, 2)):
        atoms.info.update(charge=charge, spin=spin)
        energies.append(atoms.get_potential_energy())
    assert len(set(np.round(energies, 9))) == 3


def test_elements_the_model_lacks_are_named():
    cfg, state, _, _ = fixture("off23_small")
    calc = MACECalculator(model_from_mace_torch(cfg, state))
    atoms = ase.Atoms("CuAu", positions=[[0, 0, 0], [0, 0, 2.5]])
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"\[29, 79\]"):
        atoms.get_potential_energy()
