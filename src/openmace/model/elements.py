"""Keep a subset of a model's elements, with exactly the same predictions on them.

A foundation model knows 89 elements; a fine-tune on a user's data may keep only the elements
the data has (``openmace train --foundation-elements data``): a smaller model, faster to train
and to run. Every per-element weight is a row (or an index of its first axis) of one element;
the rows of the kept elements are taken as they are, except where a block normalises by the
number of elements (the embedding ``h⁰ = W_z / √E``, the element-dependent self-connection
``/ √(c E)``, the source/target embeddings of the non-linear block ``/ √E``): there the kept
rows are multiplied by ``√(E_new / E_old)``, so that every number the model computes on the
kept elements is unchanged.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import torch
from ase.data import chemical_symbols

from openmace.model.mace import MACE

#: state-dict names of per-element tensors (element = first axis, or the last axis of the
#: per-head atomic energies) and whether the block that uses them divides by √E
PER_ELEMENT = (
    (re.compile(r"embedding"), True),
    (re.compile(r"interactions\.\d+\.skip\.weights\.\d+"), True),
    (re.compile(r"interactions\.\d+\.(source|target)_embedding"), True),
    (re.compile(r"products\.\d+\.contraction\.weights\.\d+_\d+"), False),
    (re.compile(r"atomic_energies"), False),
)


def keep_elements(model: MACE, atomic_numbers: list[int]) -> MACE:
    """A new model of ``atomic_numbers`` (a subset of the model's elements, any order; kept in
    the model's order) that predicts exactly what ``model`` predicts for structures made of
    them. ``model`` is unchanged. An element the model lacks is a :class:`ValueError` naming it.
    """
    config = model.config
    old = list(config.atomic_numbers)
    wanted = sorted(
        set(int(z) for z in atomic_numbers), key=lambda z: old.index(z) if z in old else -1
    )
    missing = [z for z in wanted if z not in old]
    if missing:
        names = ", ".join(chemical_symbols[z] for z in missing)
        raise ValueError(f"the model has no element(s) {names}; its elements are {_symbols(old)}")
    if not wanted:
        raise ValueError("keep_elements needs at least one element")
    rows = [old.index(z) for z in wanted]
    energies = config.atomic_energies
    if len(config.heads) > 1:
        energies = [[row[i] for i in rows] for row in config.head_energies]
    else:
        energies = [energies[i] for i in rows]
    new_config = replace(config, atomic_numbers=wanted, atomic_energies=energies)
    dtype, device = model.atomic_energies.dtype, model.atomic_energies.device
    out = MACE(new_config, dtype=dtype, device=device)
    factor = math.sqrt(len(wanted) / len(old))
    target = out.state_dict()
    index = torch.tensor(rows, device=device)
    state = {}
    for name, value in model.state_dict().items():
        rule = _rule(name)
        axis = value.dim() - 1 if name == "atomic_energies" else 0
        if rule is None or (value.shape[axis] == 1 and len(old) != 1):
            state[name] = value  # not per element, or an element-agnostic block (one row)
            continue
        kept = value.index_select(axis, index)
        state[name] = kept * factor if rule else kept
    for name, value in state.items():
        if target[name].shape != value.shape:
            raise ValueError(
                f"keep_elements: {name} has shape {tuple(value.shape)}, expected "
                f"{tuple(target[name].shape)} (a per-element tensor not known here)"
            )
    out.load_state_dict(state)
    out.provenance = dict(getattr(model, "provenance", {}) or {})
    return out


def _rule(name: str) -> bool | None:
    """Whether the per-element tensor ``name`` is normalised by √E (None: not per element)."""
    for pattern, normalised in PER_ELEMENT:
        if pattern.fullmatch(name):
            return normalised
    return None


def _symbols(numbers: list[int]) -> str:
    return " ".join(chemical_symbols[z] for z in numbers)
