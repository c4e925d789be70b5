"""The state dict of a :class:`openmace.model.MACE` in closed form, without building it.

A model file is checked against these expectations before anything is constructed (building the
coupling bases of a hostile header could take hours, or its weights gigabytes). Everything here
is counting: which tensors a config makes and their shapes, the sizes of the coupling bases of
the symmetric contraction (eq. 14), and an estimate of the work of building them.
``tests/faults/test_model_files.py`` compares :func:`expected_shapes` with
``MACE(config).state_dict()`` for many generated configs.

Sizes of the symmetric contraction of ``ν`` copies of A-features with irreps ``V``:

* basis size (output irrep ``(L, p)``): the multiplicity of ``(L, p)`` in the symmetric power
  ``Sym^ν V`` (the coupling basis spans all equivariant polynomials of degree ν). It is counted
  with weights: a monomial of components ``(l_i, m_i, p_i)`` has weight ``(Σ m_i, Π p_i)``, and
  the multiplicity of ``(L, p)`` is ``N(L, p) - N(L + 1, p)`` with ``N(M, p)`` the number of
  monomials of weight ``(M, p)``;
* coupling trees (one weight per tree, eq. 10): paths ``ir_1 ⊗ ir_2 ⊗ ... ⊗ ir_ν → L`` through
  intermediate irreps of degree at most ``L + (ν - d) · l_max`` after ``d`` factors, as
  :func:`openmace.o3.coupling.tree_frame` enumerates them.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import cache
from typing import NamedTuple

from openmace.model.config import MACEConfig
from openmace.o3 import FeatureIrreps, Irrep, spherical_harmonics_irreps

Shape = tuple[int, ...]


@cache
def _monomial_weights(irreps: tuple[Irrep, ...], degree: int) -> tuple[Counter, ...]:
    """``N[d][(M, p)]``: monomials of degree ``d <= degree`` in the components of ``irreps``
    with total ``m`` equal to ``M`` and parity ``p`` (unbounded knapsack over components)."""
    table: list[Counter] = [Counter({(0, 1): 1})] + [Counter() for _ in range(degree)]
    for ir in irreps:
        for m in range(-ir.l, ir.l + 1):
            for d in range(1, degree + 1):
                for (total, parity), count in list(table[d - 1].items()):
                    table[d][(total + m, parity * ir.p)] += count
    return tuple(table)


def basis_size(irreps_in: tuple[Irrep, ...], irrep_out: Irrep, degree: int) -> int:
    """Number of degree-``degree`` equivariant polynomials of ``irreps_in`` → ``irrep_out``:
    the size of :func:`openmace.o3.coupling_basis` (the multiplicity in ``Sym^degree``)."""
    counts = _monomial_weights(tuple(irreps_in), degree)[degree]
    return counts[(irrep_out.l, irrep_out.p)] - counts[(irrep_out.l + 1, irrep_out.p)]


def _lmax(irreps: tuple[Irrep, ...]) -> int:
    return max(ir.l for ir in irreps)


@cache
def _tree_levels(irreps_in: tuple[Irrep, ...], degree: int, lmax_keep: int) -> Counter:
    """Coupling trees of exactly ``degree`` factors by irrep (only irreps of ``l <= lmax_keep``),
    as :func:`openmace.o3.coupling._coupling_levels` builds them without reduction."""
    if degree == 1:
        return Counter(irreps_in)
    previous = _tree_levels(irreps_in, degree - 1, lmax_keep + _lmax(irreps_in))
    out: Counter = Counter()
    for ir_a, count in previous.items():
        for ir_b in irreps_in:
            for ir in ir_a * ir_b:
                if ir.l <= lmax_keep:
                    out[ir] += count
    return out


def tree_count(irreps_in: tuple[Irrep, ...], irrep_out: Irrep, degree: int) -> int:
    """Number of coupling trees (the weights per element and channel of one block, eq. 10)."""
    return _tree_levels(tuple(irreps_in), degree, irrep_out.l)[irrep_out]


def a_feature_irreps(config: MACEConfig, first: bool) -> tuple[Irrep, ...]:
    """Irreps of a layer's A-features: the spherical harmonics' irreps, both parities for
    every ``l`` after the first layer when the hidden features hold odd scalars (as
    ``openmace.model.mace`` builds them)."""
    if first or Irrep(0, -1) not in config.features.irreps:
        return tuple(spherical_harmonics_irreps(config.max_ell))
    return tuple(Irrep(l, p) for l in range(config.max_ell + 1) for p in (-1, 1))


class Layer(NamedTuple):
    """Irreps of one interaction layer: input features, A-features, output features."""

    irreps_in: tuple[Irrep, ...]
    irreps_a: tuple[Irrep, ...]
    irreps_out: tuple[Irrep, ...]
    residual: bool
    correlation: int


def layers(config: MACEConfig) -> list[Layer]:
    """The irreps of every layer of the model of ``config``."""
    features = config.features
    out, irreps_in = [], (Irrep(0, 1),)
    for t, correlation in enumerate(config.correlations):
        first, last = t == 0, t == config.num_interactions - 1
        irreps_out = features.scalars().irreps if last else features.irreps
        residual = config.residual_first or not first or config.interaction_of(t) == "nonlinear"
        irreps_a = a_feature_irreps(config, first)
        out.append(Layer(irreps_in, irreps_a, irreps_out, residual, correlation))
        irreps_in = irreps_out
    return out


def _tensor_product_paths(
    irreps_in: tuple[Irrep, ...], irreps_sh: tuple[Irrep, ...], target: tuple[Irrep, ...]
) -> Counter:
    """Paths of the channel-wise tensor product by output irrep."""
    wanted = set(target)
    return Counter(ir for ir1 in irreps_in for ir2 in irreps_sh for ir in ir1 * ir2 if ir in wanted)


def _mlp(prefix: str, sizes: list[int]) -> dict[str, Shape]:
    return {f"{prefix}.weights.{i}": (a, b) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))}


def _linear(
    prefix: str, blocks: list[tuple[int, Irrep]], irreps_out: tuple[Irrep, ...], c_out: int
) -> dict[str, Shape]:
    """Weights of an ``EquivariantLinear`` (per output irrep that an input block has)."""
    size = {ir: mul for mul, ir in blocks}
    present = [ir for ir in irreps_out if ir in size]
    return {f"{prefix}.weights.{i}": (size[ir], c_out) for i, ir in enumerate(present)}


def _layer_norm_mlp(prefix: str, sizes: list[int]) -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    pairs = list(zip(sizes, sizes[1:]))
    for i, (a, b) in enumerate(pairs):
        out[f"{prefix}.layers.{i}.weight"] = (a, b)
        out[f"{prefix}.layers.{i}.bias"] = (b,)
        if i < len(pairs) - 1:
            out[f"{prefix}.layers.{i}.norm_weight"] = (b,)
            out[f"{prefix}.layers.{i}.norm_bias"] = (b,)
    return out


def _edge_features(config: MACEConfig, first: bool, irreps_in, c: int):
    """Irreps and channels sent along edges (as :func:`openmace.model.mace.edge_features`)."""
    if config.edge_irreps is None or (first and not config.edge_irreps_first):
        return tuple(irreps_in), c
    edge = FeatureIrreps.parse(config.edge_irreps)
    return ((Irrep(0, 1),) if first else tuple(edge.irreps)), edge.channels


def expected_shapes(config: MACEConfig) -> dict[str, Shape]:
    """Name → shape of every entry of ``MACE(config).state_dict()`` (file format 3), in closed
    form: nothing is built. Contraction weights are ``[elements, coupling trees, channels]``."""
    c, e = config.features.channels, len(config.atomic_numbers)
    heads = len(config.heads)
    irreps_sh = tuple(spherical_harmonics_irreps(config.max_ell))
    shapes: dict[str, Shape] = {
        "atomic_energies": (e,) if heads == 1 else (heads, e),
        "embedding": (e, c),
        "radial.bessel.frequencies": (config.num_bessel,),
    }
    if config.distance_transform == "agnesi":
        shapes.update({f"distance_transform.{n}": () for n in ("q", "p", "a")})
    elif config.distance_transform == "soft":
        shapes["distance_transform.alpha"] = ()
    if config.embedding_specs is not None:
        specs = list(config.embedding_specs.values())
        for k, spec in enumerate(specs):
            shapes[f"joint_embedding.tables.{k}"] = (spec["num_classes"], spec["emb_dim"])
        shapes["joint_embedding.projection"] = (sum(s["emb_dim"] for s in specs), c)
    if config.embedding_readout:
        shapes["embedding_readout"] = (c, heads)
    if config.pair_repulsion:
        shapes["pair_repulsion.a_exp"] = ()
        shapes["pair_repulsion.a_prefactor"] = ()
    all_layers = layers(config)
    for t, layer in enumerate(all_layers):
        prefix = f"interactions.{t}"
        kind = config.interaction_of(t)
        irreps_edge, ce = _edge_features(config, t == 0, layer.irreps_in, c)
        shapes.update(
            _linear(f"{prefix}.linear_up", [(c, ir) for ir in layer.irreps_in], irreps_edge, ce)
        )
        paths = _tensor_product_paths(irreps_edge, irreps_sh, layer.irreps_a)
        mid = [(n * ce, ir) for ir, n in sorted(paths.items(), key=lambda kv: (kv[0].l, kv[0].p))]
        if kind != "nonlinear":
            radial = [config.num_bessel, *config.radial_mlp, sum(paths.values()) * ce]
            shapes.update(_mlp(f"{prefix}.messages.radial_mlp", radial))
            if kind == "density":
                shapes[f"{prefix}.density.weights.0"] = (config.num_bessel, 1)
            shapes.update(_linear(f"{prefix}.linear", mid, layer.irreps_a, c))
            skip_in = layer.irreps_in if layer.residual else layer.irreps_a
            skip_out = layer.irreps_out if layer.residual else layer.irreps_a
            skip = _linear(f"{prefix}.skip", [(c, ir) for ir in skip_in], skip_out, c)
            shapes.update({name: (e, c, c) for name in skip})
            continue
        radial_in = config.num_bessel + 2 * c
        radial = [radial_in, *config.radial_mlp, sum(paths.values()) * ce]
        shapes.update(_layer_norm_mlp(f"{prefix}.messages.radial_mlp", radial))
        shapes.update(_layer_norm_mlp(f"{prefix}.density", [radial_in, 64, 1]))
        gated = layer.irreps_a[1:]
        scalar = (Irrep(0, 1),)
        edge_blocks = [(ce, ir) for ir in irreps_edge]
        wide = c * (1 + len(gated))
        shapes[f"{prefix}.source_embedding"] = (e, c)
        shapes[f"{prefix}.target_embedding"] = (e, c)
        shapes.update(_linear(f"{prefix}.linear_scalars", mid, scalar, wide))
        shapes.update(_linear(f"{prefix}.linear_gated", mid, gated, c))
        shapes.update(_linear(f"{prefix}.residual_scalars", edge_blocks, scalar, wide))
        shapes.update(_linear(f"{prefix}.residual_gated", edge_blocks, gated, c))
        blocks = [(c, ir) for ir in layer.irreps_a]
        shapes.update(_linear(f"{prefix}.linear_out", blocks, layer.irreps_a, c))
        blocks = [(c, ir) for ir in layer.irreps_in]
        shapes.update(_linear(f"{prefix}.plain_skip", blocks, layer.irreps_out, c))
        shapes[f"{prefix}.alpha"] = ()
        shapes[f"{prefix}.beta"] = ()
    product_elements = 1 if config.agnostic_product else e
    for t, layer in enumerate(all_layers):
        prefix = f"products.{t}"
        for j, ir in enumerate(layer.irreps_out):
            for nu in range(1, layer.correlation + 1):
                if basis_size(layer.irreps_a, ir, nu) > 0:
                    trees = tree_count(layer.irreps_a, ir, nu)
                    shapes[f"{prefix}.contraction.weights.{j}_{nu}"] = (product_elements, trees, c)
        blocks = [(c, ir) for ir in layer.irreps_out]
        shapes.update(_linear(f"{prefix}.linear", blocks, layer.irreps_out, c))
    for t in range(len(all_layers)):
        mlp_readout = t == len(all_layers) - 1 and len(all_layers) > 1
        hidden = config.readout_mlp if mlp_readout else []
        bias = mlp_readout and config.readout_bias
        if bias:
            hidden = [config.readout_mlp[0]] * 2
        sizes = [c, *hidden, 1]
        if heads == 1 and not bias:
            shapes.update(_mlp(f"readouts.{t}.mlp", sizes))
            continue
        pairs = list(zip(sizes, sizes[1:]))
        for i, (a, b) in enumerate(pairs):
            shapes[f"readouts.{t}.heads_mlp.layers.{i}.weight"] = (heads, a, b)
            if bias and i > 0:
                shapes[f"readouts.{t}.heads_mlp.layers.{i}.bias"] = (heads, b)
    return shapes


def parameter_count(shapes: dict[str, Shape]) -> int:
    """Numbers held by the tensors of ``shapes``."""
    return sum(math.prod(shape) for shape in shapes.values())


def _monomial_count(dim: int, degree: int) -> int:
    return math.comb(dim + degree - 1, degree)


class ConstructionWork(NamedTuple):
    """What building the symmetric contractions of a config costs (closed-form estimates).

    ``basis_flops``: floating-point operations of the SVDs that reduce every level of the
    coupling bases (``min(rows, columns)² · max(rows, columns)`` per level and irrep); the bases
    are shared by layers with the same irreps. ``basis_numbers``: numbers of the largest tensor
    made while building them (a level's trees or polynomials × components × monomials, or a
    contraction's map from trees to monomials). ``contracted_numbers``: numbers of the weights
    contracted with the bases (elements × channels × output components × monomials, summed
    over layers), made again at every evaluation.
    """

    basis_flops: float
    basis_numbers: float
    contracted_numbers: float


def _basis_work(irreps_a: tuple[Irrep, ...], irrep_out: Irrep, degree: int) -> tuple[float, float]:
    """(SVD flops, largest tensor) of building the coupling basis and tree frame of one block,
    level by level as :func:`openmace.o3.coupling._coupling_levels` does."""
    lmax_in, dim = _lmax(irreps_a), sum(ir.dim for ir in irreps_a)
    flops, largest = 0.0, 0.0
    for d in range(2, degree + 1):
        keep = irrep_out.l + (degree - d) * lmax_in
        columns = _monomial_count(dim, d)
        reduced = {
            ir: basis_size(irreps_a, ir, d - 1)
            for ir in _tree_levels(irreps_a, d - 1, keep + lmax_in)
        }
        rows: Counter = Counter()
        for ir_a, count in reduced.items():
            for ir_b in irreps_a:
                for ir in ir_a * ir_b:
                    if ir.l <= keep:
                        rows[ir] += count
        trees = _tree_levels(irreps_a, d, keep)
        for ir, k in rows.items():
            size = ir.dim * columns
            flops += float(min(k, size)) ** 2 * max(k, size)
            largest = max(largest, float(max(k, trees[ir])) * size)
    return flops, largest


def construction_work(config: MACEConfig) -> ConstructionWork:
    """Estimate of the work of building the model of ``config`` (:class:`ConstructionWork`),
    by counting only: fast for any config that passes :class:`MACEConfig`'s validators."""
    e, c = len(config.atomic_numbers), config.features.channels
    flops, largest, contracted = 0.0, 0.0, 0.0
    done: set = set()
    for layer in layers(config):
        dim = sum(ir.dim for ir in layer.irreps_a)
        dim_out = sum(ir.dim for ir in layer.irreps_out)
        degrees = range(1, layer.correlation + 1)
        monomials = sum(_monomial_count(dim, nu) for nu in degrees)
        trees = sum(tree_count(layer.irreps_a, ir, nu) for ir in layer.irreps_out for nu in degrees)
        largest = max(largest, float(trees) * dim_out * monomials)
        contracted += float(e) * c * dim_out * monomials
        for ir in layer.irreps_out:
            for nu in degrees:
                if (layer.irreps_a, ir.l, nu) not in done:
                    done.add((layer.irreps_a, ir.l, nu))
                    level_flops, level_largest = _basis_work(layer.irreps_a, ir, nu)
                    flops, largest = flops + level_flops, max(largest, level_largest)
    return ConstructionWork(flops, largest, contracted)
