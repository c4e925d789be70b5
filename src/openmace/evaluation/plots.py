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


#: points per set and panel of the parity plot; larger sets are drawn from a fixed-seed sample
#: of their structures (300 000 structures, 17 M force components: 4.9 GB and 89 s to plot in
#: full, benchmarks/README.md "Training at scale")
PARITY_POINTS = 100_000


def _sample(count: int, points_each: list[int] | None = None) -> np.ndarray:
    """Indices of the structures drawn: all when they give at most PARITY_POINTS points, else
    a fixed-seed random subset (in order) that gives about that many."""
    sizes = np.ones(count, dtype=np.int64) if points_each is None else np.asarray(points_each)
    if sizes.sum() <= PARITY_POINTS:
        return np.arange(count)
    order = np.random.default_rng(0).permutation(count)
    keep = order[: int(np.searchsorted(np.cumsum(sizes[order]), PARITY_POINTS)) + 1]
    return np.sort(keep)


def _label(name: str, shown: int, total: int) -> str:
    return name if shown == total else f"{name} ({shown:,} of {total:,})"


def plot_parity(sets: dict[str, Predictions], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, pred in sets.items():
        if pred.energy_ref:
            chosen = _sample(len(pred.energy_ref))
            ref, out = np.asarray(pred.energy_ref), np.asarray(pred.energy_pred)
            label = _label(name, len(chosen), len(ref))
            axes[0].scatter(ref[chosen], out[chosen], s=6, alpha=0.6, label=label)
        if pred.forces_ref:
            counts = [f.size for f in pred.forces_ref]
            chosen = _sample(len(counts), counts)
            ref = np.concatenate([pred.forces_ref[k].ravel() for k in chosen])
            out = np.concatenate([pred.forces_pred[k].ravel() for k in chosen])
            label = _label(name, ref.size, sum(counts))
            axes[1].scatter(ref, out, s=3, alpha=0.4, label=label)
    axes[0].tick_params(axis="x", labelrotation=30)
    for ax, unit in ((axes[0], "energy (eV/atom)"), (axes[1], "force component (eV/Å)")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"reference {unit}")
        ax.set_ylabel(f"predicted {unit}")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
