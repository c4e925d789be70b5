"""TorchScript export: a model other engines (LAMMPS-style C++ drivers, plain PyTorch) can run.

The exported module needs only PyTorch (``torch.jit.load``): no openmace, e3nn or ASE. Its
``forward`` takes one structure and its neighbour list:

    positions [n, 3] (Å), atomic_numbers [n] (int64), cell [3, 3] (Å, rows are lattice vectors),
    pbc [3] (bool), edge_index [2, n_edges] (int64; sender, receiver), unit_shifts [n_edges, 3]
    (integer lattice translations as floats: edge vector = r_receiver - r_sender + S · cell),
    compute_stress (bool)

and returns a dict: ``energy`` [1] (eV), ``node_energy`` [n] (eV), ``forces`` [n, 3] (eV/Å) and,
with ``compute_stress``, ``stress`` [1, 3, 3] (eV/Å³) and ``virials`` [1, 3, 3] (eV). Models that
embed the total charge and spin (MACE-OMOL) also take ``total_charge`` [1] (e) and
``total_spin`` [1] (multiplicity 2S+1); a multi-head model is exported one head at a time
(``openmace export --head``). The caller
builds the neighbour list with the cutoff stored in the file (all pairs closer than ``r_max``,
both directions, no self-pairs); the metadata is in the extra file ``metadata.json``
(``torch.jit.load(path, _extra_files={"metadata.json": ""})``).

The exported module is the ``"reference"`` inference copy of :func:`openmace.accel.for_inference`
(plain PyTorch operations, the symmetric contraction's weights contracted once), so it gives
the eager model's numbers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openmace.accel import for_inference
from openmace.model import MACE

EXTRA_FILE = "metadata.json"


class _SingleStructure(nn.Module):
    """Adapter from one structure's tensors to :meth:`MACE.compute`."""

    def __init__(self, model: MACE) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        edge_index: torch.Tensor,
        unit_shifts: torch.Tensor,
        compute_stress: bool = False,
        total_charge: torch.Tensor | None = None,
        total_spin: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        dtype = self.model.atomic_energies.dtype
        device = self.model.atomic_energies.device
        batch = torch.zeros(positions.shape[0], dtype=torch.long, device=device)
        out = self.model.compute_positional(
            positions.to(device=device, dtype=dtype),
            atomic_numbers.to(device=device, dtype=torch.long),
            cell.to(device=device, dtype=dtype).reshape(1, 3, 3),
            pbc.to(device=device, dtype=torch.bool).reshape(1, 3),
            edge_index.to(device=device, dtype=torch.long),
            unit_shifts.to(device=device, dtype=dtype),
            batch,
            1,
            True,
            compute_stress,
            False,
            None,
            None if total_charge is None else total_charge.to(device=device, dtype=dtype),
            None if total_spin is None else total_spin.to(device=device, dtype=dtype),
        )
        return {key: value.detach() for key, value in out.items()}


def export_metadata(model: MACE) -> dict[str, Any]:
    from openmace.version import __version__

    cfg = model.config
    return {
        "format": "openmace-torchscript",
        "openmace_version": __version__,
        "atomic_numbers": list(cfg.atomic_numbers),
        "r_max": cfg.r_max,
        "dtype": str(model.atomic_energies.dtype).removeprefix("torch."),
        "units": {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³"},
        "inputs": [
            "positions",
            "atomic_numbers",
            "cell",
            "pbc",
            "edge_index",
            "unit_shifts",
            "compute_stress",
            "total_charge",
            "total_spin",
        ],
        # per-structure inputs the model needs ([1] tensors: charge in e, spin multiplicity)
        "required_inputs": list(cfg.embedding_specs or {}),
        "head": cfg.heads[0],
    }


def script_model(model: MACE) -> torch.jit.ScriptModule:
    """A TorchScript module computing energy and forces of one structure (model unchanged)."""
    heads = model.config.heads
    if len(heads) > 1:
        raise ValueError(
            f"a multi-head model is exported one head at a time (heads: {heads}): "
            "openmace.model.heads.single_head(model, name), or openmace export --head NAME"
        )
    return script_module(_SingleStructure(for_inference(model, "reference")))


def script_module(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(module)`` without PyTorch's deprecation warning."""
    with warnings.catch_warnings():
        # PyTorch 2.13 marks torch.jit.script deprecated in favour of torch.export; TorchScript
        # is what C++ MD engines load today, and forces need autograd.grad inside the graph
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.jit.script(module)


def export_torchscript(model: MACE, path: str | Path) -> Path:
    """Write ``model`` as a TorchScript file (see the module docstring for its interface),
    atomically: a failed write leaves no partial file and an existing file unchanged."""
    from openmace.io.files import atomic_open

    path = Path(path)
    scripted = script_model(model)
    metadata = json.dumps(export_metadata(model), indent=1)
    with atomic_open(path, "wb") as fh:
        torch.jit.save(scripted, fh, _extra_files={EXTRA_FILE: metadata})
    return path
