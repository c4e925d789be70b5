"""Fast implementations of the model's operators, swapped in by one named conversion.

    from openmace.accel import for_inference
    fast = for_inference(model)                      # a frozen copy; ``model`` is unchanged
    fast(graph, compute_stress=True)

The reference model (:mod:`openmace.model`) holds the paper's maths in differentiable PyTorch
operations: what training runs. :func:`for_inference` returns a frozen copy (no parameter needs a
gradient) in which two operators are swapped, each for a module that owns its plan, caches and
workspaces:

==========================================  ==================================================
reference (``openmace.model``)              swap (``openmace.accel``)
==========================================  ==================================================
``EdgeMessages`` (eq. 8, neighbour sum)     :class:`~openmace.accel.messages.InferenceMessages`
                                            (compiled kernels or PyTorch operations, both with
                                            a hand-written backward)
``SymmetricContraction`` (eq. 10-11)        :class:`~openmace.accel.contraction.CompiledContraction`
                                            (compiled kernel) or
                                            :class:`~openmace.accel.contraction.FrozenContraction`
                                            (each element's weights contracted on first use)
``EquivariantLinear``, ``ElementLinear``    :class:`~openmace.accel.linear.FrozenLinear`,
(eq. 9 and 12, the linear maps)             :class:`~openmace.accel.linear.FrozenElementLinear`
                                            (all components in one batched product; not for
                                            ``"reference"``)
==========================================  ==================================================

``implementation``:

* ``"auto"`` (default): the compiled CPU kernels (:mod:`openmace.kernels`) for a CPU model in
  float32/float64 unless ``OPENMACE_KERNELS=0`` (read here, once) or they cannot be built; else
  ``"pytorch"``.
* ``"compiled"``: the compiled kernels; an error if they cannot be used.
* ``"pytorch"``: PyTorch operations with workspaces and a hand-written backward.
* ``"reference"``: the reference edge messages and the frozen contraction: plain operations
  only, what the TorchScript export scripts.
* ``"operators"``: the compiled kernels as PyTorch operators
  (:mod:`openmace.accel.operators`): scriptable, what the LAMMPS model file runs; first
  derivatives only, CPU only.

Every swap gives the reference's numbers to rounding (tests: 1e-12 in float64) and, except
``"operators"``, stays exact for second derivatives (they fall back to the reference
operations). Adding an implementation
(a GPU kernel, a custom operator) means one more swap here, not a branch in the reference.
The state dict of the copy equals the reference's (swaps register the same parameters).
"""

from __future__ import annotations

import copy
import os
from types import ModuleType

import torch
from torch import nn

from openmace.accel.contraction import CompiledContraction, FrozenContraction
from openmace.accel.linear import FrozenElementLinear, FrozenLinear
from openmace.accel.messages import InferenceMessages
from openmace.accel.operators import (
    FusedOperatorMessages,
    OperatorContraction,
    OperatorMessages,
)
from openmace.accel.training import TrainingMessages
from openmace.kernels import cpu_kernels
from openmace.model import MACE
from openmace.model.interaction import EdgeMessages
from openmace.model.product import SymmetricContraction
from openmace.model.radial import MLP
from openmace.o3.linear import ElementLinear, EquivariantLinear

IMPLEMENTATIONS = ("auto", "compiled", "pytorch", "reference", "operators")


def _compiled_kernels(like: torch.Tensor, implementation: str) -> ModuleType | None:
    """The compiled kernels module when ``implementation`` asks for them and they apply to
    tensors like ``like`` (CPU, float32/float64)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, not {implementation!r}")
    if implementation in ("pytorch", "reference"):
        return None
    if implementation == "operators":  # the kernels' operators must be registered: build them
        if cpu_kernels() is None:
            raise RuntimeError(
                "the compiled operators need the compiled CPU kernels, which cannot be built "
                "here (a C++ compiler and ninja; see the log for the build error)"
            )
        return None
    if implementation == "auto" and os.environ.get("OPENMACE_KERNELS", "1") == "0":
        return None
    applies = like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64)
    kernels = cpu_kernels() if applies else None
    if implementation == "compiled" and kernels is None:
        raise RuntimeError(
            "the compiled CPU kernels cannot be used here (they need a CPU model in float32 or "
            "float64 and a C++ compiler with ninja; see the log for the build error)"
        )
    return kernels


def inference_messages(
    reference: EdgeMessages | TrainingMessages, implementation: str = "auto"
) -> nn.Module:
    """The swap of one :class:`EdgeMessages` (its parameters are shared, not copied)."""
    if isinstance(reference, TrainingMessages):  # a model being trained: its reference
        reference = reference.reference
    kernels = _compiled_kernels(reference.tensor_product.cg_matrix, implementation)
    if implementation == "reference":
        return reference
    if implementation == "operators":
        if isinstance(reference.radial_mlp, MLP):
            return FusedOperatorMessages(reference)
        return OperatorMessages(reference)
    return InferenceMessages(reference, kernels)


def inference_contraction(
    reference: SymmetricContraction, implementation: str = "auto"
) -> nn.Module:
    """The swap of one :class:`SymmetricContraction` (its parameters are shared, not copied)."""
    kernels = _compiled_kernels(reference.tree_basis, implementation)
    if implementation == "operators":
        return OperatorContraction(reference)
    if kernels is not None:
        return CompiledContraction(reference, kernels)
    return FrozenContraction(reference)


def for_inference(model: MACE, implementation: str = "auto") -> MACE:
    """A frozen copy of ``model`` with the fast operators swapped in (see the module docstring).

    The copy lives on the model's device and dtype; convert again after moving a model. The
    original is not changed; later changes to it do not reach the copy."""
    _compiled_kernels(model.atomic_energies, implementation)  # checks the name first
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    for interaction in frozen.interactions:
        interaction.messages = inference_messages(interaction.messages, implementation)
    for product in frozen.products:
        product.contraction = inference_contraction(product.contraction, implementation)
    if implementation != "reference":  # plain operations: what the TorchScript export scripts
        swap_linear_maps(frozen)
    return frozen


def swap_linear_maps(model: nn.Module) -> None:
    """Every :class:`EquivariantLinear` and :class:`ElementLinear` in ``model`` swapped, in
    place, for its frozen form (:mod:`openmace.accel.linear`; parameters shared). A map
    without a path (zero output) stays as it is."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not getattr(child, "paths", True):
                continue
            if type(child) is EquivariantLinear:
                setattr(parent, name, FrozenLinear(child))
            elif type(child) is ElementLinear:
                setattr(parent, name, FrozenElementLinear(child))


def for_training(model: MACE, implementation: str = "auto") -> MACE:
    """``model`` itself, its edge messages swapped for :class:`TrainingMessages` (compiled
    kernels with a first and second derivative; parameters shared, state dict unchanged) when
    ``implementation`` allows the compiled kernels (``"auto"``, ``"compiled"``) and they apply
    to the model (CPU, float32/float64); otherwise unchanged. Training results equal the
    reference's to rounding (tests: parameter gradients of an energy + force loss, 1e-10)."""
    kernels = _compiled_kernels(model.atomic_energies, implementation)
    if kernels is None or implementation not in ("auto", "compiled"):
        return model
    for interaction in model.interactions:
        if isinstance(interaction.messages, EdgeMessages):
            interaction.messages = TrainingMessages(interaction.messages)
    return model


__all__ = [
    "IMPLEMENTATIONS",
    "for_inference",
    "for_training",
    "inference_contraction",
    "inference_messages",
    "swap_linear_maps",
]
