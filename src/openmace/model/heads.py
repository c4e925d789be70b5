"""Heads of a multi-head model: choose one by name, or keep one as a single-head model.

A multi-head model (MACE-MH-1, replay fine-tunes) shares everything but the readouts, E0s,
scale and shift, which it holds per head. :func:`single_head` returns the model of one head:
the same numbers for that head, the fast inference path of a single-head model, and what
``openmace convert --head`` writes. :func:`add_head` returns the model with one more head,
a copy of an existing one with its own E0s, scale and shift (multi-head replay fine-tuning).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from openmace.model.config import MACEConfig
from openmace.model.mace import MACE


def head_index(config: MACEConfig, head: str | int | None) -> int:
    """Index of ``head`` (a name or an index). ``None``: the only head, else the one named
    ``default`` (any case); otherwise an error listing the heads."""
    heads = list(config.heads)
    if head is None:
        if len(heads) == 1:
            return 0
        defaults = [i for i, name in enumerate(heads) if name.lower() == "default"]
        if defaults:
            return defaults[0]
        raise ValueError(f"this model has {len(heads)} heads: choose one of {heads} (head=...)")
    if isinstance(head, int) and not isinstance(head, bool):
        if 0 <= head < len(heads):
            return head
        raise ValueError(f"head index {head} outside 0..{len(heads) - 1} (heads: {heads})")
    if head not in heads:
        raise ValueError(f"no head {head!r} in this model; its heads are {heads}")
    return heads.index(head)


def single_head(model: MACE, head: str | int | None = None) -> MACE:
    """The model of one head (a new model; ``model`` is unchanged). A single-head model is
    returned as a copy."""
    config = model.config
    index = head_index(config, head)
    if len(config.heads) == 1:
        return copy.deepcopy(model)
    new_config = replace(
        config,
        heads=[config.heads[index]],
        atomic_energies=config.head_energies[index],
        scale=config.per_head("scale")[index],
        shift=config.per_head("shift")[index],
    )
    dtype, device = model.atomic_energies.dtype, model.atomic_energies.device
    out = MACE(new_config, dtype=dtype, device=device)
    state = {}
    for name, value in model.state_dict().items():
        if name == "atomic_energies":
            value = value[index]
        elif name == "embedding_readout":
            value = value[:, index : index + 1]
        elif ".heads_mlp." in name:
            value = value[index : index + 1]
        state[name] = value
    target = out.state_dict()
    for name in list(state):
        if name not in target and ".heads_mlp.layers." in name:  # plain MLP of one head
            prefix, rest = name.split(".heads_mlp.layers.")
            layer = rest.split(".")[0]
            state[f"{prefix}.mlp.weights.{layer}"] = state.pop(name)[0]
    out.load_state_dict(state)
    out.provenance = dict(getattr(model, "provenance", {}) or {})
    out.provenance["head"] = config.heads[index]
    return out


def atoms_heads(model: MACE, head: str | int | None, num_graphs: int) -> torch.Tensor | None:
    """The head index of every graph for :meth:`MACE.forward` (None for single-head models)."""
    if len(model.config.heads) == 1:
        return None
    index = head_index(model.config, head)
    return torch.full((num_graphs,), index, dtype=torch.long, device=model.atomic_energies.device)


def add_head(
    model: MACE,
    name: str,
    atomic_energies: list[float],
    scale: float | None = None,
    shift: float | None = None,
    copy_from: str | int | None = None,
) -> MACE:
    """``model`` with one more head ``name`` (a new model; ``model`` is unchanged): its
    readouts (and embedding readout) are copies of head ``copy_from``'s, its E0s are
    ``atomic_energies`` (eV, one per element), its scale and shift those given (default: those
    of ``copy_from``). The existing heads predict exactly what they did."""
    config = model.config
    source = head_index(config, copy_from)
    if name in config.heads:
        raise ValueError(f"the model already has a head {name!r} (heads: {list(config.heads)})")
    if len(atomic_energies) != len(config.atomic_numbers):
        raise ValueError("add_head: one E0 per element of the model is needed")
    scales, shifts = config.per_head("scale"), config.per_head("shift")
    new_config = replace(
        config,
        heads=[*config.heads, name],
        atomic_energies=[*config.head_energies, [float(e) for e in atomic_energies]],
        scale=[*scales, scales[source] if scale is None else float(scale)],
        shift=[*shifts, shifts[source] if shift is None else float(shift)],
    )
    dtype, device = model.atomic_energies.dtype, model.atomic_energies.device
    out = MACE(new_config, dtype=dtype, device=device)
    old = model.state_dict()
    if len(config.heads) == 1:  # a plain MLP readout becomes the per-head form
        for key in [k for k in old if ".mlp.weights." in k]:
            prefix, layer = key.split(".mlp.weights.")
            old[f"{prefix}.heads_mlp.layers.{layer}.weight"] = old.pop(key).unsqueeze(0)
        old["atomic_energies"] = old["atomic_energies"].unsqueeze(0)
    state = {}
    for key, target in out.state_dict().items():
        value = old[key]
        if value.shape != target.shape:
            axis = 1 if key == "embedding_readout" else 0  # the head axis
            copy = value.narrow(axis, source, 1)
            if key == "atomic_energies":
                copy = torch.tensor([atomic_energies], dtype=dtype, device=device)
            value = torch.cat([value, copy], dim=axis)
        state[key] = value
    out.load_state_dict(state)
    out.provenance = dict(getattr(model, "provenance", {}) or {})
    return out
