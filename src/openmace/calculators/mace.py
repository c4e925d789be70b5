"""ASE calculator for openmace models.

    from openmace import MACECalculator
    atoms.calc = MACECalculator(model="model.safetensors", device="cpu", dtype="float64")

Properties: ``energy``, ``free_energy`` (eV), ``forces`` (eV/Å), ``stress`` (eV/Å³, Voigt, ASE
sign; fully periodic structures only), ``energies`` (per atom, eV). Given a list of models it
runs a committee: results are the mean, and ``energy_var`` (eV²), ``forces_var`` (eV²/Å², per
component), ``energy_comm`` and ``forces_comm`` hold the spread and the members' values.

Every evaluation validates the structure first
(:func:`openmace.data.validation.validate_structure`, a few tens of microseconds for small
structures: it reuses the skin neighbour list): non-finite or absurd positions, (nearly) flat
periodic cells and atoms closer than 0.1 Å raise :class:`~openmace.data.errors.DataError` (a
``ValueError``) naming the problem instead of returning NaN or crashing.

A :class:`MACE` object passed in is copied: the calculator evaluates a frozen copy in its own
device and dtype (:func:`openmace.accel.for_inference`: the fast operators) and never changes the
caller's model; later changes to that model (more training) do not reach the calculator.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from openmace.accel import for_inference
from openmace.calculators.neighbours import SkinNeighbourList
from openmace.data.validation import validate_structure
from openmace.io.model_file import load_model
from openmace.memory import check_memory
from openmace.model import MACE
from openmace.model.heads import single_head


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
    return getattr(torch, dtype)


def _first_half(pairs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Each pair once (a neighbour list holds every pair, then the same pairs reversed)."""
    half = len(pairs[0]) // 2
    return tuple(p[:half] for p in pairs)


def _charge_and_spin(atoms) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``atoms.info["charge"]`` (e) and ``["spin"]`` (multiplicity) as ``[1]`` tensors (None
    when absent: the model names what it needs)."""
    out = []
    for key in ("charge", "spin"):
        value = atoms.info.get(key)
        if value is None:
            out.append(None)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"atoms.info[{key!r}] must be a number, not {value!r}") from None
        if not np.isfinite(number) or number != round(number):
            raise ValueError(f"atoms.info[{key!r}] must be a whole number, not {value!r}")
        out.append(torch.tensor([number], dtype=torch.float64))
    return out[0], out[1]


class MACECalculator(Calculator):
    """ASE calculator for one openmace model or a committee of models.

    Args:
        model: a model file path, a :class:`MACE` (copied), or a list of them (a committee;
            they must share ``r_max``).
        device: where to evaluate (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        dtype: ``"float64"`` (default) or ``"float32"``.
        skin: Verlet skin of the neighbour list in Å (rebuilt when an atom moved more than
            half of it).
        implementation: the operators (:func:`openmace.accel.for_inference`): ``"auto"``
            (compiled CPU kernels where they apply), ``"compiled"``, ``"pytorch"`` or
            ``"reference"``.
        memory_limit: bytes an evaluation may use (default: ``OPENMACE_MEMORY_LIMIT``, else the
            memory the system reports available); larger work raises :class:`MemoryError`.
        head: the head of a multi-head model (name or index; default: the only head, else the
            one named ``default``; otherwise an error listing the heads).
        **kwargs: passed to ASE's :class:`~ase.calculators.calculator.Calculator`.

    Model files may be openmace files or mace-torch ``.model`` files (converted when loaded;
    nothing in the file is executed). Models that embed the total charge and spin (MACE-OMOL)
    read them from ``atoms.info["charge"]`` (e) and ``atoms.info["spin"]`` (multiplicity 2S+1).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model: str | Path | MACE | list[str | Path | MACE],
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float64",
        skin: float = 0.5,
        implementation: str = "auto",
        memory_limit: int | None = None,
        head: str | int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.device, self.dtype = torch.device(device), _dtype(dtype)
        self.implementation, self.memory_limit = implementation, memory_limit
        self.head = head
        items = model if isinstance(model, list | tuple) else [model]
        if not items:
            raise ValueError("MACECalculator needs at least one model")
        self.models = [self._load(m) for m in items]
        r_max = {m.config.r_max for m in self.models}
        if len(r_max) != 1:
            raise ValueError(f"committee models must share r_max, got {sorted(r_max)}")
        self.r_max = r_max.pop()
        self.neighbours = SkinNeighbourList(self.r_max, skin)

    def _load(self, model: str | Path | MACE) -> MACE:
        if isinstance(model, MACE):
            loaded = copy.deepcopy(model).to(device=self.device, dtype=self.dtype)
        else:
            loaded = load_model(model, dtype=self.dtype, device=self.device)
        self.heads = list(loaded.config.heads)
        return for_inference(single_head(loaded, self.head), self.implementation)

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes, plus a change of ``info["charge"]``/``["spin"]`` for models that
        embed them (ASE does not compare ``info``)."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and any(m.embedding_inputs for m in self.models):
            keys = ("charge", "spin")
            if [atoms.info.get(k) for k in keys] != [self.atoms.info.get(k) for k in keys]:
                changes.append("info")
        return changes

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        self.results = {}
        atoms = self.atoms
        validate_structure(  # NaN or absurd positions, flat cells, atoms on top of each other
            atoms.positions,
            atoms.numbers,
            atoms.cell.array,
            atoms.pbc,
            source="atoms",
            index=None,
            pairs=lambda: _first_half(self.neighbours.pairs(atoms)),
        )
        graph, rank = self.neighbours.element_ordered_graph(atoms)
        if any(m.embedding_inputs for m in self.models):
            graph.total_charge, graph.total_spin = _charge_and_spin(atoms)
        for m in self.models:
            check_memory(m, len(self.atoms), graph.edge_index.shape[1], self.memory_limit)
        periodic = bool(self.atoms.pbc.all())
        outs = [m(graph, compute_forces=True, compute_stress=periodic) for m in self.models]
        energy = np.array([o["energy"].item() for o in outs])
        forces = np.stack([o["forces"].detach().cpu().double().numpy() for o in outs])
        energies = np.stack([o["node_energy"].detach().cpu().double().numpy() for o in outs])
        if rank is not None:  # back to the order of the atoms
            forces, energies = forces[:, rank], energies[:, rank]
        self.results = {
            "energy": float(energy.mean()),
            "free_energy": float(energy.mean()),
            "forces": forces.mean(axis=0),
            "energies": energies.mean(axis=0),
        }
        if periodic:
            stress = np.stack([o["stress"][0].detach().cpu().double().numpy() for o in outs])
            s = stress.mean(axis=0)
            self.results["stress"] = np.array(
                [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
            )
        if len(self.models) > 1:
            self.results.update(
                energy_var=float(energy.var()),
                forces_var=forces.var(axis=0),
                energy_comm=energy,
                forces_comm=forces,
            )
