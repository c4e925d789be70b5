"""The training configuration: one validated object, from a YAML file and/or command-line flags.

Every field is a flag ``--field-name`` (underscore spellings and mace-torch names are aliases);
flags override the file. Unknown names and bad values are errors that say what is wrong.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


def _opt(default: Any, help: str, aliases: tuple[str, ...] = ()) -> Any:
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help, "aliases": aliases}, **kwargs)


@dataclass
class TrainConfig:
    # data
    train_file: str | None = _opt(None, "training structures (any ASE-readable file)")
    valid_file: str | None = _opt(
        None, "validation structures (default: split off the training set)"
    )
    valid_fraction: float = _opt(0.05, "fraction of the training set used for validation")
    test_file: str | None = _opt(None, "test structures, evaluated at the end")
    energy_key: str = _opt("REF_energy", "name of the energy label (eV)")
    forces_key: str = _opt("REF_forces", "name of the forces label (eV/Å)")
    stress_key: str = _opt("REF_stress", "name of the stress label (eV/Å³, ASE sign)")
    virials_key: str = _opt("REF_virials", "name of the virials label (eV)")
    e0s: str = _opt(
        "auto",
        "isolated | average | FILE (JSON/YAML mapping or XYZ of isolated "
        "atoms) | '{1: -13.6, ...}'; auto: isolated if the training file has "
        "isolated atoms, else average",
        aliases=("E0s",),
    )
    isolated_atom_types: list[str] = _opt(
        lambda: ["IsolatedAtom", "isolated_atom"], "config_type values that mark isolated atoms"
    )
    # model
    channels: int = _opt(128, "channels per irrep", aliases=("num_channels",))
    max_L: int = _opt(1, "highest L of the hidden features (0..3)", aliases=("max-l",))
    hidden_irreps: str | None = _opt(
        None, "explicit hidden irreps, e.g. 64x0e+64x1o (overrides --channels/--max-L)"
    )
    max_ell: int = _opt(3, "highest l of the spherical harmonics")
    correlation: int = _opt(3, "body order - 1 of the messages (1..4)")
    num_interactions: int = _opt(2, "message-passing layers")
    r_max: float = _opt(5.0, "cutoff radius (Å)")
    num_bessel: int = _opt(8, "radial Bessel functions")
    num_polynomial_cutoff: int = _opt(5, "order p of the polynomial cutoff envelope")
    radial_mlp: list[int] = _opt(
        lambda: [64, 64, 64], "hidden sizes of the radial MLP", aliases=("radial_MLP",)
    )
    readout_mlp: int = _opt(16, "hidden size of the last readout MLP", aliases=("MLP_irreps",))
    residual_first: bool = _opt(
        True,
        "residual (element-dependent self-connection) first "
        "layer, as mace-torch's default ScaleShiftMACE; its "
        "--model MACE uses a non-residual one",
    )
    pair_repulsion: bool = _opt(False, "add ZBL pair repulsion")
    # optimisation
    batch_size: int = _opt(5, "structures per training batch")
    valid_batch_size: int = _opt(10, "structures per evaluation batch")
    lr: float = _opt(0.01, "learning rate (AMSGrad Adam)")
    epochs: int = _opt(200, "training epochs", aliases=("max_num_epochs",))
    ema_decay: float = _opt(0.99, "decay of the weight EMA (0 disables it)")
    energy_weight: float = _opt(1.0, "loss weight of energy per atom")
    forces_weight: float = _opt(100.0, "loss weight of forces")
    stress_weight: float = _opt(1.0, "loss weight of stress")
    virials_weight: float = _opt(1.0, "loss weight of virials per atom")
    loss: str = _opt("mse", "mse or huber")
    huber_delta: float = _opt(0.01, "Huber threshold (with --loss huber)")
    weight_decay: float = _opt(5e-7, "weight decay on the product and message weights")
    clip_grad: float | None = _opt(10.0, "gradient-norm clipping (none to disable)")
    scheduler_patience: int = _opt(50, "epochs without improvement before the lr is reduced")
    scheduler_factor: float = _opt(0.8, "factor of each lr reduction")
    patience: int | None = _opt(None, "stop after this many epochs without improvement")
    stage_two_start: float | None = _opt(None, "fraction of epochs after which stage two starts")
    stage_two_lr: float = _opt(1e-3, "learning rate in stage two")
    stage_two_energy_weight: float = _opt(1000.0, "energy loss weight in stage two")
    stage_two_forces_weight: float = _opt(100.0, "forces loss weight in stage two")
    eval_interval: int = _opt(1, "epochs between validations")
    # run
    seed: int = _opt(123, "random seed (initial weights, split, batch order)")
    dtype: str = _opt("float64", "float32 or float64", aliases=("default_dtype",))
    device: str = _opt("cpu", "cpu, cuda, cuda:1, ...")
    threads: int | None = _opt(None, "CPU threads for PyTorch (default: PyTorch's choice)")
    work_dir: str = _opt("openmace_run", "folder for checkpoints, logs, plots and the model")
    name: str = _opt("model", "run name (file names in --work-dir)")
    resume: bool = _opt(False, "continue from the last checkpoint in --work-dir")
    quiet: bool = _opt(False, "no progress bars, log lines only")

    def __post_init__(self) -> None:
        problems = []

        def need(condition: bool, message: str) -> None:
            if not condition:
                problems.append(message)

        need(self.train_file is not None, "train_file is required")
        need(
            0.0 < self.valid_fraction < 1.0 or self.valid_file is not None,
            "valid_fraction must be between 0 and 1",
        )
        need(self.channels >= 1, "channels must be >= 1")
        need(0 <= self.max_L <= 3, "max_L must be 0..3")
        need(1 <= self.correlation <= 4, "correlation must be 1..4")
        need(self.num_interactions >= 1, "num_interactions must be >= 1")
        need(self.r_max > 0, "r_max must be positive")
        need(self.batch_size >= 1 and self.valid_batch_size >= 1, "batch sizes must be >= 1")
        need(self.lr > 0, "lr must be positive")
        need(self.epochs >= 1, "epochs must be >= 1")
        need(0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)")
        need(self.loss in ("mse", "huber"), f"loss must be mse or huber, not {self.loss!r}")
        need(
            self.dtype in ("float32", "float64"),
            f"dtype must be float32 or float64, not {self.dtype!r}",
        )
        need(
            self.stage_two_start is None or 0.0 <= self.stage_two_start < 1.0,
            "stage_two_start must be a fraction in [0, 1)",
        )
        need(self.eval_interval >= 1, "eval_interval must be >= 1")
        need(all(n >= 1 for n in self.radial_mlp), "radial_mlp sizes must be >= 1")
        need(self.readout_mlp >= 1, "readout_mlp must be >= 1")
        need(self.num_bessel >= 1, "num_bessel must be >= 1")
        need(self.num_polynomial_cutoff >= 1, "num_polynomial_cutoff must be >= 1")
        need(0 <= self.max_ell <= 6, "max_ell must be 0..6")
        need(self.scheduler_patience >= 0, "scheduler_patience must be >= 0")
        need(0.0 < self.scheduler_factor < 1.0, "scheduler_factor must be in (0, 1)")
        need(self.huber_delta > 0, "huber_delta must be positive")
        need(self.clip_grad is None or self.clip_grad > 0, "clip_grad must be positive or none")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(self.threads is None or self.threads >= 1, "threads must be >= 1")
        need(self.patience is None or self.patience >= 0, "patience must be >= 0")
        need(self.stage_two_lr > 0, "stage_two_lr must be positive")
        need(self.valid_fraction == self.valid_fraction, "valid_fraction must be a number")
        for name in ("energy_weight", "forces_weight", "stress_weight", "virials_weight"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def hidden(self) -> str:
        if self.hidden_irreps:
            return self.hidden_irreps
        return "+".join(
            f"{self.channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(self.max_L + 1)
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.work_dir)

    def to_dict(self) -> dict:
        return asdict(self)


def field_aliases() -> dict[str, str]:
    """Every accepted spelling → field name."""
    out = {}
    for f in fields(TrainConfig):
        for name in (f.name, *f.metadata.get("aliases", ())):
            out[name] = f.name
            out[name.replace("_", "-")] = f.name
            out[name.lower()] = f.name
    return out


def _convert(name: str, value: Any) -> Any:
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    kind = types[name]
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if "None" in kind:
            return None
        raise ValueError(f"{name} cannot be empty")
    try:
        if kind.startswith("list[int]"):
            if isinstance(value, str):
                value = value.strip("[]() ").split(",")
            return [int(v) for v in value]
        if kind.startswith("list[str]"):
            return [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        if kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "yes", "1")
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if name == "e0s" and isinstance(value, dict):
            import json

            return json.dumps({str(k): v for k, v in value.items()})
        if name == "readout_mlp" and isinstance(value, str) and "x" in value:
            return int(value.split("x")[0])
        return str(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid value for {name}: {value!r} (expected {kind})") from err


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> TrainConfig:
    """Merge a config file's values with flags (flags win), validating names and values."""
    aliases = field_aliases()
    merged: dict[str, Any] = {}
    for source, values in (("config file", file_values), ("command line", flag_values)):
        for key, value in values.items():
            name = aliases.get(key) or aliases.get(key.lower())
            if name is None:
                close = difflib.get_close_matches(key, list(aliases), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{source}: unknown option {key!r}{hint}")
            merged[name] = _convert(name, value)
    if "readout_mlp" in merged and isinstance(merged["readout_mlp"], str):
        merged["readout_mlp"] = int(merged["readout_mlp"])
    return TrainConfig(**merged)


def load_config_file(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value")
    return data
