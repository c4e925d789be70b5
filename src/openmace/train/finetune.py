"""Fine-tuning a foundation model: what differs from training from scratch.

``openmace train --foundation-model F`` starts from F's architecture and weights instead of a
random model (:func:`prepare_fine_tuning`); the loop, checkpoints, resume and reports are those
of plain training (:mod:`openmace.train.loop`). What this module decides:

* **Architecture**: the foundation's (one head of a multi-head foundation: ``foundation_head``).
  A model option given by the user that differs from the foundation's is an error naming it.
  Statistics (avg_num_neighbors, scale, shift) are the foundation's. ``foundation_elements
  data`` keeps only the training data's elements (:func:`openmace.model.elements.keep_elements`:
  exactly the same predictions on them).
* **E0s** (eV per element): ``foundation`` copies the foundation's; ``estimated`` fits
  ``E_ref - E_learned ≈ Σ_z n_z E0_z`` by least squares, where ``E_learned`` is the
  foundation's prediction without its E0s, so training starts without a per-element offset
  (a different level of theory shifts every element's energy); any other ``--e0s`` option
  as in plain training. Elements not in the data keep the foundation's E0s. Before training the
  log prints the starting error per element (the least-squares per-atom offset of the
  residual ``E_ref - E_model``) and warns above :data:`OFFSET_WARNING` eV/atom.
* **Which weights train**: ``freeze N`` (requires_grad off for the embedding and layers
  ``0..N-1``; negative N: all but the last ``|N|`` layers), and learning-rate factors per group
  (:func:`parameter_group`: embedding, interactions, products, readouts).
* **Multi-head replay** (``multihead_finetuning``): the foundation's head (named ``pt_head``
  unless it has a name of its own) and a new head ``default`` for the user's data (a copy of
  the foundation's readouts with the new E0s, :func:`openmace.model.heads.add_head`), trained on
  the user's data together with replay structures from ``pt_train_file``: subsampled to
  ``num_samples_pt`` by random choice or farthest-point sampling on the foundation's
  descriptors (:func:`farthest_points`), relabelled with the foundation's predictions when
  ``pseudolabel_replay``, weighted by ``weight_pt_head`` (a factor on each replay structure's
  weight, in every mode). A fraction ``valid_fraction`` of the replay set validates the
  foundation's head.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from openmace.accel import for_inference
from openmace.data.configurations import Configuration, Keys, read_configurations
from openmace.data.dataset import GraphDataset
from openmace.data.e0 import as_summary, composition_matrix, fit_e0s
from openmace.data.errors import DataError
from openmace.evaluation.predict import predict_graphs
from openmace.io.model_file import load_model
from openmace.model import MACE
from openmace.model.elements import keep_elements
from openmace.model.heads import add_head, head_index, single_head
from openmace.train.config import MODEL_OPTIONS, TrainConfig
from openmace.train.data_setup import TrainingData, check_elements, sha256

log = logging.getLogger("openmace.train")

OFFSET_WARNING = 0.4
"""eV/atom: a starting per-element offset above this means wrong E0s or another level of theory."""
PT_HEAD = "pt_head"
"""Name of the foundation's head in a replay fine-tune when it is called ``default`` (any case:
mace-torch calls a single head ``Default``), so that ``default`` names the new head only."""
GROUPS = ("embedding", "interactions", "products", "readouts")


@dataclass
class FineTuning:
    """A fine-tune's starting model and data (from :func:`prepare_fine_tuning`)."""

    model: MACE
    foundation: dict  # name, path, sha256, head
    e0_source: str
    pt_train: GraphDataset | None = None
    pt_valid: GraphDataset | None = None
    report: list[str] = field(default_factory=list)  # the lines logged before training


def parameter_group(name: str) -> str:
    """The learning-rate group of a parameter: embedding, interactions, products or readouts."""
    if name.startswith(("embedding", "joint_embedding")):
        return "embedding"
    for group in GROUPS[1:]:
        if name.startswith(group + "."):
            return group
    raise ValueError(f"parameter {name} belongs to no learning-rate group")


def parameter_layer(name: str) -> int:
    """The layer of a parameter (the embedding belongs to layer 0)."""
    match = re.match(r"(interactions|products|readouts)\.(\d+)\.", name)
    return int(match.group(2)) if match else 0


def frozen_layers(freeze: int | None, num_layers: int) -> int:
    """How many leading layers ``freeze`` freezes (negative: all but the last ``|freeze|``)."""
    if freeze is None:
        return 0
    count = freeze if freeze >= 0 else num_layers + freeze
    if not 0 <= count <= num_layers or abs(freeze) > num_layers:
        raise ValueError(
            f"freeze {freeze}: the model has {num_layers} layers (use -{num_layers}..{num_layers})"
        )
    return count


def apply_freeze(model: MACE, freeze: int | None) -> list[str]:
    """Switch off the gradients of the frozen layers; the names of the frozen parameters."""
    count = frozen_layers(freeze, len(model.interactions))
    frozen = []
    for name, parameter in model.named_parameters():
        if parameter_layer(name) < count:
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def option_conflicts(cfg: TrainConfig, model: MACE) -> list[str]:
    """Model options given in ``cfg`` that differ from the foundation's, as ``name value
    (foundation: value)``. Given: named in the file or flags (``cfg.given_options``), or, for
    a config built in Python, differing from the option's default."""
    defaults = TrainConfig.__dataclass_fields__
    found = model.config.to_dict()
    given = cfg.given_options
    conflicts = []
    for name in MODEL_OPTIONS:
        value = getattr(cfg, name)
        if given is not None:
            conveniences = name == "hidden_irreps" and bool({"channels", "max_L"} & given)
            named = name in given or conveniences
        else:
            spec = defaults[name]
            default = spec.default_factory() if callable(spec.default_factory) else spec.default
            named = value != default
        if named and name in found and not _same(value, found[name]):
            conflicts.append(f"{name} {value!r} (foundation: {found[name]!r})")
    return conflicts


def _same(a: object, b: object) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.replace(" ", "").lower() == b.replace(" ", "").lower()
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def learned_energies(model: MACE, dataset: GraphDataset, batch_size: int) -> np.ndarray:
    """Each structure's predicted energy without the E0s (eV): what the E0s must complete."""
    e0 = dict(zip(model.config.atomic_numbers, _energies_of(model)))
    fast = for_inference(model)
    out = []
    for config, result in zip(dataset.configs, predict_graphs(fast, dataset.graphs, batch_size)):
        out.append(result["energy"] - sum(e0[int(z)] for z in config.atomic_numbers))
    return np.array(out)


def _energies_of(model: MACE) -> list[float]:
    """The E0s of a single-head model (or of the last head)."""
    energies = model.config.head_energies
    return list(energies[-1])


def with_e0s(model: MACE, e0s: dict[int, float]) -> MACE:
    """A single-head ``model`` with the E0s of the elements in ``e0s`` replaced."""
    config = model.config
    energies = [float(e0s.get(z, e)) for z, e in zip(config.atomic_numbers, config.atomic_energies)]
    out = MACE(replace(config, atomic_energies=energies), dtype=model.atomic_energies.dtype)
    state = model.state_dict()
    state["atomic_energies"] = out.atomic_energies.clone()
    out.load_state_dict(state)
    out.provenance = dict(getattr(model, "provenance", {}) or {})
    return out.to(model.atomic_energies.device)


def starting_errors(
    configs: list[Configuration], predicted: np.ndarray, elements: list[int]
) -> tuple[float, dict[int, float]]:
    """Energy MAE per atom (eV) of ``predicted`` total energies, and each element's
    least-squares per-atom offset of ``E_ref - predicted`` (eV/atom)."""
    summary = as_summary(configs)
    rows = np.flatnonzero(summary.has_energy)
    if not len(rows):
        return float("nan"), {}
    errors = np.abs(summary.energy[rows] - np.asarray(predicted)[rows]) / summary.num_atoms[rows]
    mae = float(np.mean(errors))
    offsets = fit_e0s(summary, elements, predicted)
    return mae, offsets


def farthest_points(descriptors: np.ndarray, count: int, seed: int) -> list[int]:
    """``count`` rows of ``descriptors`` chosen by farthest-point sampling (Euclidean distance
    of standardised descriptors), starting from a row chosen by ``seed``; in the order chosen."""
    n = len(descriptors)
    if count >= n:
        return list(range(n))
    x = descriptors - descriptors.mean(0)
    x = x / np.where(x.std(0) > 0, x.std(0), 1.0)
    chosen = [int(np.random.default_rng(seed).integers(n))]
    distance = np.linalg.norm(x - x[chosen[0]], axis=1)
    for _ in range(count - 1):
        k = int(np.argmax(distance))
        chosen.append(k)
        distance = np.minimum(distance, np.linalg.norm(x - x[k], axis=1))
    return chosen


def structure_descriptors(model: MACE, dataset: GraphDataset, batch_size: int) -> np.ndarray:
    """Per structure, the mean over its atoms of the invariant features every readout reads
    (the foundation's descriptors): ``[structures, layers × channels]``."""
    fast = for_inference(model)
    captured: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, inputs: tuple) -> None:
        captured.append(inputs[0][:, :, module.scalar_index].detach())

    hooks = [readout.register_forward_pre_hook(keep) for readout in fast.readouts]
    rows = []
    try:
        for start in range(0, len(dataset), batch_size):
            idx = list(range(start, min(start + batch_size, len(dataset))))
            captured.clear()
            batch = dataset.batch(idx)
            fast(batch.graph, compute_forces=False)
            features = torch.cat(captured, dim=1).double().cpu()
            counts = torch.bincount(batch.graph.batch, minlength=len(idx)).double()
            sums = torch.zeros(len(idx), features.shape[1], dtype=torch.float64)
            sums.index_add_(0, batch.graph.batch, features)
            rows.append((sums / counts.unsqueeze(1)).numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return np.concatenate(rows) if rows else np.zeros((0, 0))


def pseudolabelled(model: MACE, dataset: GraphDataset, batch_size: int) -> list[Configuration]:
    """The structures of ``dataset`` labelled with ``model``'s energy, forces and stress."""
    fast = for_inference(model)
    out = []
    for config, result in zip(dataset.configs, predict_graphs(fast, dataset.graphs, batch_size)):
        stress = result["stress"]
        out.append(
            replace(
                config,
                energy=float(result["energy"]),
                forces=np.asarray(result["forces"]),
                stress=None if stress is None else np.asarray(stress),
                virials=None,
            )
        )
    return out


def _check_foundation_elements(configs: list[Configuration], model: MACE, what: str) -> None:
    known = set(model.config.atomic_numbers)
    check_elements(
        configs,
        known,
        f"in the {what} are not among the model's {len(known)} elements (the foundation's, "
        "or the training data's with --foundation-elements data); fine-tuning cannot add "
        "elements",
    )


def load_foundation(
    cfg: TrainConfig,
    dtype: torch.dtype,
    device: torch.device,
    resolve: Callable[[str], Path] | None = None,
) -> tuple[MACE, dict]:
    """The foundation model (its head ``cfg.foundation_head``, as a single-head model) and its
    provenance (name, path, SHA-256, head). ``resolve`` turns ``cfg.foundation_model`` into a
    file path (a published name; the CLI passes :func:`openmace.foundations.resolve_any`);
    without it the option must be a path."""
    spec = cfg.foundation_model
    assert spec is not None
    path = Path(resolve(spec)) if resolve is not None else Path(spec)
    if not path.is_file():
        raise ValueError(f"--foundation-model {spec}: no such file")
    foundation = load_model(path, dtype=dtype, device=device)
    info = {"name": spec, "path": str(path), "sha256": sha256(path)}
    heads = list(foundation.config.heads)
    head = heads[head_index(foundation.config, cfg.foundation_head)]
    model = single_head(foundation, head) if len(heads) > 1 else foundation
    info["head"] = head
    return model, info


def prepare_fine_tuning(
    cfg: TrainConfig, data: TrainingData, train_set: GraphDataset, model: MACE, info: dict
) -> FineTuning:
    """The starting model of a fine-tune of ``model`` (from :func:`load_foundation`) and its
    replay data, as configured by ``cfg``; ``train_set``: the training data's graphs."""
    spec, head = info["name"], info["head"]
    conflicts = option_conflicts(cfg, model)
    if conflicts:
        raise ValueError(
            "model options conflict with the foundation model "
            f"{spec}: {'; '.join(conflicts)}; a fine-tune keeps the foundation's architecture "
            "(leave these options out)"
        )
    for structures in (data.train, data.valid, data.test):
        _check_foundation_elements(structures, model, "data")
    if cfg.foundation_elements == "data":
        model = keep_elements(model, data.elements)
    report = [
        f"fine-tuning {spec} (sha256 {info['sha256'][:12]}..., head {head!r}): "
        f"{model.config.hidden_irreps}, {len(model.interactions)} layers, "
        f"{len(model.config.atomic_numbers)} elements"
    ]
    if cfg.fine_tuning_defaults:
        report.append(
            "fine-tuning defaults (differ from plain training): "
            + ", ".join(f"{k} {v}" for k, v in cfg.fine_tuning_defaults.items())
        )
    # E0s of the data's elements
    learned = learned_energies(model, train_set, cfg.valid_batch_size)
    if data.e0_source == "estimated":
        e0s = fit_e0s(data.train, data.elements, learned)
        source = "estimated: least squares of the reference energies minus the foundation's"
        rank = int(np.linalg.matrix_rank(composition_matrix(data.train, data.elements)))
        if rank < len(data.elements):
            report.append(
                f"WARNING: the training structures' compositions fix only {rank} of the "
                f"{len(data.elements)} elements' E0s (estimated E0s are a minimum-norm split): "
                "energies of other compositions will be offset; add structures of other "
                "compositions, or use --e0s foundation"
            )
    elif data.e0_source == "foundation":
        e0s = dict(zip(model.config.atomic_numbers, model.config.atomic_energies))
        source = "the foundation's"
    else:
        e0s, source = data.e0s, data.e0_source
    e0s = {z: e0s[z] for z in data.elements}
    composition = composition_matrix(data.train, data.elements)
    start = learned + composition @ np.array([e0s[z] for z in data.elements])
    mae, offsets = starting_errors(data.train, start, data.elements)
    report.append(f"E0s: {source}; starting energy MAE {1000 * mae:.1f} meV/atom")
    report.append(
        "starting offset per element (eV/atom, least squares of E_ref - E_model): "
        + ", ".join(f"{chemical_symbols[z]} {offsets[z]:+.3f}" for z in data.elements)
    )
    large = [
        chemical_symbols[z] for z in data.elements if abs(offsets.get(z, 0.0)) > OFFSET_WARNING
    ]
    if large:
        report.append(
            f"WARNING: starting offsets above {OFFSET_WARNING} eV/atom for {', '.join(large)}: "
            "wrong E0s or a different level of theory (try --e0s estimated)"
        )
    pt_train = pt_valid = None
    if cfg.multihead_finetuning:
        foundation_head = model
        if head.lower() == "default":  # mace-torch names its single head "Default"
            model = replace_head_names(model, [PT_HEAD])
        energies = [
            float(e0s.get(z, e)) for z, e in zip(model.config.atomic_numbers, _energies_of(model))
        ]
        model = add_head(model, "default", energies)
        pt_train, pt_valid = replay_sets(cfg, foundation_head, report)
    else:
        model = with_e0s(model, e0s)
    frozen = apply_freeze(model, cfg.freeze)
    if frozen:
        report.append(f"frozen: {len(frozen)} parameter tensors ({cfg.freeze} layers)")
    for line in report:
        (log.warning if line.startswith("WARNING") else log.info)("%s", line)
    model.provenance = {}
    return FineTuning(model, info, source, pt_train, pt_valid, report)


def replace_head_names(model: MACE, names: list[str]) -> MACE:
    """``model`` with its heads renamed (same weights)."""
    out = copy.deepcopy(model)
    out.config = replace(model.config, heads=list(names))
    out.heads = list(names)
    return out


def replay_sets(
    cfg: TrainConfig, foundation: MACE, report: list[str]
) -> tuple[GraphDataset, GraphDataset]:
    """The replay structures (training, validation) of the foundation's head (index 0)."""
    assert cfg.pt_train_file is not None
    keys = Keys(
        energy=cfg.energy_key, forces=cfg.forces_key, stress=cfg.stress_key, virials=cfg.virials_key
    )
    configs = [c for c in read_configurations(cfg.pt_train_file, keys) if len(c) > 1]
    if not configs:
        raise DataError(cfg.pt_train_file, None, "no replay structures (of more than one atom)")
    _check_foundation_elements(configs, foundation, "replay data")
    r_max = foundation.config.r_max
    everything = GraphDataset(configs, r_max)
    if cfg.num_samples_pt < len(configs):
        if cfg.subselect_pt == "fps":
            descriptors = structure_descriptors(foundation, everything, cfg.valid_batch_size)
            chosen = farthest_points(descriptors, cfg.num_samples_pt, cfg.seed)
        else:
            rng = np.random.default_rng(cfg.seed)
            chosen = sorted(rng.choice(len(configs), cfg.num_samples_pt, replace=False).tolist())
        configs = [configs[k] for k in chosen]
        everything = GraphDataset(configs, r_max)
    if cfg.pseudolabel_replay:
        configs = pseudolabelled(foundation, everything, cfg.valid_batch_size)
    elif all(c.energy is None and c.forces is None for c in configs):
        raise DataError(
            cfg.pt_train_file,
            None,
            f"the replay structures have no energies or forces under the keys "
            f"{cfg.energy_key!r}/{cfg.forces_key!r}: pass --pseudolabel-replay to label them "
            "with the foundation",
        )
    configs = [replace(c, weight=c.weight * cfg.weight_pt_head) for c in configs]
    order = np.random.default_rng(cfg.seed + 1).permutation(len(configs))
    n_valid = max(1, int(round(cfg.valid_fraction * len(configs)))) if len(configs) > 1 else 0
    valid = [configs[k] for k in sorted(order[:n_valid].tolist())]
    train = [configs[k] for k in sorted(order[n_valid:].tolist())]
    report.append(
        f"replay data: {len(train)} train + {len(valid)} validation structures from "
        f"{cfg.pt_train_file} ({cfg.subselect_pt}"
        f"{', pseudolabelled' if cfg.pseudolabel_replay else ''}, weight {cfg.weight_pt_head})"
    )
    return GraphDataset(train, r_max, head=0), GraphDataset(valid, r_max, head=0)
