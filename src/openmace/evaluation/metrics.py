"""Predictions over a dataset and error tables (MAE / RMSE, split by config_type).

Units in tables: energy per atom in meV/atom, forces in meV/Å, stress in meV/Å³.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from openmace.data.configurations import Configuration
from openmace.data.dataset import GraphDataset
from openmace.evaluation.predict import predict_graphs
from openmace.model import MACE


@dataclass
class Predictions:
    """Reference and predicted values, one entry per labelled structure (energies per atom)."""

    config_types: list[str] = field(default_factory=list)
    energy_ref: list[float] = field(default_factory=list)  # eV/atom
    energy_pred: list[float] = field(default_factory=list)
    energy_type: list[str] = field(default_factory=list)
    forces_ref: list[np.ndarray] = field(default_factory=list)  # eV/Å, [n_i, 3]
    forces_pred: list[np.ndarray] = field(default_factory=list)
    forces_type: list[str] = field(default_factory=list)
    stress_ref: list[np.ndarray] = field(default_factory=list)
    stress_pred: list[np.ndarray] = field(default_factory=list)
    stress_type: list[str] = field(default_factory=list)


def predictions_from(configs: list[Configuration], outputs) -> Predictions:
    """Pair model outputs (:func:`openmace.evaluation.predict_configurations`) with labels."""
    out = Predictions()
    for config, result in zip(configs, outputs):
        out.config_types.append(config.config_type)
        if config.energy is not None:
            out.energy_ref.append(config.energy / len(config))
            out.energy_pred.append(result["energy"] / len(config))
            out.energy_type.append(config.config_type)
        if config.forces is not None:
            out.forces_ref.append(config.forces)
            out.forces_pred.append(result["forces"])
            out.forces_type.append(config.config_type)
        if config.stress is not None and result["stress"] is not None:
            out.stress_ref.append(config.stress)
            out.stress_pred.append(result["stress"])
            out.stress_type.append(config.config_type)
    return out


def predict(model: MACE, dataset: GraphDataset, batch_size: int) -> Predictions:
    """Predictions of ``model`` on a labelled data set, from the dataset's graphs (no neighbour
    list is rebuilt; they must hold the neighbours within the model's cutoff)."""
    if dataset.r_max < model.config.r_max:
        raise ValueError(
            f"dataset graphs were built within {dataset.r_max} Å, less than the model's r_max "
            f"{model.config.r_max} Å"
        )
    outputs = predict_graphs(model, dataset.graphs, batch_size)
    return predictions_from(dataset.configs, outputs)


ERROR_CHUNK = 4096  # structures whose differences are held at once


def _errors(ref: list, pred: list) -> tuple[float, float]:
    """MAE and RMSE over every component, summed chunk by chunk: memory for ERROR_CHUNK
    structures, not for the whole set (300 000 structures: +400 MB when concatenated)."""
    abs_sum = sq_sum = 0.0
    count = 0
    for a in range(0, len(ref), ERROR_CHUNK):
        pairs = zip(ref[a : a + ERROR_CHUNK], pred[a : a + ERROR_CHUNK])
        diff = np.concatenate([np.ravel(np.asarray(p) - np.asarray(r)) for r, p in pairs])
        abs_sum += float(np.abs(diff).sum())
        sq_sum += float((diff**2).sum())
        count += diff.size
    return abs_sum / count, float(np.sqrt(sq_sum / count))


def error_rows(predictions: Predictions) -> list[dict]:
    """One row per config_type plus an ``all`` row, errors in meV units."""
    types = sorted(set(predictions.config_types))
    rows = []
    for name in [*types, "all"] if len(types) > 1 else ["all"]:
        row: dict[str, float | str | int] = {"config_type": name}
        for quantity, unit_scale in (("energy", 1000.0), ("forces", 1000.0), ("stress", 1000.0)):
            ref = getattr(predictions, f"{quantity}_ref")
            pred = getattr(predictions, f"{quantity}_pred")
            kinds = getattr(predictions, f"{quantity}_type")
            chosen = [k for k, t in enumerate(kinds) if name == "all" or t == name]
            if not chosen:
                continue
            mae, rmse = _errors([ref[k] for k in chosen], [pred[k] for k in chosen])
            row[f"{quantity}_mae"], row[f"{quantity}_rmse"] = mae * unit_scale, rmse * unit_scale
            if quantity == "energy":
                row["structures"] = len(chosen)
        rows.append(row)
    return rows


HEADERS = [
    ("energy_mae", "E MAE meV/atom"),
    ("energy_rmse", "E RMSE meV/atom"),
    ("forces_mae", "F MAE meV/Å"),
    ("forces_rmse", "F RMSE meV/Å"),
    ("stress_mae", "σ MAE meV/Å³"),
    ("stress_rmse", "σ RMSE meV/Å³"),
]


def format_table(tables: dict[str, list[dict]]) -> str:
    """Text table: one block per set (train, valid, test), one row per config_type."""
    present = [(k, h) for k, h in HEADERS if any(k in r for rows in tables.values() for r in rows)]
    header = ["set", "config_type", "N"] + [h for _, h in present]
    lines = []
    for set_name, rows in tables.items():
        for row in rows:
            cells = [set_name, str(row["config_type"]), str(row.get("structures", "-"))]
            cells += [f"{row[k]:.2f}" if k in row else "-" for k, _ in present]
            lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]

    def fmt(cells):
        return "  ".join(
            str(c).rjust(w) if i > 1 else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        )

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *(fmt(c) for c in lines)])
