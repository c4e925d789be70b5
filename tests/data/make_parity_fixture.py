"""Make mace-torch parity fixtures beyond the three shared ones (run where mace-torch is installed).

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python tests/data/make_parity_fixture.py

For each entry of FIXTURES it builds a mace-torch ``ScaleShiftMACE`` in float64, perturbs every
parameter with Gaussian noise (so no zero weight hides a mistake), evaluates structures with
mace-torch's ASE calculator and writes ``parity/<name>/`` in the format of the shared fixtures:
``config.json``, ``weights.safetensors.xz``, ``reference.json``, ``structures.xyz``.
The fixtures cover what the shared ones do not: odd-parity hidden irreps (Clebsch-Gordan sign
flips of e3nn 0.4.4), correlation 1 and 4, one and three layers, per-layer correlation, L = 3
hidden features, ZBL repulsion.
"""

from __future__ import annotations

import json
import lzma
import tempfile
from pathlib import Path

import ase
import ase.io
import numpy as np
import torch
from e3nn import o3
from mace.calculators import MACECalculator
from mace.modules import ScaleShiftMACE, interaction_classes
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)
HERE = Path(__file__).parent / "parity"

FIXTURES = {
    "p4_mixed_parity_zbl": dict(
        hidden_irreps="8x0e+8x0o+8x1o+8x1e+8x2o",
        max_ell=2,
        correlation=2,
        num_interactions=2,
        atomic_numbers=[1, 6, 8],
        r_max=4.0,
        pair_repulsion=True,
        first="Residual",
    ),
    "p5_one_layer_corr4": dict(
        hidden_irreps="8x0e+8x1o",
        max_ell=1,
        correlation=4,
        num_interactions=1,
        atomic_numbers=[6, 8],
        r_max=3.5,
        pair_repulsion=False,
        first="Residual",
    ),
    "p6_three_layers_L3": dict(
        hidden_irreps="4x0e+4x1o+4x2e+4x3o",
        max_ell=3,
        correlation=[2, 1, 3],
        num_interactions=3,
        atomic_numbers=[1, 8, 29],
        r_max=3.8,
        pair_repulsion=False,
        first="NonResidual",
    ),
}


def structures(numbers: list[int], rng: np.random.Generator) -> list[ase.Atoms]:
    def cluster(n):
        pos = rng.normal(scale=1.3, size=(n, 3))
        while True:
            d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(n)
            if d.min() > 0.9:
                return pos
            pos = rng.normal(scale=1.4, size=(n, 3))

    out = [ase.Atoms(numbers=rng.choice(numbers, 10), positions=cluster(10))]
    out.append(ase.Atoms(numbers=[numbers[0]], positions=[[0.0, 0.0, 0.0]]))
    cell = np.array([[4.3, 0.2, 0.1], [0.4, 4.1, -0.3], [0.2, 0.5, 4.6]])
    for pbc, n in (([True] * 3, 8), ([True, True, False], 6)):
        while True:
            atoms = ase.Atoms(
                numbers=rng.choice(numbers, n),
                scaled_positions=rng.random((n, 3)),
                cell=cell,
                pbc=pbc,
            )
            d = atoms.get_all_distances(mic=True) + 10 * np.eye(n)
            if d.min() > 1.0:
                break
        out.append(atoms)
    out.append(
        ase.Atoms(
            numbers=numbers[-1:] * 2,
            positions=[[0, 0, 0], [1.1, 1.0, 0.9]],
            cell=[[2.3, 0.0, 0.0], [0.3, 2.4, 0.0], [0.1, 0.2, 2.5]],
            pbc=True,
        )
    )
    return out


def build(spec: dict, rng: np.random.Generator) -> tuple[ScaleShiftMACE, dict]:
    first = (
        "RealAgnosticResidualInteractionBlock"
        if spec["first"] == "Residual"
        else "RealAgnosticInteractionBlock"
    )
    e0 = rng.normal(-10, 5, len(spec["atomic_numbers"])).round(6).tolist()
    config = {
        "model_class": "ScaleShiftMACE",
        "mace_torch_version": "0.3.16",
        "e3nn_version": "0.4.4",
        "r_max": spec["r_max"],
        "num_bessel": 8,
        "num_polynomial_cutoff": 5,
        "max_ell": spec["max_ell"],
        "interaction_cls": "RealAgnosticResidualInteractionBlock",
        "interaction_cls_first": first,
        "num_interactions": spec["num_interactions"],
        "num_elements": len(spec["atomic_numbers"]),
        "hidden_irreps": spec["hidden_irreps"],
        "MLP_irreps": "16x0e",
        "gate": "silu",
        "radial_MLP": [16, 16],
        "radial_type": "bessel",
        "atomic_energies": e0,
        "avg_num_neighbors": 7.5,
        "atomic_numbers": spec["atomic_numbers"],
        "correlation": spec["correlation"],
        "atomic_inter_scale": 0.8,
        "atomic_inter_shift": -0.1,
        "pair_repulsion": spec["pair_repulsion"],
        "distance_transform": None,
        "use_reduced_cg": False,
        "heads": ["default"],
    }
    model = ScaleShiftMACE(
        r_max=config["r_max"],
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=config["max_ell"],
        interaction_cls=interaction_classes[config["interaction_cls"]],
        interaction_cls_first=interaction_classes[first],
        num_interactions=config["num_interactions"],
        num_elements=config["num_elements"],
        hidden_irreps=o3.Irreps(config["hidden_irreps"]),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array(e0),
        avg_num_neighbors=config["avg_num_neighbors"],
        atomic_numbers=config["atomic_numbers"],
        correlation=config["correlation"],
        gate=torch.nn.functional.silu,
        pair_repulsion=config["pair_repulsion"],
        radial_MLP=config["radial_MLP"],
        radial_type="bessel",
        use_reduced_cg=False,
        atomic_inter_scale=0.8,
        atomic_inter_shift=-0.1,
    )
    generator = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.numel():
                p.add_(0.1 * torch.randn(p.shape, generator=generator) * (p.abs().mean() + 0.1))
    config["num_parameters"] = sum(p.numel() for p in model.parameters())
    return model, config


def main() -> None:
    for k, (name, spec) in enumerate(FIXTURES.items()):
        rng = np.random.default_rng(100 + k)
        model, config = build(spec, rng)
        folder = HERE / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=1))
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(model, f"{tmp}/m.model")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{tmp}/w.st")
            (folder / "weights.safetensors.xz").write_bytes(
                lzma.compress(Path(f"{tmp}/w.st").read_bytes(), preset=9)
            )
            calc = MACECalculator(
                model_paths=f"{tmp}/m.model", device="cpu", default_dtype="float64"
            )
            refs, frames = [], structures(config["atomic_numbers"], rng)
            for atoms in frames:
                # what structures.xyz stores exactly: positions and cell rounded to 1e-6 Å
                atoms.set_cell(np.round(atoms.get_cell()[:], 6))
                atoms.set_positions(np.round(atoms.get_positions(), 6))
                atoms.calc = calc
                energy = atoms.get_potential_energy()
                periodic = bool(atoms.pbc.all())
                refs.append(
                    {
                        "energy": float(energy),
                        "forces": atoms.get_forces().tolist(),
                        "node_energy": calc.results["node_energy"].tolist(),
                        "stress": (
                            atoms.get_stress(voigt=False).reshape(-1).tolist() if periodic else None
                        ),
                    }
                )
                atoms.calc = None
        ase.io.write(folder / "structures.xyz", frames)
        (folder / "reference.json").write_text(
            json.dumps(
                {
                    "units": {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3 (ASE sign, 3x3)"},
                    "note": "node_energy is mace-torch's per-atom energy with the E0 term excluded",
                    "structures": refs,
                }
            )
        )
        print(name, config["num_parameters"], "parameters,", len(frames), "structures")


if __name__ == "__main__":
    main()
