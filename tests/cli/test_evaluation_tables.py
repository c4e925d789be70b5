"""Error tables and parity plots stay bounded on large sets, and compute what they say."""

from __future__ import annotations

import numpy as np

from openmace.evaluation import metrics, plots
from openmace.evaluation.metrics import Predictions, error_rows


def predictions(n: int, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    p = Predictions()
    for i in range(n):
        kind = "a" if i % 3 else "b"
        forces = rng.normal(size=(1 + i % 5, 3))
        p.config_types.append(kind)
        p.energy_ref.append(float(i))
        p.energy_pred.append(float(i) + rng.normal())
        p.energy_type.append(kind)
        p.forces_ref.append(forces)
        p.forces_pred.append(forces + rng.normal(size=forces.shape))
        p.forces_type.append(kind)
    return p


def test_errors_by_chunks_equal_the_direct_formula(monkeypatch):
    p = predictions(50)
    monkeypatch.setattr(metrics, "ERROR_CHUNK", 7)  # several chunks, the last partial
    rows = {r["config_type"]: r for r in error_rows(p)}
    for name in ("a", "b", "all"):
        chosen = [k for k, t in enumerate(p.forces_type) if name == "all" or t == name]
        diff = np.concatenate([(p.forces_pred[k] - p.forces_ref[k]).ravel() for k in chosen])
        assert np.isclose(rows[name]["forces_mae"], 1000 * np.abs(diff).mean(), rtol=1e-12)
        assert np.isclose(rows[name]["forces_rmse"], 1000 * np.sqrt((diff**2).mean()), rtol=1e-12)
        e = np.array([p.energy_pred[k] - p.energy_ref[k] for k in chosen])
        assert np.isclose(rows[name]["energy_mae"], 1000 * np.abs(e).mean(), rtol=1e-12)


def test_parity_plot_draws_a_fixed_sample_of_large_sets(monkeypatch, tmp_path):
    monkeypatch.setattr(plots, "PARITY_POINTS", 40)
    sizes = [3 * (1 + i % 5) for i in range(100)]
    chosen = plots._sample(100, sizes)
    assert np.array_equal(chosen, plots._sample(100, sizes))  # the same every time
    assert np.all(np.diff(chosen) > 0)  # in order, no repeats
    total = sum(sizes[k] for k in chosen)
    assert 40 <= total < 40 + max(sizes)  # just enough structures
    assert np.array_equal(plots._sample(5, sizes[:5]), np.arange(5))  # small sets: all
    drawn = []
    original = plots._label
    monkeypatch.setattr(plots, "_label", lambda *a: drawn.append(a) or original(*a))
    plots.plot_parity({"train": predictions(100)}, tmp_path / "parity.png")
    assert (tmp_path / "parity.png").stat().st_size > 0
    assert all(shown <= total_count for _, shown, total_count in drawn)
    assert any(shown < total_count for _, shown, total_count in drawn)
