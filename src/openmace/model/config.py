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
    """Declare a field computed from the training data: not a user option."""
    metadata = {"option": False, "help": help, "aliases": (), "check": check}
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
    if not _is_list(energies) or not all(is_finite(e) for e in energies):
        return "atomic_energies must be a list of finite numbers (eV)"
    return None


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
    scale: float = computed(
        "scale of the learned atomic energies: RMS of the training forces (eV/Å)",
        check=_finite("scale"),
        default=1.0,
    )
    shift: float = computed(
        "shift of the atomic energies: mean interaction energy per atom (eV)",
        check=_finite("shift"),
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

    def __post_init__(self) -> None:
        problems = config_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))
        self.atomic_numbers = [int(z) for z in self.atomic_numbers]
        self.atomic_energies = [float(e) for e in self.atomic_energies]

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
        if _is_list(elements) and _is_list(energies) and len(energies) != len(elements):
            problems.append("atomic_energies needs one value per element")
    if {"correlation", "num_interactions"} <= set(values):
        correlation = values["correlation"]
        if (
            isinstance(correlation, (list, tuple))
            and len(correlation) != values["num_interactions"]
        ):
            problems.append("correlation list needs one value per interaction")
    return problems
