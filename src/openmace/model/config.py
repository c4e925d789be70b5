"""Hyperparameters of a MACE model: one validated object from the CLI, files and converters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from openmace.o3 import FeatureIrreps


@dataclass
class MACEConfig:
    """Every hyperparameter of :class:`openmace.model.MACE`.

    Units: lengths in Å, energies in eV.
    """

    atomic_numbers: list[int]
    atomic_energies: list[float]  # E0 per element (eV), same order as atomic_numbers
    r_max: float = 5.0
    num_bessel: int = 8
    num_polynomial_cutoff: int = 5
    max_ell: int = 3
    hidden_irreps: str = "128x0e+128x1o"
    correlation: int | list[int] = 3
    num_interactions: int = 2
    radial_mlp: list[int] = field(default_factory=lambda: [64, 64, 64])
    readout_mlp: list[int] = field(default_factory=lambda: [16])
    avg_num_neighbors: float = 1.0
    scale: float = 1.0
    shift: float = 0.0
    residual_first: bool = True
    pair_repulsion: bool = False

    def __post_init__(self) -> None:
        self.atomic_numbers = [int(z) for z in self.atomic_numbers]
        self.atomic_energies = [float(e) for e in self.atomic_energies]
        problems = []
        if len(self.atomic_numbers) == 0:
            problems.append("atomic_numbers is empty")
        if len(set(self.atomic_numbers)) != len(self.atomic_numbers):
            problems.append("atomic_numbers has duplicates")
        if any(not 1 <= z <= 118 for z in self.atomic_numbers):
            problems.append("atomic_numbers must be between 1 and 118")
        if len(self.atomic_energies) != len(self.atomic_numbers):
            problems.append("atomic_energies needs one value per element")
        if self.r_max <= 0:
            problems.append("r_max must be positive")
        if self.num_bessel < 1 or self.num_polynomial_cutoff < 1:
            problems.append("num_bessel and num_polynomial_cutoff must be >= 1")
        if not 0 <= self.max_ell <= 6:
            problems.append("max_ell must be between 0 and 6")
        if self.num_interactions < 1:
            problems.append("num_interactions must be >= 1")
        if any(not 1 <= c <= 4 for c in self.correlations):
            problems.append("correlation must be between 1 and 4")
        if len(self.correlations) != self.num_interactions:
            problems.append("correlation list needs one value per interaction")
        if self.avg_num_neighbors <= 0:
            problems.append("avg_num_neighbors must be positive")
        try:
            irreps = self.features
            if irreps.lmax > 3:
                problems.append("hidden irreps support L = 0..3")
            if irreps.irreps[0].l != 0 or irreps.irreps[0].p != 1:
                problems.append("hidden irreps must start with the even scalars (e.g. 64x0e)")
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

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
