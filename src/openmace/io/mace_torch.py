"""Import mace-torch models: a hyperparameter folder (``config.json`` + ``weights.safetensors``,
the complete ``state_dict``) or, when mace-torch is importable, its pickled ``.model`` file.

The conversion is exact, not fitted. What differs between the two codes is folded into weights:

* e3nn 0.4.4's Clebsch-Gordan signs (see :mod:`openmace.o3.clebsch_gordan`): the sign of each
  channel-wise tensor-product path is absorbed into the radial MLP's output columns of that path.
* e3nn's SiLU normalisation constant is a Monte-Carlo estimate (10⁶ seeded samples); ours is
  exact. The ratio is folded into the layer after each activation.
* mace-torch's symmetric contraction weights multiply unsymmetrised coupling tensors
  ``U_matrix_ν`` (stored in the state dict). We symmetrise them, form the polynomial each
  element/channel computes, and project it onto our orthogonal coupling basis. The projection
  residual is checked: a basis that cannot represent the model is an error, never an
  approximation. Our weights are per coupling tree; the minimum-norm tree weights giving those
  basis coefficients are stored.
"""

from __future__ import annotations

import json
import math
from itertools import permutations
from pathlib import Path

import torch
from safetensors.torch import load_file

from openmace.model import MACE, MACEConfig
from openmace.model.radial import silu_normalisation
from openmace.o3 import FeatureIrreps, Irrep, coupling_basis, e3nn_044_sign, irreps_dim
from openmace.o3.coupling import monomial_multiplicity, monomials, tree_frame


class ConversionError(ValueError):
    """A mace-torch model that openmace cannot represent exactly."""


SUPPORTED_KEYS_WITH_DEFAULTS = {
    "radial_type": "bessel",
    "distance_transform": None,
    "gate": "silu",
    "apply_cutoff": True,
    "edge_irreps": None,
    "use_agnostic_product": False,
    "use_last_readout_only": False,
    "use_embedding_readout": False,
    "keep_last_layer_irreps": False,
    "use_so3": False,
    "embedding_specs": None,
}


def e3nn_silu_constant() -> float:
    """e3nn's ``normalize2mom(silu)``: 1/sqrt(mean silu(z)^2) over 10⁶ normals, seed 0."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(1_000_000, generator=generator, dtype=torch.float64)
    return float(torch.nn.functional.silu(z).pow(2).mean().pow(-0.5))


def _check_supported(cfg: dict) -> None:
    if cfg.get("model_class", "ScaleShiftMACE") not in ("ScaleShiftMACE", "MACE"):
        raise ConversionError(f"model class {cfg['model_class']!r} is not supported")
    for key, default in SUPPORTED_KEYS_WITH_DEFAULTS.items():
        value = cfg.get(key, default)
        if value in ("None", "none"):
            value = None
        if value != default and not (key == "gate" and "silu" in str(value)):
            raise ConversionError(f"mace-torch option {key}={value!r} is not supported")
    heads = cfg.get("heads") or ["default"]
    if len(heads) != 1:
        raise ConversionError(f"multi-head models are not supported (heads={heads})")
    for key in ("interaction_cls", "interaction_cls_first"):
        name = str(cfg.get(key, "RealAgnosticResidualInteractionBlock"))
        allowed = ("RealAgnosticResidualInteractionBlock", "RealAgnosticInteractionBlock")
        if not any(name.endswith(a) or name.endswith(a + "'>") for a in allowed):
            raise ConversionError(f"{key}={name!r} is not supported")
    if "Residual" not in str(cfg.get("interaction_cls", "Residual")):
        raise ConversionError(
            "only residual interaction blocks after the first layer are supported"
        )


def config_from_mace_torch(cfg: dict, state: dict[str, torch.Tensor]) -> MACEConfig:
    _check_supported(cfg)
    hidden = FeatureIrreps.parse(str(cfg["hidden_irreps"]))
    mlp = FeatureIrreps.parse(str(cfg.get("MLP_irreps", "16x0e")))
    e0 = state.get("atomic_energies_fn.atomic_energies")
    energies = e0.reshape(-1).tolist() if e0 is not None else list(cfg["atomic_energies"])
    scale = state.get("scale_shift.scale", torch.tensor(cfg.get("atomic_inter_scale", 1.0)))
    shift = state.get("scale_shift.shift", torch.tensor(cfg.get("atomic_inter_shift", 0.0)))
    correlation = cfg["correlation"]
    if isinstance(correlation, list) and len(set(correlation)) == 1:
        correlation = correlation[0]
    return MACEConfig(
        atomic_numbers=[int(z) for z in cfg["atomic_numbers"]],
        atomic_energies=energies,
        r_max=float(cfg["r_max"]),
        num_bessel=int(cfg["num_bessel"]),
        num_polynomial_cutoff=int(cfg["num_polynomial_cutoff"]),
        max_ell=int(cfg["max_ell"]),
        hidden_irreps=str(hidden),
        correlation=correlation,
        num_interactions=int(cfg["num_interactions"]),
        radial_mlp=[int(x) for x in cfg.get("radial_MLP") or [64, 64, 64]],
        readout_mlp=[mlp.channels],
        avg_num_neighbors=float(cfg["avg_num_neighbors"]),
        scale=float(scale.reshape(-1)[0]) if cfg.get("model_class") != "MACE" else 1.0,
        shift=float(shift.reshape(-1)[0]) if cfg.get("model_class") != "MACE" else 0.0,
        residual_first="Residual" in str(cfg.get("interaction_cls_first", "Residual")),
        pair_repulsion=bool(cfg.get("pair_repulsion", False)),
    )


def _linear_weights(flat: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Split e3nn's flat Linear/TensorProduct weight into per-instruction matrices."""
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[start : start + size].reshape(shape))
        start += size
    if start != flat.numel():
        raise ConversionError(f"weight of {flat.numel()} numbers, expected {start}")
    return out


def _symmetrised_polynomial(u: torch.Tensor, irrep: Irrep, nu: int, dim: int) -> torch.Tensor:
    """mace-torch ``U_matrix_ν`` ``[(2L+1,) dim^ν, K]`` → monomial coefficients ``[K, 2L+1, n]``."""
    if irrep.l == 0:
        u = u.unsqueeze(0)
    k = u.shape[-1]
    monos = monomials(dim, nu)
    out = torch.zeros(k, irrep.dim, len(monos), dtype=torch.float64)
    u = u.to(torch.float64)
    for n, mono in enumerate(monos):
        for perm in set(permutations(mono)):
            out[:, :, n] += u[(slice(None),) + perm].transpose(0, 1)
    return out


def _convert_contraction(prefix: str, state: dict, ours, irrep_index: int, irrep: Irrep) -> None:
    """Project one mace-torch ``Contraction`` onto our coupling basis (exact; checked)."""
    dim = irreps_dim(ours.irreps_in)
    for nu in range(1, ours.correlation + 1):
        idx = ours.correlation - 1 - nu
        w_key = f"{prefix}.weights_max" if nu == ours.correlation else f"{prefix}.weights.{idx}"
        u_key = f"{prefix}.U_matrix_{nu}"
        if u_key not in state:
            raise ConversionError(f"missing {u_key} in the state dict")
        theirs = _symmetrised_polynomial(state[u_key], irrep, nu, dim)  # [K, M, n]
        weights = state[w_key].to(torch.float64)  # [E, K, C]
        target = torch.einsum("kmn,ekc->ecmn", theirs, weights)
        key = f"{irrep_index}_{nu}"
        if key not in ours.weights:
            if target.abs().max() > 1e-12:
                raise ConversionError(f"{u_key}: polynomial outside the coupling basis")
            continue
        basis = coupling_basis(ours.irreps_in, irrep, nu).coefficients  # [K', M, n]
        metric = torch.tensor(
            [1.0 / monomial_multiplicity(m) for m in monomials(dim, nu)], dtype=torch.float64
        )
        norm = torch.einsum("kmn,jmn,n->kj", basis, basis, metric)
        coeffs = torch.einsum("kmn,ecmn,n->eck", basis, target, metric)
        solved = torch.linalg.solve(norm, coeffs.reshape(-1, basis.shape[0]).T).T
        solved = solved.reshape(weights.shape[0], weights.shape[2], basis.shape[0])
        rebuilt = torch.einsum("kmn,eck->ecmn", basis, solved)
        residual = (rebuilt - target).abs().max()
        # the stored U carries its dtype's rounding (float32 models: ~1e-7 relative)
        tolerance = max(1e-9, 100 * torch.finfo(state[u_key].dtype).eps)
        if residual > tolerance * max(1.0, float(target.abs().max())):
            raise ConversionError(f"{u_key}: projection residual {float(residual):.2e}")
        # our weights are per coupling tree (w_basis = frame @ w_trees): the minimum-norm
        # tree weights give exactly these basis coefficients
        frame = tree_frame(ours.irreps_in, irrep, nu)
        trees = torch.einsum("tk,eck->etc", torch.linalg.pinv(frame), solved)
        ours.weights[key].data.copy_(trees)


def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    if param.shape != value.shape:
        raise ConversionError(f"shape mismatch {tuple(value.shape)} for {tuple(param.shape)}")
    param.data.copy_(value)


def model_from_mace_torch(
    cfg: dict, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64
) -> MACE:
    """Build an openmace :class:`MACE` equal to a mace-torch model (config + state dict)."""
    config = config_from_mace_torch(cfg, state)
    model = MACE(config, dtype=torch.float64)
    c = config.features.channels
    ratio = e3nn_silu_constant() / silu_normalisation()
    num_el = len(config.atomic_numbers)
    with torch.no_grad():
        _set(model.embedding, state["node_embedding.linear.weight"].reshape(num_el, c))
        freq = state.get("radial_embedding.bessel_fn.bessel_weights")
        if freq is not None:
            _set(model.radial.bessel.frequencies, freq.to(torch.float64))
        if model.pair_repulsion is not None:
            zbl = model.pair_repulsion
            for name in ("a_exp", "a_prefactor"):
                value = state.get(f"pair_repulsion_fn.{name}")
                if value is not None:  # mace-torch's buffer, in its dtype (float32: 0.30000001)
                    _set(getattr(zbl, name), value.reshape(()).to(torch.float64))
        for t, (inter, prod, readout) in enumerate(
            zip(model.interactions, model.products, model.readouts)
        ):
            p = f"interactions.{t}"
            tp, radial_mlp = inter.messages.tensor_product, inter.messages.radial_mlp
            for w, value in zip(
                inter.linear_up.weights,
                _linear_weights(state[f"{p}.linear_up.weight"], [(c, c)] * len(inter.irreps_in)),
            ):
                _set(w, value)
            # radial MLP: fold e3nn's activation constant and the e3nn 0.4.4 CG signs
            mlp_weights = [
                state[f"{p}.conv_tp_weights.layer{i}.weight"]
                for i in range(len(radial_mlp.weights))
            ]
            signs = torch.tensor(
                [
                    e3nn_044_sign(inter.irreps_in[i1].l, tp.irreps_sh[i2].l, ir3.l)
                    for i1, i2, ir3 in tp.paths
                ],
                dtype=torch.float64,
            )
            for i, (w, value) in enumerate(zip(radial_mlp.weights, mlp_weights)):
                value = value.to(torch.float64) * (ratio if i > 0 else 1.0)
                if i == len(mlp_weights) - 1:
                    value = (value.reshape(value.shape[0], -1, c) * signs[None, :, None]).reshape(
                        value.shape[0], -1
                    )
                _set(w, value)
            # e3nn orders the instructions by input slot: one (c, c) matrix per path, paths
            # sorted by output irrep, so each output irrep takes a contiguous run of paths
            path_shapes = [(c, c)] * tp.num_paths
            per_path = _linear_weights(state[f"{p}.linear.weight"], path_shapes)
            start = 0
            for w, (n, _) in zip(inter.linear.weights, tp.irreps_mid):
                _set(w, torch.cat(per_path[start : start + n], dim=0))
                start += n
            # element-dependent self-connection: e3nn weight [mul_in, elements, mul_out]
            skip_shapes = [(c, num_el, c)] * len(inter.skip.weights)
            for w, value in zip(
                inter.skip.weights, _linear_weights(state[f"{p}.skip_tp.weight"], skip_shapes)
            ):
                _set(w, value.permute(1, 0, 2))
            q = f"products.{t}"
            for j, ir in enumerate(prod.irreps_out):
                _convert_contraction(
                    f"{q}.symmetric_contractions.contractions.{j}", state, prod.contraction, j, ir
                )
            for w, value in zip(
                prod.linear.weights,
                _linear_weights(state[f"{q}.linear.weight"], [(c, c)] * len(prod.irreps_out)),
            ):
                _set(w, value)
            r = f"readouts.{t}"
            if len(readout.mlp.weights) == 1:
                _set(readout.mlp.weights[0], state[f"{r}.linear.weight"].reshape(c, 1))
            else:
                hidden = config.readout_mlp[0]
                _set(readout.mlp.weights[0], state[f"{r}.linear_1.weight"].reshape(c, hidden))
                _set(
                    readout.mlp.weights[1],
                    state[f"{r}.linear_2.weight"].reshape(hidden, 1) * ratio,
                )
    return model.to(dtype)


def load_mace_torch(source: str | Path, dtype: torch.dtype = torch.float64) -> MACE:
    """Convert a mace-torch model: a folder with ``config.json`` and ``weights.safetensors``,
    or a pickled ``.model`` file (only if mace-torch is installed; loading a pickle runs code,
    so only do this with files you trust)."""
    source = Path(source)
    if source.is_dir():
        cfg_path, weights_path = source / "config.json", source / "weights.safetensors"
        for path in (cfg_path, weights_path):
            if not path.exists():
                raise ConversionError(f"{source}: missing {path.name}")
        cfg = json.loads(cfg_path.read_text())
        state = load_file(str(weights_path))
        return model_from_mace_torch(cfg, state, dtype)
    if source.suffix in (".model", ".pt", ".pth"):
        return model_from_mace_torch(*_read_mace_torch_pickle(source), dtype)
    raise ConversionError(
        f"{source}: expected a folder with config.json + weights.safetensors or a .model file"
    )


def _read_mace_torch_pickle(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        from mace.tools.scripts_utils import extract_config_mace_model  # type: ignore
    except ImportError as err:
        raise ConversionError(
            f"{path}: reading a pickled mace-torch model needs mace-torch installed; "
            "export config.json + weights.safetensors instead"
        ) from err
    module = torch.load(path, map_location="cpu", weights_only=False)
    cfg = extract_config_mace_model(module)
    cfg = {k: (str(v) if k in ("hidden_irreps", "MLP_irreps") else v) for k, v in cfg.items()}
    for key in ("interaction_cls", "interaction_cls_first"):
        cfg[key] = getattr(cfg.get(key), "__name__", str(cfg.get(key)))
    cfg["model_class"] = type(module).__name__
    cfg["atomic_numbers"] = [int(z) for z in module.atomic_numbers]
    return cfg, {k: v.detach().cpu() for k, v in module.state_dict().items()}
