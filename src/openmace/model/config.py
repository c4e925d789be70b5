"""Hyperparameters of a MACE model: one validated object from the CLI, files and converters.

Every hyperparameter is declared once, as a field of :class:`MACEConfig`: its default, its help
text (with units), the other names it is known by (mace-torch's spellings) and its validator.
The training options of the model, the flags of ``openmace train``, their YAML keys and
``--help`` are derived from these declarations (:mod:`openmace.train.config`). Fields computed
from the training data (elements, E0s, statistics) are declared with :func:`computed` and are not
user options. ``docs/configuration.md`` describes how to add an option.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any

from openmace.o3 import FeatureIrreps

Check = Callable[[Any], "str | None"]
"""A validator: the value of one field → what is wrong with it, or None."""


def option(
    default: Any,
    help: str,
    *,
    aliases: tuple[str, ...] = (),
    check: Check | None = None,
    option_type: str | None = None,
) -> Any:
    """Declare a user option (a field of :class:`MACEConfig`, a flag and YAML key of training).

    ``default`` may be a callable that makes the value (lists); ``help`` gives the units;
    ``aliases`` are other accepted names (mace-torch's); ``check`` is the one validator;
    ``option_type`` is the type read from flags and YAML when narrower than the field's type.
    """
    metadata: dict[str, Any] = {"option": True, "help": help, "aliases": aliases, "check": check}
    if option_type is not None:
        metadata["option_type"] = option_type
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def computed(help: str, *, check: Check | None = None, default: Any = MISSING) -> Any:
    """Declare a field computed from the training data (or a converted model): not a user
    option. A callable ``default`` makes the value (lists, dicts)."""
    metadata = {"option": False, "help": help, "aliases": (), "check": check}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def need(predicate: Callable[[Any], bool], problem: str) -> Check:
    """A validator that reports ``problem`` unless ``predicate(value)`` holds (or if it fails)."""

    def check(value: Any) -> str | None:
        try:
            ok = bool(predicate(value))
        except (TypeError, ValueError):
            ok = False
        return None if ok else problem

    return check


# bounds of the values no model needs to exceed (a model file's header is checked against them
# before anything is built; docs/robustness.md)
MAX_R_MAX = 100.0  # Å
MIN_R_MAX = 0.1  # Å: the closest two atoms may be
MAX_NUM_BESSEL = 256
MAX_POLYNOMIAL_CUTOFF = 64
MAX_MLP_LAYERS = 64


def is_int(value: Any) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A finite real number (Python's or NumPy's), not a bool."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond the floats
        return False


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _int_between(name: str, low: int, high: int | None = None) -> Check:
    bounds = f"between {low} and {high}" if high is not None else f">= {low}"
    return need(
        lambda v: is_int(v) and low <= v and (high is None or v <= high),
        f"{name} must be an integer {bounds}",
    )


def _finite(name: str, positive: bool = False) -> Check:
    kind = "a finite positive number" if positive else "a finite number"
    return need(lambda v: is_finite(v) and (not positive or v > 0), f"{name} must be {kind}")


def _sizes(name: str) -> Check:
    return need(
        lambda v: _is_list(v) and len(v) <= MAX_MLP_LAYERS and all(is_int(n) and n >= 1 for n in v),
        f"{name} must be a list of at most {MAX_MLP_LAYERS} sizes >= 1",
    )


def _check_atomic_energies(energies: Any) -> str | None:
    if _is_list(energies) and energies and all(_is_list(row) for row in energies):
        if all(is_finite(e) for row in energies for e in row):  # one row per head
            return None
    if not _is_list(energies) or not all(is_finite(e) for e in energies):
        return "atomic_energies must be a list of finite numbers (eV), or one such list per head"
    return None


def _check_per_head_number(name: str) -> Check:
    return need(
        lambda v: is_finite(v) or (_is_list(v) and len(v) > 1 and all(is_finite(x) for x in v)),
        f"{name} must be a finite number, or a list of them (one per head of a multi-head model)",
    )


def _check_heads(heads: Any) -> str | None:
    if not _is_list(heads) or not heads or not all(isinstance(h, str) and h for h in heads):
        return "heads must be a non-empty list of names"
    if len(set(heads)) != len(heads):
        return "heads has duplicate names"
    if len(heads) > 256 or any(len(h) > 100 for h in heads):
        return "heads: at most 256 names of at most 100 characters"
    return None


INTERACTIONS = ("standard", "density", "nonlinear")
DISTANCE_TRANSFORMS = (None, "agnesi", "soft")
EMBEDDING_INPUTS = ("total_charge", "total_spin")
MAX_EMBEDDING_CLASSES = 1024


def _check_embedding_specs(specs: Any) -> str | None:
    """The per-structure inputs embedded with the elements (mace-torch's ``embedding_specs``):
    categorical, per graph, named total_charge / total_spin."""
    if specs is None:
        return None
    if not isinstance(specs, dict) or not specs:
        return "embedding_specs must be a non-empty mapping of input name to spec, or null"
    for name, spec in specs.items():
        if name not in EMBEDDING_INPUTS:
            return f"embedding_specs: input {name!r} is not supported (only {EMBEDDING_INPUTS})"
        if not isinstance(spec, dict):
            return f"embedding_specs[{name!r}] must be a mapping"
        if spec.get("type") != "categorical" or spec.get("per", "graph") != "graph":
            return f"embedding_specs[{name!r}]: only categorical per-structure inputs are supported"
        classes, dim = spec.get("num_classes"), spec.get("emb_dim")
        if not (is_int(classes) and 1 <= classes <= MAX_EMBEDDING_CLASSES):
            return f"embedding_specs[{name!r}].num_classes must be 1..{MAX_EMBEDDING_CLASSES}"
        if not (is_int(dim) and 1 <= dim <= 4096):
            return f"embedding_specs[{name!r}].emb_dim must be 1..4096"
        if not is_int(spec.get("offset", 0)):
            return f"embedding_specs[{name!r}].offset must be an integer"
    return None


def _check_edge_irreps(text: Any) -> str | None:
    if text is None:
        return None
    problem = _check_hidden_irreps(text)
    return problem.replace("hidden_irreps", "edge_irreps") if problem else None


def _check_correlation(value: Any) -> str | None:
    values = value if _is_list(value) else [value]
    if len(values) == 0 or not all(is_int(c) and 1 <= c <= 4 for c in values):
        return "correlation must be between 1 and 4 (an integer, or a list of them)"
    return None


def _check_atomic_numbers(numbers: Any) -> str | None:
    if not _is_list(numbers) or not all(is_int(z) for z in numbers):
        return "atomic_numbers must be a list of integers"
    problems = []
    if len(numbers) == 0:
        problems.append("atomic_numbers is empty")
    if len(set(numbers)) != len(numbers):
        problems.append("atomic_numbers has duplicates")
    if any(not 1 <= z <= 118 for z in numbers):
        problems.append("atomic_numbers must be between 1 and 118")
    return "; ".join(problems) or None


def _check_hidden_irreps(text: Any) -> str | None:
    if not isinstance(text, str):
        return f"hidden_irreps must be text such as 64x0e+64x1o, not {type(text).__name__}"
    if len(text) > 200:  # at most 8 distinct irreps of L <= 3
        return f"hidden_irreps is too long ({len(text)} characters)"
    try:
        irreps = FeatureIrreps.parse(text)
    except ValueError as err:
        return f"hidden_irreps: {err}"
    except (TypeError, AttributeError):
        return f"hidden_irreps must be text such as 64x0e+64x1o, not {text!r}"
    problems = []
    if irreps.channels < 1:
        problems.append("hidden_irreps need at least one channel")
    if irreps.lmax > 3:
        problems.append("hidden_irreps support L = 0..3")
    if irreps.irreps[0].l != 0 or irreps.irreps[0].p != 1:
        problems.append("hidden_irreps must start with the even scalars (e.g. 64x0e)")
    return "; ".join(problems) or None


@dataclass
class MACEConfig:
    """Every hyperparameter of :class:`openmace.model.MACE`.

    Units: lengths in Å, energies in eV. Each field's metadata holds its ``help``, ``aliases``,
    ``check`` (validator) and ``option`` (whether users set it, or it comes from the data).
    """

    atomic_numbers: list[int] = computed(
        "elements of the model (atomic numbers)", check=_check_atomic_numbers
    )
    atomic_energies: list[float] = computed(
        "E0 per element (eV), same order as atomic_numbers", check=_check_atomic_energies
    )
    r_max: float = option(
        5.0,
        "cutoff radius (Å)",
        check=need(
            lambda v: is_finite(v) and MIN_R_MAX <= v <= MAX_R_MAX,
            f"r_max must be a finite number between {MIN_R_MAX} and {MAX_R_MAX} Å",
        ),
    )
    num_bessel: int = option(
        8,
        "radial Bessel functions",
        aliases=("num_radial_basis",),
        check=_int_between("num_bessel", 1, MAX_NUM_BESSEL),
    )
    num_polynomial_cutoff: int = option(
        5,
        "order p of the polynomial cutoff envelope",
        aliases=("num_cutoff_basis",),
        check=_int_between("num_polynomial_cutoff", 1, MAX_POLYNOMIAL_CUTOFF),
    )
    max_ell: int = option(
        3,
        "highest l of the spherical harmonics (0..6)",
        check=_int_between("max_ell", 0, 6),
    )
    hidden_irreps: str = option(
        "128x0e+128x1o",
        "hidden features: the same number of channels for every irrep, L = 0..3, the even "
        "scalars first (training: --channels and --max-L set it too)",
        check=_check_hidden_irreps,
    )
    correlation: int | list[int] = option(
        3,
        "body order - 1 of the messages (1..4; from Python also a list, one per interaction)",
        check=_check_correlation,
        option_type="int",
    )
    num_interactions: int = option(
        2,
        "message-passing layers",
        check=_int_between("num_interactions", 1),
    )
    radial_mlp: list[int] = option(
        lambda: [64, 64, 64],
        "hidden sizes of the radial MLP",
        aliases=("radial_MLP",),
        check=_sizes("radial_mlp"),
    )
    readout_mlp: list[int] = option(
        lambda: [16],
        "hidden sizes of the last readout MLP (mace-torch's spelling 16x0e reads as 16)",
        aliases=("MLP_irreps",),
        check=_sizes("readout_mlp"),
    )
    avg_num_neighbors: float = computed(
        "mean number of neighbours within r_max in the training set",
        check=_finite("avg_num_neighbors", positive=True),
        default=1.0,
    )
    scale: float | list[float] = computed(
        "scale of the learned atomic energies: RMS of the training forces (eV/Å); one per head",
        check=_check_per_head_number("scale"),
        default=1.0,
    )
    shift: float | list[float] = computed(
        "shift of the atomic energies: mean interaction energy per atom (eV); one per head",
        check=_check_per_head_number("shift"),
        default=0.0,
    )
    residual_first: bool = option(
        True,
        "residual (element-dependent self-connection) first layer, as mace-torch's default "
        "ScaleShiftMACE; its --model MACE uses a non-residual one",
        check=need(lambda v: isinstance(v, bool), "residual_first must be true or false"),
    )
    pair_repulsion: bool = option(
        False,
        "add ZBL pair repulsion",
        check=need(lambda v: isinstance(v, bool), "pair_repulsion must be true or false"),
    )
    interaction: str = option(
        "standard",
        "interaction block of every layer: standard (neighbour sum / avg_num_neighbors), "
        "density (sum / (1 + learned edge density): MACE-MP-0b2/b3, MPA-0, OMAT-0) or "
        "nonlinear (element-embedded LayerNorm radial MLP, learned density normalisation and a "
        "gated non-linearity: MACE-MH-1, OMOL)",
        check=need(lambda v: v in INTERACTIONS, f"interaction must be one of {INTERACTIONS}"),
        option_type="str",
    )
    interaction_first: str | None = option(
        None,
        "interaction block of the first layer (default: as --interaction)",
        check=need(
            lambda v: v is None or v in INTERACTIONS,
            f"interaction_first must be one of {INTERACTIONS}",
        ),
    )
    distance_transform: str | None = option(
        None,
        "transform of the edge length before the radial basis: agnesi (ACEpotentials' "
        "r -> 1/(1 + a x^q / (1 + x^(q-p))), x = r / r0, r0 the mean covalent radius of the "
        "pair) or soft (tanh switch towards 3/4 of the covalent-radii sum); none by default",
        check=need(
            lambda v: v in DISTANCE_TRANSFORMS, "distance_transform must be agnesi, soft or none"
        ),
    )
    apply_cutoff: bool = option(
        True,
        "multiply the radial features by the cutoff envelope (false: the envelope multiplies "
        "the radial MLP's output instead, as mace-torch's apply_cutoff=False)",
        check=need(lambda v: isinstance(v, bool), "apply_cutoff must be true or false"),
    )
    edge_irreps: str | None = option(
        None,
        "irreps of the node features sent along edges (default: the layer's input irreps)",
        check=_check_edge_irreps,
    )
    edge_irreps_first: bool = option(
        False,
        "the first layer sends the scalars of edge_irreps (mace-torch's use_edge_irreps_first)",
        aliases=("use_edge_irreps_first",),
        check=need(lambda v: isinstance(v, bool), "edge_irreps_first must be true or false"),
    )
    agnostic_product: bool = option(
        False,
        "one symmetric-contraction weight for all elements (mace-torch's use_agnostic_product)",
        aliases=("use_agnostic_product",),
        check=need(lambda v: isinstance(v, bool), "agnostic_product must be true or false"),
    )
    readout_bias: bool = option(
        False,
        "the last readout has a second hidden layer and biases (mace-torch's "
        "NonLinearBiasReadoutBlock)",
        check=need(lambda v: isinstance(v, bool), "readout_bias must be true or false"),
    )
    heads: list[str] = computed(
        "names of the heads (one readout, E0 set, scale and shift each)",
        check=_check_heads,
        default=lambda: ["default"],
    )
    embedding_specs: dict | None = computed(
        "per-structure inputs (total_charge, total_spin) embedded with the elements",
        check=_check_embedding_specs,
        default=None,
    )
    embedding_readout: bool = computed(
        "a linear energy readout of the embedded inputs, added unscaled to E0",
        check=need(lambda v: isinstance(v, bool), "embedding_readout must be true or false"),
        default=False,
    )

    def __post_init__(self) -> None:
        problems = config_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))
        self.atomic_numbers = [int(z) for z in self.atomic_numbers]
        energies: Any = self.atomic_energies
        if energies and _is_list(energies[0]):
            self.atomic_energies = [[float(e) for e in row] for row in energies]
        else:
            self.atomic_energies = [float(e) for e in energies]

    @property
    def head_energies(self) -> list[list[float]]:
        """E0 per head and element ``[heads][elements]`` (eV)."""
        energies: Any = self.atomic_energies
        return [list(row) for row in energies] if _is_list(energies[0]) else [list(energies)]

    def per_head(self, name: str) -> list[float]:
        """``scale`` or ``shift`` as one value per head."""
        value = getattr(self, name)
        return [float(v) for v in value] if _is_list(value) else [float(value)] * len(self.heads)

    def interaction_of(self, layer: int) -> str:
        """The interaction block of ``layer`` (0 = first)."""
        if layer == 0 and self.interaction_first is not None:
            return self.interaction_first
        return self.interaction

    @property
    def correlations(self) -> list[int]:
        if isinstance(self.correlation, int):
            return [self.correlation] * self.num_interactions
        return list(self.correlation)

    @property
    def features(self) -> FeatureIrreps:
        return FeatureIrreps.parse(self.hidden_irreps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MACEConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"invalid model config: unknown field(s) {sorted(unknown)}")
        return cls(**data)


def user_options() -> tuple[Field, ...]:
    """The fields of :class:`MACEConfig` that users set (not computed from the data)."""
    return tuple(f for f in fields(MACEConfig) if f.metadata["option"])


def config_problems(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``values`` (field name → value, any subset of MACEConfig's fields):
    each field's own validator, then the rules that relate fields given together."""
    problems = []
    for f in fields(MACEConfig):
        check = f.metadata["check"]
        if check is not None and f.name in values:
            problem = check(values[f.name])
            if problem:
                problems.append(problem)
    if {"atomic_numbers", "atomic_energies"} <= set(values):
        elements, energies = values["atomic_numbers"], values["atomic_energies"]
        rows = energies if _is_list(energies) and energies and _is_list(energies[0]) else [energies]
        if _is_list(elements) and any(_is_list(r) and len(r) != len(elements) for r in rows):
            problems.append("atomic_energies needs one value per element")
        heads = values.get("heads", ["default"])
        nested = rows is energies
        if _is_list(heads) and (len(heads) > 1 or nested) and len(rows) != len(heads):
            problems.append("atomic_energies needs one row per head")
        elif _is_list(heads) and len(heads) == 1 and nested:
            problems.append("atomic_energies of a single-head model is one list (eV)")
    heads = values.get("heads", ["default"])
    for name in ("scale", "shift"):
        value = values.get(name)
        if _is_list(value) and _is_list(heads) and len(value) != len(heads):
            problems.append(f"{name} needs one value per head")
    first = values.get("interaction_first") or values.get("interaction", "standard")
    if first == "nonlinear" and values.get("residual_first") is False:
        problems.append("the nonlinear interaction is residual: residual_first must be true")
    edge = values.get("edge_irreps")
    if isinstance(edge, str) and _check_edge_irreps(edge) is None:
        if not FeatureIrreps.parse(edge).irreps:
            problems.append("edge_irreps is empty")
    if {"correlation", "num_interactions"} <= set(values):
        correlation = values["correlation"]
        if (
            isinstance(correlation, (list, tuple))
            and len(correlation) != values["num_interactions"]
        ):
            problems.append("correlation list needs one value per interaction")
    return problems
