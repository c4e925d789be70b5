"""TorchScript export: same numbers as the eager model, loadable with PyTorch alone."""

from __future__ import annotations

import json
import subprocess
import sys

import ase
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from openmace import save_model
from openmace.cli.main import main
from openmace.data.graph import graph_from_atoms
from openmace.io.torchscript import EXTRA_FILE, export_torchscript, script_model
from tests.helpers import make_model, molecule, triclinic_cell

VARIANTS = {
    "default": {},
    "mixed_parity_zbl": {"pair_repulsion": True, "hidden_irreps": "4x0e+4x0o+4x1o+4x1e"},
    "correlation_1_nonresidual": {"correlation": 1, "residual_first": False},
    "three_layers_L2": {"num_interactions": 3, "hidden_irreps": "4x0e+4x1o+4x2e", "max_ell": 2},
}


def inputs(atoms: ase.Atoms, r_max: float) -> tuple[torch.Tensor, ...]:
    g = graph_from_atoms(atoms, r_max)
    return g.positions, g.atomic_numbers, g.cell[0], g.pbc[0], g.edge_index, g.unit_shifts


def copper_only() -> ase.Atoms:
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.mark.parametrize("variant", VARIANTS)
def test_scripted_model_equals_eager(variant):
    model = make_model(**VARIANTS[variant])
    scripted = script_model(model)
    for atoms in (molecule(), triclinic_cell(), copper_only()):
        eager = model(graph_from_atoms(atoms, model.config.r_max), compute_stress=True)
        out = scripted(*inputs(atoms, model.config.r_max), compute_stress=True)
        assert out["energy"].shape == (1,)
        for key in ("energy", "node_energy", "forces", "stress", "virials"):
            torch.testing.assert_close(out[key], eager[key], rtol=0, atol=1e-12)


def test_exported_file_runs_without_openmace_or_e3nn(tmp_path):
    model = make_model(pair_repulsion=True)
    path = export_torchscript(model, tmp_path / "model.pt")
    atoms = triclinic_cell()
    eager = model(graph_from_atoms(atoms, model.config.r_max), compute_stress=True)
    np.savez(tmp_path / "in.npz", *[t.numpy() for t in inputs(atoms, model.config.r_max)])
    script = f"""
import sys, json
for name in ("openmace", "e3nn", "ase"):
    sys.modules[name] = None  # any import of these now fails
import numpy as np, torch
extra = {{"{EXTRA_FILE}": ""}}
module = torch.jit.load({str(path)!r}, _extra_files=extra)
data = np.load({str(tmp_path / "in.npz")!r})
args = [torch.from_numpy(data[f"arr_{{i}}"]) for i in range(6)]
out = module(*args, compute_stress=True)
print(json.dumps({{"metadata": json.loads(extra["{EXTRA_FILE}"]),
                  **{{k: v.tolist() for k, v in out.items()}}}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["metadata"]["r_max"] == model.config.r_max
    assert result["metadata"]["atomic_numbers"] == model.config.atomic_numbers
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(result[key], eager[key].detach().numpy(), rtol=0, atol=1e-12)


def test_scripted_model_rejects_unknown_elements():
    model = make_model()
    scripted = script_model(model)
    atoms = molecule()
    atoms.numbers[0] = 14  # Si: not in the model
    with pytest.raises(Exception, match="not in this model's elements"):
        scripted(*inputs(atoms, model.config.r_max))


def test_export_command(tmp_path, capsys):
    model = make_model()
    source = save_model(model, tmp_path / "m.safetensors")
    target = tmp_path / "m.pt"
    assert main(["export", "--torchscript", str(source), "-o", str(target)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"model: {target}"
    extra = {EXTRA_FILE: ""}
    loaded = torch.jit.load(str(target), _extra_files=extra)
    assert json.loads(extra[EXTRA_FILE])["dtype"] == "float64"
    atoms = molecule()
    eager = model(graph_from_atoms(atoms, model.config.r_max))
    out = loaded(*inputs(atoms, model.config.r_max))
    torch.testing.assert_close(out["forces"], eager["forces"], rtol=0, atol=1e-12)


def test_export_refuses_a_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(2)}, bad)
    assert main(["export", "--torchscript", str(bad), "-o", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()
