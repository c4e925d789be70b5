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
from ase.data import covalent_radii
from safetensors.torch import load_file

from openmace.io.errors import ConversionError
from openmace.model import MACE, MACEConfig
from openmace.model.radial import sigmoid_normalisation, silu_normalisation
from openmace.o3 import (
    FeatureIrreps,
    Irrep,
    clebsch_gordan,
    coupling_basis,
    e3nn_044_sign,
    irreps_dim,
)
from openmace.o3.coupling import monomial_multiplicity, monomials, tree_frame

# mace-torch interaction classes → (openmace interaction kind, residual)
INTERACTION_CLASSES = {
    "RealAgnosticInteractionBlock": ("standard", False),
    "RealAgnosticResidualInteractionBlock": ("standard", True),
    "RealAgnosticDensityInteractionBlock": ("density", False),
    "RealAgnosticDensityResidualInteractionBlock": ("density", True),
    "RealAgnosticResidualNonLinearInteractionBlock": ("nonlinear", True),
}
READOUT_CLASSES = ("NonLinearReadoutBlock", "NonLinearBiasReadoutBlock")
MODEL_CLASSES = ("ScaleShiftMACE", "MACE")
# options openmace does not represent: converting a model that uses them is an error
UNSUPPORTED_OPTIONS = {
    "radial_type": "bessel",
    "use_last_readout_only": False,
    "keep_last_layer_irreps": False,
    "use_so3": False,
}


def e3nn_silu_constant() -> float:
    """e3nn's ``normalize2mom(silu)``: 1/sqrt(mean silu(z)^2) over 10⁶ normals, seed 0."""
    return _e3nn_constant(torch.nn.functional.silu)


def _e3nn_constant(fn) -> float:
    """e3nn's ``normalize2mom(fn)`` (a Monte-Carlo estimate: 10⁶ normals, seed 0)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(1_000_000, generator=generator, dtype=torch.float64)
    return float(fn(z).pow(2).mean().pow(-0.5))


def _class_name(value) -> str:
    """``"<class 'mace.modules.blocks.X'>"``, ``"mace.modules.blocks.X"`` or ``"X"`` → ``"X"``."""
    text = str(getattr(value, "__name__", value))
    return text.rstrip("'>").split(".")[-1].split("'")[-1]


def _none(value):
    return None if value in (None, "None", "none", "null") else value


class StateDict:
    """The mace-torch state dict, with every entry accounted for: an entry the conversion does
    not read (or verify) is an error naming it, as is a missing one."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def get(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise ConversionError(f"the state dict has no {key} (which this model needs)")
        self.used.add(key)
        return self.state[key]

    def optional(self, key: str) -> torch.Tensor | None:
        return self.get(key) if key in self.state else None

    def consume(self, predicate) -> None:
        """Mark derived entries (output masks, e3nn's constant tensors) as accounted for."""
        self.used.update(k for k in self.state if predicate(k))

    def check_all_used(self) -> None:
        unused = sorted(set(self.state) - self.used)
        if unused:
            shown = ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else "")
            raise ConversionError(
                f"{len(unused)} state-dict entr{'y' if len(unused) == 1 else 'ies'} that no "
                f"supported option uses: {shown} (a newer mace-torch block or option?)"
            )


def _agree(name: str, from_config, from_weights, same=lambda a, b: a == b):
    """The value implied by the weights; an error when the config says otherwise."""
    if from_config is not None and from_weights is not None and not same(from_config, from_weights):
        raise ConversionError(
            f"config.json and the weights disagree on {name}: {from_config!r} in the config, "
            f"{from_weights!r} in the weights"
        )
    return from_weights if from_weights is not None else from_config


def _close(a, b) -> bool:
    return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))


def _layer_classes(cfg: dict, state: StateDict, num_layers: int) -> list[tuple[str, bool]]:
    """(kind, residual) of each layer, from the weights, checked against the config."""
    out = []
    for t in range(num_layers):
        p = f"interactions.{t}"
        if f"{p}.alpha" in state:
            implied = ("nonlinear", True)
        else:  # residual or not: from the config (the weights' shapes are checked later)
            kind = "density" if f"{p}.density_fn.layer0.weight" in state else "standard"
            implied = (kind, True)
        key = "interaction_cls_first" if t == 0 else "interaction_cls"
        given = cfg.get(key)
        if given is not None:
            name = _class_name(given)
            if name not in INTERACTION_CLASSES:
                raise ConversionError(
                    f"{key}={name} is not supported (supported: {', '.join(INTERACTION_CLASSES)})"
                )
            stated = INTERACTION_CLASSES[name]
            if stated[0] != implied[0]:
                raise ConversionError(
                    f"config.json says {key}={name} but the weights of interactions.{t} are "
                    f"those of a {implied[0]} block"
                )
            implied = stated
        out.append(implied)
    if any(not residual for _, residual in out[1:]):
        raise ConversionError("only residual interaction blocks after the first layer")
    return out


def config_from_mace_torch(cfg: dict, state: dict[str, torch.Tensor]) -> MACEConfig:
    """The openmace configuration of a mace-torch model: options implied by the weights are
    taken from them (and must agree with ``cfg``), the others from ``cfg`` (mace-torch's
    ``extract_config_mace_model`` keys)."""
    return _config(cfg, StateDict(state))


def _config(cfg: dict, state: StateDict) -> MACEConfig:
    model_class = _class_name(cfg.get("model_class", "ScaleShiftMACE"))
    if model_class not in MODEL_CLASSES:
        raise ConversionError(
            f"model class {model_class} is not supported: openmace converts energy models "
            f"({', '.join(MODEL_CLASSES)}); dipole, polarizability, LES and POLAR models are not"
        )
    for key, default in UNSUPPORTED_OPTIONS.items():
        value = _none(cfg.get(key, default))
        if value != default and value is not None:
            raise ConversionError(f"mace-torch option {key}={value!r} is not supported")
    gate = _none(cfg.get("gate", "silu"))
    if gate is not None and "silu" not in str(gate):
        raise ConversionError(f"readout activation {gate!r} is not supported (only SiLU)")
    readout = _class_name(cfg.get("readout_cls", "NonLinearReadoutBlock"))
    if readout == "LinearReadoutBlock" and int(cfg.get("num_interactions", 0) or 0) == 1:
        readout = "NonLinearReadoutBlock"  # a one-layer model has only its linear readout
    if readout not in READOUT_CLASSES:
        raise ConversionError(
            f"readout_cls={readout} is not supported (supported: {', '.join(READOUT_CLASSES)})"
        )
    for key in ("hidden_irreps", "avg_num_neighbors", "max_ell"):
        if cfg.get(key) is None:
            raise ConversionError(f"config.json lacks {key}")

    numbers = state.optional("atomic_numbers")
    atomic_numbers = _agree(
        "atomic_numbers",
        [int(z) for z in cfg["atomic_numbers"]] if cfg.get("atomic_numbers") is not None else None,
        [int(z) for z in numbers.tolist()] if numbers is not None else None,
    )
    if atomic_numbers is None:
        raise ConversionError("neither config.json nor the weights give atomic_numbers")
    r_max_buffer = state.optional("r_max")
    r_max = _agree(
        "r_max",
        cfg.get("r_max"),
        float(r_max_buffer) if r_max_buffer is not None else None,
        _close,
    )
    frequencies = state.get("radial_embedding.bessel_fn.bessel_weights")
    num_bessel = _agree("num_bessel", cfg.get("num_bessel"), frequencies.numel())
    p_buffer = state.optional("radial_embedding.cutoff_fn.p")
    p = _agree(
        "num_polynomial_cutoff",
        cfg.get("num_polynomial_cutoff"),
        int(p_buffer) if p_buffer is not None else None,
    )
    layers = state.optional("num_interactions")
    num_interactions = _agree(
        "num_interactions",
        cfg.get("num_interactions"),
        int(layers) if layers is not None else None,
    )
    if num_interactions is None:
        num_interactions = 1 + max(
            int(k.split(".")[1]) for k in state.state if k.startswith("interactions.")
        )
    classes = _layer_classes(cfg, state, num_interactions)
    kinds = [kind for kind, _ in classes]
    if len(set(kinds[1:])) > 1:
        raise ConversionError(f"different interaction blocks after the first layer: {kinds}")

    # per layer correlation, from the contraction weights of each product
    correlation = []
    for t in range(num_interactions):
        prefix = f"products.{t}.symmetric_contractions.contractions.0"
        count = sum(1 for k in state.state if k.startswith(f"{prefix}.weights.")) + 1
        correlation.append(count)
    stated = cfg.get("correlation")
    if stated is not None:
        stated_list = stated if isinstance(stated, list) else [stated] * num_interactions
        if [int(c) for c in stated_list] != correlation:
            raise ConversionError(
                f"config.json and the weights disagree on correlation: {stated} in the config, "
                f"{correlation} in the weights"
            )
    e0 = state.get("atomic_energies_fn.atomic_energies").to(torch.float64)
    heads = [str(h) for h in (cfg.get("heads") or ["default"])]
    num_heads = e0.shape[0] if e0.dim() == 2 else 1
    if num_heads != len(heads):
        raise ConversionError(
            f"config.json lists {len(heads)} head(s) {heads} but the weights hold E0s of "
            f"{num_heads}"
        )
    scale_t, shift_t = state.optional("scale_shift.scale"), state.optional("scale_shift.shift")
    if scale_t is None and model_class == "ScaleShiftMACE":
        raise ConversionError("a ScaleShiftMACE model without scale_shift.scale in its weights")
    # "MACE" is also the name mace-torch's training uses for its ScaleShiftMACE: the weights
    # decide (a scale in the weights is used)
    scale = scale_t.to(torch.float64).reshape(-1).tolist() if scale_t is not None else [1.0]
    shift = shift_t.to(torch.float64).reshape(-1).tolist() if shift_t is not None else [0.0]
    for name, values in (("scale", scale), ("shift", shift)):
        if len(values) not in (1, num_heads):
            raise ConversionError(f"{len(values)} {name} values for {num_heads} heads")
    pair = any(k.startswith("pair_repulsion_fn.") for k in state.state)
    pair_repulsion = _agree("pair_repulsion", cfg.get("pair_repulsion"), pair)
    if "radial_embedding.distance_transform.q" in state:
        transform = "agnesi"
    elif "radial_embedding.distance_transform.alpha" in state:
        transform = "soft"
    else:
        transform = None
    stated_transform = _none(cfg.get("distance_transform"))
    stated_none = "distance_transform" in cfg and stated_transform is None
    if (stated_none and transform is not None) or (
        stated_transform is not None and str(stated_transform).lower() != transform
    ):
        raise ConversionError(
            f"config.json says distance_transform={stated_transform} but the weights hold "
            f"{'no transform' if transform is None else transform}"
        )
    last = f"readouts.{num_interactions - 1}"
    bias = f"{last}.linear_mid.weight" in state
    if num_interactions > 1 and (readout == "NonLinearBiasReadoutBlock") != bias:
        raise ConversionError(f"config.json says readout_cls={readout}, the weights disagree")
    hidden = FeatureIrreps.parse(str(cfg["hidden_irreps"]))
    mlp_width = None
    if num_interactions > 1:
        mask = state.state.get(f"{last}.linear_1.output_mask")
        if mask is not None:
            mlp_width = mask.numel() // num_heads
    stated_mlp = cfg.get("MLP_irreps")
    mlp = _agree(
        "MLP_irreps",
        FeatureIrreps.parse(str(stated_mlp)).channels if stated_mlp is not None else None,
        mlp_width,
    )
    agnostic = (
        state.state["products.0.symmetric_contractions.contractions.0.weights_max"].shape[0] == 1
        and len(atomic_numbers) > 1
    )
    agnostic = _agree("use_agnostic_product", cfg.get("use_agnostic_product"), agnostic)
    embedding_readout = any(k.startswith("embedding_readout.") for k in state.state)
    specs = cfg.get("embedding_specs")
    if any(k.startswith("joint_embedding.") for k in state.state) and not specs:
        raise ConversionError(
            "the weights hold a joint embedding (charge/spin) but config.json has no "
            "embedding_specs"
        )
    edge_irreps = _none(cfg.get("edge_irreps"))
    radial_mlp = cfg.get("radial_MLP") or cfg.get("radial_mlp")
    if not radial_mlp:
        raise ConversionError("config.json lacks radial_MLP")
    try:
        return MACEConfig(
            atomic_numbers=atomic_numbers,
            atomic_energies=e0.reshape(-1).tolist() if num_heads == 1 else e0.tolist(),
            r_max=float(r_max),
            num_bessel=int(num_bessel),
            num_polynomial_cutoff=int(p),
            max_ell=int(cfg["max_ell"]),
            hidden_irreps=str(hidden),
            correlation=correlation[0] if len(set(correlation)) == 1 else correlation,
            num_interactions=int(num_interactions),
            radial_mlp=[int(x) for x in radial_mlp],
            readout_mlp=[int(mlp or 16)],
            avg_num_neighbors=float(cfg["avg_num_neighbors"]),
            scale=scale[0] if num_heads == 1 else (scale * num_heads)[:num_heads],
            shift=shift[0] if num_heads == 1 else (shift * num_heads)[:num_heads],
            residual_first=classes[0][1],
            pair_repulsion=bool(pair_repulsion),
            interaction=kinds[-1],
            interaction_first=kinds[0] if kinds[0] != kinds[-1] else None,
            distance_transform=transform,
            apply_cutoff=bool(cfg.get("apply_cutoff", True)),
            edge_irreps=str(FeatureIrreps.parse(str(edge_irreps))) if edge_irreps else None,
            edge_irreps_first=bool(cfg.get("use_edge_irreps_first", False)),
            agnostic_product=bool(agnostic),
            readout_bias=bias,
            heads=heads,
            embedding_specs=dict(specs) if specs else None,
            embedding_readout=embedding_readout,
        )
    except ValueError as err:
        raise ConversionError(f"not representable in openmace: {err}") from err


def _linear_weights(
    flat: torch.Tensor, shapes: list[tuple[int, ...]], name: str = "weight"
) -> list[torch.Tensor]:
    """Split e3nn's flat Linear/TensorProduct weight into per-instruction matrices."""
    expected = sum(math.prod(shape) for shape in shapes)
    if flat.numel() != expected:
        raise ConversionError(f"{name} holds {flat.numel()} numbers, this model needs {expected}")
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat.reshape(-1)[start : start + size].reshape(shape))
        start += size
    return out


def _shaped(state: StateDict, key: str, *shape: int) -> torch.Tensor:
    """An entry as float64 of ``shape`` (an error naming it when its size differs)."""
    value = state.get(key).to(torch.float64)
    if value.numel() != math.prod(shape):
        raise ConversionError(
            f"{key} holds {value.numel()} numbers, this model needs {math.prod(shape)}"
        )
    return value.reshape(shape)


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


def _convert_contraction(
    prefix: str, state: StateDict, ours, irrep_index: int, irrep: Irrep
) -> None:
    """Project one mace-torch ``Contraction`` onto our coupling basis (exact; checked)."""
    dim = irreps_dim(ours.irreps_in)
    for nu in range(1, ours.correlation + 1):
        idx = ours.correlation - 1 - nu
        top = nu == ours.correlation
        w_key = f"{prefix}.weights_max" if top else f"{prefix}.weights.{idx}"
        flag = state.optional(
            f"{prefix}.weights_max_zeroed" if top else f"{prefix}.weights_{idx}_zeroed"
        )
        u_key = f"{prefix}.U_matrix_{nu}"
        u = state.get(u_key)
        weights = state.get(w_key).to(torch.float64)  # [E, K, C]
        if flag is not None and bool(flag):  # a path mace-torch switched off: zero weights
            weights = torch.zeros_like(weights)
        theirs = _symmetrised_polynomial(u, irrep, nu, dim)  # [K, M, n]
        key = f"{irrep_index}_{nu}"
        if key not in ours.weights:
            if any(torch.einsum("kmn,kc->cmn", theirs, w).abs().max() > 1e-12 for w in weights):
                raise ConversionError(f"{u_key}: polynomial outside the coupling basis")
            continue
        basis = coupling_basis(ours.irreps_in, irrep, nu).coefficients  # [K', M, n]
        metric = torch.tensor(
            [1.0 / monomial_multiplicity(m) for m in monomials(dim, nu)], dtype=torch.float64
        )
        norm = torch.einsum("kmn,jmn,n->kj", basis, basis, metric)
        # our weights are per coupling tree (w_basis = frame @ w_trees): the minimum-norm
        # tree weights give exactly these basis coefficients
        to_trees = torch.linalg.pinv(tree_frame(ours.irreps_in, irrep, nu))
        # the stored U carries its dtype's rounding (float32 models: ~1e-7 relative)
        tolerance = max(1e-9, 100 * torch.finfo(u.dtype).eps)
        trees = []
        for element_weights in weights:  # one element at a time: [C, M, n] polynomials, not
            # [E, C, M, n] (0.2 GB per intermediate for 89 elements and 128 channels)
            target = torch.einsum("kmn,kc->cmn", theirs, element_weights)
            coeffs = torch.einsum("kmn,cmn,n->ck", basis, target, metric)
            solved = torch.linalg.solve(norm, coeffs.T).T  # [C, K']
            rebuilt = torch.einsum("kmn,ck->cmn", basis, solved)
            residual = (rebuilt - target).abs().max()
            if residual > tolerance * max(1.0, float(target.abs().max())):
                raise ConversionError(f"{u_key}: projection residual {float(residual):.2e}")
            trees.append(torch.einsum("tk,ck->tc", to_trees, solved))
        trees = torch.stack(trees)  # [E, trees, C]
        _set(ours.weights[key], trees)


def _set(param: torch.Tensor, value: torch.Tensor, name: str = "") -> None:
    if param.shape != value.shape:
        where = f" for {name}" if name else ""
        raise ConversionError(
            f"shape mismatch{where}: {tuple(value.shape)} in the weights, "
            f"{tuple(param.shape)} expected"
        )
    param.data.copy_(value)


def _e3nn_linear(state: StateDict, key: str, linear, c_in_of=None) -> None:
    """An e3nn ``o3.Linear`` (flat weight, one ``(mul_in, mul_out)`` block per path in input
    order) into an :class:`EquivariantLinear` whose paths match one to one."""
    blocks = [
        (linear.irreps_in[i][0], w.shape[1]) for (i, _), w in zip(linear.paths, linear.weights)
    ]
    order = sorted(range(len(blocks)), key=lambda k: linear.paths[k][0])
    parts = _linear_weights(state.get(key), [blocks[k] for k in order], key)
    for k, value in zip(order, parts):
        _set(linear.weights[k], value, key)


def _mid_linears(state: StateDict, key: str, tp, targets: list, c_edge: int) -> None:
    """mace-torch's ``Linear(irreps_mid → ...)``: one ``(c_edge, mul_out)`` block per
    tensor-product path (and output irrep with that irrep), paths in order; each of our
    ``targets`` (EquivariantLinear from the per-irrep path blocks) takes its rows."""
    shapes, owners = [], []
    for _, _, ir3 in tp.paths:
        for t, linear in enumerate(targets):
            if ir3 in linear.irreps_out:
                shapes.append((c_edge, linear.channels_out))
                owners.append((t, ir3))
    parts = _linear_weights(state.get(key), shapes, key)
    for t, linear in enumerate(targets):
        for k, (_, j) in enumerate(linear.paths):
            ir = linear.irreps_out[j]
            rows = [v for v, (owner, ir3) in zip(parts, owners) if owner == t and ir3 == ir]
            _set(linear.weights[k], torch.cat(rows, dim=0), key)


def _radial_signs(tp, state: StateDict, prefix: str) -> torch.Tensor:
    """The sign of each tensor-product path's Clebsch-Gordan coefficients in the file relative
    to ours (folded into the radial MLP's output columns). e3nn stores the coefficients it used
    (``conv_tp._compiled_main_left_right._w3j_l1_l2_l3``): the sign is read from them, so files
    of any e3nn version convert; without them, e3nn 0.4.4's (mace-torch's pinned version)."""
    signs = []
    for i1, i2, ir3 in tp.paths:
        l1, l2, l3 = tp.irreps_in[i1].l, tp.irreps_sh[i2].l, ir3.l
        key = f"{prefix}.conv_tp._compiled_main_left_right._w3j_{l1}_{l2}_{l3}"
        if key not in state:
            signs.append(float(e3nn_044_sign(l1, l2, l3)))
            continue
        stored = state.get(key).to(torch.float64)
        ours = clebsch_gordan(l1, l2, l3).to(torch.float64)
        if stored.shape != ours.shape:
            raise ConversionError(
                f"{key}: shape {tuple(stored.shape)}, expected {tuple(ours.shape)}"
            )
        overlap = float((stored * ours).sum()) / float(ours.norm() * stored.norm())
        if abs(abs(overlap) - 1.0) > 1e-5:
            raise ConversionError(f"{key}: Clebsch-Gordan coefficients in an unknown basis")
        signs.append(1.0 if overlap > 0 else -1.0)
    return torch.tensor(signs, dtype=torch.float64)


def _convert_radial_mlp(state: StateDict, prefix: str, messages, ratio: float) -> None:
    tp, mlp, c = messages.tensor_product, messages.radial_mlp, messages.channels
    signs = _radial_signs(tp, state, prefix.rsplit(".", 1)[0])
    if f"{prefix}.net.0.weight" in state:  # LayerNorm MLP: Linear, LayerNorm, SiLU, ...
        _convert_layernorm_mlp(state, prefix, mlp, signs, c)
        return
    for i in range(mlp.num_layers):
        value = state.get(f"{prefix}.layer{i}.weight").to(torch.float64) * (ratio if i > 0 else 1.0)
        if i == mlp.num_layers - 1:
            value = (value.reshape(value.shape[0], -1, c) * signs[None, :, None]).reshape(
                value.shape[0], -1
            )
        _set(mlp.weights[i], value, f"{prefix}.layer{i}.weight")


def _convert_layernorm_mlp(
    state: StateDict, prefix: str, mlp, signs: torch.Tensor | None = None, c: int = 1
) -> None:
    """mace-torch's ``RadialMLP`` (``net.{3i}`` Linear, ``net.{3i+1}`` LayerNorm); ``signs``
    per tensor-product path fold the Clebsch-Gordan signs into the last layer's columns."""
    for i, layer in enumerate(mlp.layers):
        w = state.get(f"{prefix}.net.{3 * i}.weight").to(torch.float64).T
        b = state.get(f"{prefix}.net.{3 * i}.bias").to(torch.float64)
        if i == mlp.num_layers - 1 and signs is not None:
            w = (w.reshape(w.shape[0], -1, c) * signs[None, :, None]).reshape(w.shape[0], -1)
            b = (b.reshape(-1, c) * signs[:, None]).reshape(-1)
        _set(layer.weight, w, f"{prefix}.net.{3 * i}.weight")
        _set(layer.bias, b, f"{prefix}.net.{3 * i}.bias")
        if layer.hidden:
            _set(layer.norm_weight, state.get(f"{prefix}.net.{3 * i + 1}.weight"))
            _set(layer.norm_bias, state.get(f"{prefix}.net.{3 * i + 1}.bias"))


def _check_constant(state: StateDict, key: str, expected: torch.Tensor, what: str) -> None:
    value = state.optional(key)
    if value is not None and (
        value.shape != expected.shape
        or not torch.allclose(
            value.to(torch.float64), expected.to(torch.float64), rtol=1e-6, atol=1e-9
        )
    ):
        raise ConversionError(f"{key}: {what} differ from the standard ones openmace uses")


def _convert_interaction(state: StateDict, t: int, inter, num_el: int, ratios: dict) -> None:
    p = f"interactions.{t}"
    messages = inter.messages
    tp, c_edge = messages.tensor_product, messages.channels
    _e3nn_linear(state, f"{p}.linear_up.weight", inter.linear_up)
    _convert_radial_mlp(state, f"{p}.conv_tp_weights", messages, ratios["silu"])
    if inter.kind == "density":
        _set(inter.density.weights[0], state.get(f"{p}.density_fn.layer0.weight").to(torch.float64))
    if inter.gate is None:
        _mid_linears(state, f"{p}.linear.weight", tp, [inter.linear], c_edge)
        # element-dependent self-connection: e3nn weight [mul_in, elements, mul_out]
        skip = inter.skip
        shapes = [(w.shape[1], num_el, w.shape[2]) for w in skip.weights]
        for w, value in zip(
            skip.weights,
            _linear_weights(state.get(f"{p}.skip_tp.weight"), shapes, f"{p}.skip_tp.weight"),
        ):
            _set(w, value.permute(1, 0, 2), f"{p}.skip_tp.weight")
        return
    # nonlinear block
    c = inter.channels
    for name, ours in (
        ("source_embedding", inter.source_embedding),
        ("target_embedding", inter.target_embedding),
    ):
        _set(ours, _shaped(state, f"{p}.{name}.weight", num_el, c))
    _mid_linears(
        state, f"{p}.linear_1.weight", tp, [inter.linear_scalars, inter.linear_gated], c_edge
    )
    _edge_linears(state, f"{p}.linear_res.weight", [inter.residual_scalars, inter.residual_gated])
    _e3nn_linear(state, f"{p}.linear_2.weight", inter.linear_out)
    # e3nn's Monte-Carlo normalisation constants of SiLU (scalars) and sigmoid (gates)
    for k, (_, j) in enumerate(inter.linear_out.paths):
        inter.linear_out.weights[k].data *= (
            ratios["silu"] if inter.linear_out.irreps_out[j].l == 0 else ratios["sigmoid"]
        )
    _e3nn_linear(state, f"{p}.skip_tp.weight", inter.plain_skip)
    _convert_layernorm_mlp(state, f"{p}.density_fn", inter.density)
    _set(inter.alpha, state.get(f"{p}.alpha").reshape(()).to(torch.float64))
    _set(inter.beta, state.get(f"{p}.beta").reshape(()).to(torch.float64))


def _edge_linears(state: StateDict, key: str, targets: list) -> None:
    """mace-torch's ``Linear(edge irreps → scalars+gates+gated)`` into our scalar and gated
    linears (same input blocks)."""
    shapes, owners = [], []
    irreps_in = targets[0].irreps_in
    for i, (mul, _) in enumerate(irreps_in):
        for t, linear in enumerate(targets):
            for k, (ii, _) in enumerate(linear.paths):
                if ii == i:
                    shapes.append((mul, linear.channels_out))
                    owners.append((t, k))
    for (t, k), value in zip(owners, _linear_weights(state.get(key), shapes, key)):
        _set(targets[t].weights[k], value, key)


def model_from_mace_torch(
    cfg: dict, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64
) -> MACE:
    """Build an openmace :class:`MACE` equal to a mace-torch model (config + state dict).

    Every state-dict entry is accounted for (read, or checked to be a derived constant); the
    options the weights imply are taken from them; contradictions are errors."""
    weights = StateDict(state)
    config = _config(cfg, weights)
    model = MACE(config, dtype=torch.float64)
    c = config.features.channels
    ratios = {
        "silu": e3nn_silu_constant() / silu_normalisation(),
        "sigmoid": _e3nn_constant(torch.sigmoid) / sigmoid_normalisation(),
    }
    num_el = len(config.atomic_numbers)
    # derived entries: e3nn's output masks and Wigner 3j constants, empty biases, buffers
    # recomputed from the config (checked below where they carry a choice)
    weights.consume(
        lambda k: (
            k.endswith(".output_mask")
            or "._compiled_main" in k
            or (k.endswith(".bias") and state[k].numel() == 0 and "net." not in k)
            or k.endswith("conv_tp.weight")
            and state[k].numel() == 0
        )
    )
    with torch.no_grad():
        _set(model.embedding, _shaped(weights, "node_embedding.linear.weight", num_el, c))
        freq = weights.get("radial_embedding.bessel_fn.bessel_weights")
        _set(model.radial.bessel.frequencies, freq.to(torch.float64))
        r_max = torch.tensor(config.r_max, dtype=torch.float64)
        for key in ("radial_embedding.bessel_fn.r_max", "radial_embedding.cutoff_fn.r_max"):
            _check_constant(weights, key, r_max, "cutoff radii")
        _check_constant(
            weights,
            "radial_embedding.bessel_fn.prefactor",
            torch.tensor(math.sqrt(2.0 / config.r_max)),
            "Bessel prefactors",
        )
        radii = torch.tensor(covalent_radii, dtype=torch.float64)
        if model.distance_transform is not None:
            t = model.distance_transform
            for name in ("q", "p", "a", "alpha"):
                key = f"radial_embedding.distance_transform.{name}"
                if hasattr(t, name) and isinstance(getattr(t, name), torch.Tensor):
                    _set(getattr(t, name), weights.get(key).reshape(()).to(torch.float64), key)
            _check_constant(
                weights,
                "radial_embedding.distance_transform.covalent_radii",
                radii,
                "covalent radii",
            )
        if model.pair_repulsion is not None:
            zbl = model.pair_repulsion
            for name in ("a_exp", "a_prefactor"):
                value = weights.get(f"pair_repulsion_fn.{name}")
                # mace-torch's buffer, in its dtype (float32: 0.30000001)
                _set(getattr(zbl, name), value.reshape(()).to(torch.float64))
            _check_constant(weights, "pair_repulsion_fn.covalent_radii", radii, "covalent radii")
            _check_constant(
                weights,
                "pair_repulsion_fn.c",
                torch.tensor([c_k for c_k, _ in zbl.screening], dtype=torch.float64),
                "ZBL screening coefficients",
            )
            _check_constant(
                weights,
                "pair_repulsion_fn.p",
                torch.tensor(float(config.num_polynomial_cutoff)),
                "ZBL envelope orders",
            )
        if model.joint_embedding is not None:
            for k, name in enumerate(model.joint_embedding.names):
                _set(
                    model.joint_embedding.tables[k],
                    weights.get(f"joint_embedding.embedders.{name}.weight").to(torch.float64),
                )
            _set(
                model.joint_embedding.projection,
                weights.get("joint_embedding.project.0.weight").to(torch.float64).T,
            )
        if model.embedding_readout is not None:
            _set(
                model.embedding_readout,
                _shaped(weights, "embedding_readout.linear.weight", c, model.num_heads),
            )
        for t, (inter, prod, readout) in enumerate(
            zip(model.interactions, model.products, model.readouts)
        ):
            _convert_interaction(weights, t, inter, num_el, ratios)
            q = f"products.{t}"
            for j, ir in enumerate(prod.irreps_out):
                _convert_contraction(
                    f"{q}.symmetric_contractions.contractions.{j}", weights, prod.contraction, j, ir
                )
            for w, value in zip(
                prod.linear.weights,
                _linear_weights(
                    weights.get(f"{q}.linear.weight"),
                    [(c, c)] * len(prod.irreps_out),
                    f"{q}.linear.weight",
                ),
            ):
                _set(w, value)
            _convert_readout(weights, f"readouts.{t}", readout, c, model.num_heads, ratios["silu"])
    weights.check_all_used()
    return model.to(dtype)


def _convert_readout(state: StateDict, r: str, readout, c: int, heads: int, ratio: float) -> None:
    """Linear readouts ``[c → heads]``; the MLP readout's wide layers (``heads · h`` units,
    masked per head) as one MLP per head: the diagonal blocks."""
    if f"{r}.linear.weight" in state:
        w = _shaped(state, f"{r}.linear.weight", c, heads)
        if readout.mlp is not None:
            _set(readout.mlp.weights[0], w)
        else:
            _set(readout.heads_mlp.layers[0].weight, w.T.reshape(heads, c, 1))
        return
    h = (readout.mlp if readout.mlp is not None else readout.heads_mlp).sizes[1]
    w1 = _shaped(state, f"{r}.linear_1.weight", c, heads, h).permute(1, 0, 2)  # [heads, c, h]
    layers = [w1]
    biases = []
    if f"{r}.linear_mid.weight" in state:
        mid = _shaped(state, f"{r}.linear_mid.weight", heads, h, heads, h)
        # e3nn normalises by the full fan-in (heads · h); ours per head (h)
        scale = (heads * h) ** -0.5 / h**-0.5
        layers.append(torch.stack([mid[k, :, k, :] for k in range(heads)]) * ratio * scale)
        biases.append(_shaped(state, f"{r}.linear_mid.bias", heads, h))
    w2 = _shaped(state, f"{r}.linear_2.weight", heads, h, heads)
    scale = (heads * h) ** -0.5 / h**-0.5
    layers.append(torch.stack([w2[k, :, k] for k in range(heads)]).unsqueeze(-1) * ratio * scale)
    if f"{r}.linear_2.bias" in state and state.state[f"{r}.linear_2.bias"].numel() > 0:
        biases.append(_shaped(state, f"{r}.linear_2.bias", heads, 1))
    if readout.mlp is not None:
        for w, value in zip(readout.mlp.weights, layers):
            _set(w, value[0], r)
        return
    for layer, value in zip(readout.heads_mlp.layers, layers):
        _set(layer.weight, value, r)
    for layer, value in zip(readout.heads_mlp.layers[1:], biases):
        _set(layer.bias, value, r)


def load_mace_torch(source: str | Path, dtype: torch.dtype = torch.float64) -> MACE:
    """Convert a mace-torch model: a folder with ``config.json`` and ``weights.safetensors``,
    or its pickled ``.model`` file, read by :mod:`openmace.io.mace_pickle` (no code of the file
    runs; mace-torch need not be installed)."""
    source = Path(source)
    if source.is_dir():
        cfg_path, weights_path = source / "config.json", source / "weights.safetensors"
        for path in (cfg_path, weights_path):
            if not path.exists():
                raise ConversionError(f"{source}: missing {path.name}")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ConversionError(f"{cfg_path}: not a JSON file ({err})") from err
        if not isinstance(cfg, dict):
            raise ConversionError(f"{cfg_path}: expected a JSON object")
        state = load_file(str(weights_path))
        return _convert(source, cfg, state, dtype)
    if not source.is_file():
        raise ConversionError(f"{source}: no such file or folder")
    from openmace.io.mace_pickle import read_mace_torch_model

    cfg, state = read_mace_torch_model(source)
    return _convert(source, cfg, state, dtype)


def _convert(source: Path, cfg: dict, state: dict, dtype: torch.dtype) -> MACE:
    try:
        return model_from_mace_torch(cfg, state, dtype)
    except ConversionError as err:
        raise ConversionError(f"{source}: {err}") from err
