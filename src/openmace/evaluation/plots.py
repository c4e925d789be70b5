"""Learning-curve and parity plots (PNG, matplotlib's non-interactive backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openmace.evaluation.metrics import Predictions


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(history: list[dict], path: Path) -> Path:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].semilogy(epochs, [h["train_loss"] for h in history], label="train")
    axes[0].semilogy(epochs, [h["valid_loss"] for h in history], label="validation (EMA)")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    for ax, key, label in (
        (axes[1], "valid_energy_rmse", "validation E RMSE (meV/atom)"),
        (axes[2], "valid_forces_rmse", "validation F RMSE (meV/Å)"),
    ):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.semilogy(epochs, values)
        ax.set_ylabel(label)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_parity(sets: dict[str, Predictions], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, pred in sets.items():
        if pred.energy_ref:
            axes[0].scatter(pred.energy_ref, pred.energy_pred, s=6, alpha=0.6, label=name)
        if pred.forces_ref:
            ref = np.concatenate([f.ravel() for f in pred.forces_ref])
            out = np.concatenate([f.ravel() for f in pred.forces_pred])
            axes[1].scatter(ref, out, s=3, alpha=0.4, label=name)
    axes[0].tick_params(axis="x", labelrotation=30)
    for ax, unit in ((axes[0], "energy (eV/atom)"), (axes[1], "force component (eV/Å)")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"reference {unit}")
        ax.set_ylabel(f"predicted {unit}")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
