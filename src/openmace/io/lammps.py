"""The model file of LAMMPS' ``pair_style openmace`` (``openmace export --lammps``).

A TorchScript module (PyTorch alone runs it) whose ``forward`` takes one rank's atoms, local
atoms first and then ghost atoms (periodic images and atoms of neighbouring ranks, as explicit
positions: no cell, no shifts):

    positions [n, 3] (Å), atomic_numbers [n] (int64), edge_index [2, n_edges] (int64; sender,
    receiver: every pair closer than r_max, both directions), num_local (int)

and returns ``energy`` [1] (eV): the energy of the first ``num_local`` atoms, ``node_energy``
[num_local] (eV) and ``forces`` [n, 3] (eV/Å) = -∂energy/∂positions for every atom, ghosts
included (LAMMPS adds a ghost's force to its owner). Why the energy of local atoms only, and why
this is exact on any number of ranks: ``plugins/lammps/pair_openmace.cpp``.

``exchange`` (same arguments and ``owners`` [n]) is the per-layer alternative: ghosts only to
r_max, node updates of the local atoms only, and the ghosts' node features taken from their
owners between layers (:mod:`openmace.model.halo`; in LAMMPS by MPI communication). ``periodic``
evaluates one rank's fully periodic box as the ASE calculator does.

The extra file ``lammps.txt`` tells the plugin what it needs without a JSON parser, one
``key value`` per line: ``openmace-lammps`` (:data:`INTERFACE_VERSION`; the plugin refuses
another), ``r_max`` (Å), ``num_layers``, ``dtype``, ``elements`` (``symbol:Z`` pairs),
``openmace`` (the exporting version), ``implementation`` (``operators`` or ``reference``) and
``exchange_width`` (floats per atom exchanged between layers; 0 without the operators).
``metadata.json`` is written as for the TorchScript export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from ase.data import chemical_symbols
from torch import nn

from openmace.accel import for_inference
from openmace.io.torchscript import EXTRA_FILE, export_metadata, script_module
from openmace.model import MACE

#: version of the model interface (forward's arguments and outputs, lammps.txt, the schemas of
#: the torch.ops.openmace operators the file calls); the plugin's INTERFACE_VERSION in
#: pair_openmace.cpp must be equal. 4: the edge operators take the number of receiving atoms
#: and a domain's pairs and one-way edges in one call
INTERFACE_VERSION = 4
LAMMPS_FILE = "lammps.txt"


class _RankAtoms(nn.Module):
    """Adapter from one LAMMPS rank's atoms to :meth:`MACE.energy` (see the module docstring)."""

    def __init__(self, model: MACE) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        num_local: int,
    ) -> dict[str, torch.Tensor]:
        return self._local_energy(positions, atomic_numbers, edge_index, num_local, None)

    @torch.jit.export
    def exchange(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        num_local: int,
        owners: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """As :meth:`forward` with ghosts only out to r_max: the edges end on local atoms
        (pairs of local atoms both ways, then ghost -> local edges one way, as the plugin
        sends them; or all pairs in reversed halves), and before every layer after the first
        the ghosts' node features are their owners' (``owners`` [n]: k for a local atom; the
        owner's index, or -1 where LAMMPS' communication supplies them:
        :mod:`openmace.model.halo`)."""
        return self._local_energy(positions, atomic_numbers, edge_index, num_local, owners)

    def _local_energy(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        num_local: int,
        owners: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        reference = self.model.atomic_energies
        positions = positions.to(device=reference.device, dtype=reference.dtype).detach()
        positions.requires_grad_(True)
        n, num_edges = positions.shape[0], edge_index.shape[1]
        _, node_energy = self.model.energy(
            positions,
            atomic_numbers.to(device=reference.device, dtype=torch.long),
            positions.new_zeros((1, 3, 3)),
            edge_index.to(device=reference.device, dtype=torch.long),
            positions.new_zeros((num_edges, 3)),
            torch.zeros(n, dtype=torch.long, device=reference.device),
            1,
            owners=owners if owners is None else owners.to(reference.device),
            num_local=num_local,
        )
        local = node_energy[:num_local]
        energy = local.sum()
        grads = torch.autograd.grad([energy], [positions], allow_unused=True)
        grad = grads[0]
        forces = -grad if grad is not None else torch.zeros_like(positions)
        return {
            "energy": energy.detach().reshape(1),
            "node_energy": local.detach(),
            "forces": forces.detach(),
        }

    @torch.jit.export
    def periodic(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        edge_index: torch.Tensor,
        unit_shifts: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """A fully periodic box on one rank: the box's atoms only, edges to periodic images by
        ``unit_shifts`` (edge vector = ``r[receiver] - r[sender] + unit_shifts @ cell``), as
        the ASE calculator evaluates it: ``energy`` [1], ``node_energy`` [n], ``forces`` [n, 3]
        and ``virials`` [3, 3] (eV, = -∂E/∂strain)."""
        reference = self.model.atomic_energies
        device, dtype = reference.device, reference.dtype
        n = positions.shape[0]
        out = self.model.compute_positional(
            positions.to(device=device, dtype=dtype),
            atomic_numbers.to(device=device, dtype=torch.long),
            cell.to(device=device, dtype=dtype).reshape(1, 3, 3),
            torch.ones((1, 3), dtype=torch.bool, device=device),
            edge_index.to(device=device, dtype=torch.long),
            unit_shifts.to(device=device, dtype=dtype),
            torch.zeros(n, dtype=torch.long, device=device),
            1,
            True,
            True,
            False,
        )
        return {
            "energy": out["energy"].detach().reshape(1),
            "node_energy": out["node_energy"].detach(),
            "forces": out["forces"].detach(),
            "virials": out["virials"].detach().reshape(3, 3),
        }


def exchange_width(model: MACE) -> int:
    """Floats per atom of the widest node features passed between layers (0: one layer)."""
    channels = model.config.features.channels
    return max((channels * sum(p.dims_out) for p in model.products[:-1]), default=0)


def lammps_fields(model: MACE) -> dict[str, str]:
    """The ``lammps.txt`` entries of ``model``."""
    from openmace.version import __version__

    cfg = model.config
    return {
        "openmace-lammps": str(INTERFACE_VERSION),
        "r_max": repr(float(cfg.r_max)),
        "num_layers": str(len(model.interactions)),
        "dtype": str(model.atomic_energies.dtype).removeprefix("torch."),
        "elements": " ".join(f"{chemical_symbols[z]}:{z}" for z in cfg.atomic_numbers),
        "openmace": __version__,
    }


def export_lammps(model: MACE, path: str | Path, operators: bool = True) -> Path:
    """Write ``model`` (one head, no per-structure inputs) as the model file of
    ``pair_style openmace``, atomically. ``operators``: run the compiled kernels as PyTorch
    operators (``torch.ops.openmace``, compiled into the plugin; CPU); else the reference
    PyTorch operations (any device: ``pair_style openmace device cuda``)."""
    from openmace.io.files import atomic_open

    cfg = model.config
    if len(cfg.heads) > 1:
        raise ValueError(
            f"a multi-head model is exported one head at a time (heads: {cfg.heads}): "
            "openmace export --lammps --head NAME"
        )
    if cfg.embedding_specs:
        raise ValueError(
            "this model needs per-structure inputs "
            f"({', '.join(cfg.embedding_specs)}), which LAMMPS does not provide"
        )
    implementation = "operators" if operators else "reference"
    frozen = for_inference(model, implementation)
    if operators:
        from openmace.accel.operators import OperatorHalo

        frozen.halo = OperatorHalo()
    scripted = script_module(_RankAtoms(frozen))
    fields = {**lammps_fields(model), "implementation": implementation}
    # the node features LAMMPS exchanges per atom (floats): features between layers
    fields["exchange_width"] = str(exchange_width(model) if operators else 0)
    text = "".join(f"{key} {value}\n" for key, value in fields.items())
    metadata = json.dumps(export_metadata(model), indent=1)
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        torch.jit.save(scripted, fh, _extra_files={EXTRA_FILE: metadata, LAMMPS_FILE: text})
    return path
