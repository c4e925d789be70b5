"""The training configuration: one validated object, from a YAML file and/or command-line flags.

Every field is a flag ``--field-name`` (underscore spellings and mace-torch names are aliases);
flags override the file. Unknown names and bad values are errors that say what is wrong.
The model's options are not declared here: they are derived from the fields of
:class:`openmace.model.MACEConfig` (see ``docs/configuration.md``).
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from openmace.model.config import config_problems, user_options
from openmace.o3 import FeatureIrreps


def _opt(default: Any, help: str, aliases: tuple[str, ...] = ()) -> Any:
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help, "aliases": aliases}, **kwargs)


def _derived_field(f: Field) -> tuple[str, Any, Any]:
    """A training option made from the declaration of a MACEConfig field (same metadata)."""
    if f.default is not MISSING:
        default = field(default=f.default, metadata=f.metadata)
    else:
        default = field(default_factory=f.default_factory, metadata=f.metadata)
    return f.name, f.metadata.get("option_type", f.type), default


ModelOptions = make_dataclass(
    "ModelOptions",
    [_derived_field(f) for f in user_options()],
    namespace={
        "__module__": __name__,
        "__doc__": "The user options of MACEConfig as fields (generated from its declarations).",
    },
)
MODEL_OPTIONS: tuple[str, ...] = tuple(f.name for f in user_options())
"""Names of the TrainConfig fields that are MACEConfig's user options."""
HIDDEN_IRREPS_OPTIONS = ("channels", "max_L")
"""TrainConfig-only conveniences that set ``hidden_irreps``."""


@dataclass
class TrainConfig(ModelOptions):
    """Everything ``openmace train`` needs: the model's options, the data and the recipe.

    - **Model options** (``r_max``, ``hidden_irreps``, ``correlation``, ...): inherited from
      :data:`ModelOptions`, which is generated from the user options of
      :class:`openmace.model.MACEConfig`; their defaults, help, aliases and validators are
      MACEConfig's. :meth:`model_options` returns them as MACEConfig keyword arguments.
    - **Conveniences** ``channels`` and ``max_L`` (mace-torch's ``num_channels``/``max_L``):
      when given they set ``hidden_irreps`` (``Cx0e+Cx1o+...`` up to ``max_L``; the one not
      given is taken from ``hidden_irreps``).
    - **Training options** (data files, loss, optimiser, run): declared below, once.

    Each field is a flag ``--name-with-dashes`` / ``--name_with_underscores`` of
    ``openmace train`` (:mod:`openmace.cli.train`) and a key of its YAML file, as are the
    field's aliases; :func:`build_config` merges file and flags and converts values by the
    field's type. ``__post_init__`` reports every problem at once.
    """

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
        "atoms) | '{1: -13.6, ...}' | foundation | estimated (the last two with "
        "--foundation-model); auto: isolated if the training file has isolated atoms, else "
        "average (fine-tuning: estimated)",
        aliases=("E0s",),
    )
    isolated_atom_types: list[str] = _opt(
        lambda: ["IsolatedAtom", "isolated_atom"], "config_type values that mark isolated atoms"
    )
    # model conveniences (the model's own options come from MACEConfig)
    channels: int | None = _opt(
        None,
        "channels per irrep: sets hidden_irreps to Cx0e+Cx1o+... (none: hidden_irreps' own)",
        aliases=("num_channels",),
    )
    max_L: int | None = _opt(
        None,
        "highest L of the hidden features (0..3): sets hidden_irreps (none: hidden_irreps' own)",
        aliases=("max-l",),
    )
    # fine-tuning (docs/finetuning.md)
    foundation_model: str | None = _opt(
        None,
        "fine-tune this model: an openmace or mace-torch .model file, or a published name "
        "(mp:medium-mpa-0, off:small, mh-1, ...; see openmace.foundations)",
    )
    foundation_head: str | None = _opt(
        None, "head of a multi-head foundation to fine-tune (default: its 'default' head)"
    )
    foundation_elements: str = _opt(
        "foundation",
        "foundation: keep all the foundation's elements; data: keep only the training data's "
        "(same predictions on them, a smaller model)",
    )
    freeze: int | None = _opt(
        None,
        "freeze the first N layers (embedding and layer 0 first; negative: all but the last "
        "|N|); a layer is an interaction, its product and its readout",
    )
    lr_embedding: float = _opt(1.0, "learning-rate factor of the element embedding")
    lr_interactions: float = _opt(1.0, "learning-rate factor of the interaction blocks")
    lr_products: float = _opt(1.0, "learning-rate factor of the product blocks")
    lr_readouts: float = _opt(1.0, "learning-rate factor of the readouts")
    multihead_finetuning: bool = _opt(
        False,
        "replay fine-tuning: a new head 'default' for the training data beside the "
        "foundation's head 'pt_head', trained together on --pt-train-file replay data",
        aliases=("multiheads_finetuning",),
    )
    pt_train_file: str | None = _opt(
        None, "replay data of the foundation's head (any ASE-readable file)"
    )
    num_samples_pt: int = _opt(1000, "replay structures kept from --pt-train-file")
    subselect_pt: str = _opt(
        "random", "random | fps (farthest-point sampling on the foundation's descriptors)"
    )
    pseudolabel_replay: bool = _opt(
        False, "label the replay structures with the foundation's own predictions"
    )
    weight_pt_head: float = _opt(
        1.0, "loss weight of the replay structures (the foundation's head)"
    )
    # optimisation
    batch_size: int = _opt(
        5, "structures per training batch (the global batch, over all data-parallel processes)"
    )
    batch_max_atoms: int | None = _opt(
        None,
        "instead of --batch-size structures, batches of at most this many atoms (a larger "
        "structure is a batch alone): flat memory on data of mixed sizes",
    )
    batch_max_edges: int | None = _opt(
        None,
        "instead of --batch-size structures, batches of at most this many edges (neighbour "
        "pairs within r_max, both directions; with --batch-max-atoms both limits hold; a larger "
        "structure is a batch alone): memory grows with edges, dense and sparse data alike",
    )
    num_workers: int = _opt(
        0, "DataLoader worker processes that read and batch structures (0: in the main process)"
    )
    ddp_timeout: float = _opt(
        600.0, "seconds a data-parallel collective waits before the run fails (torchrun, srun)"
    )
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
    apply_new_options: bool = _opt(
        False,
        "with --resume: apply changed optimisation options (lr, batch size, loss, scheduler, "
        "EMA decay, stage two) to the resumed run instead of refusing them",
    )
    quiet: bool = _opt(False, "no progress bars, log lines only")

    def __post_init__(self) -> None:
        #: fine-tuning defaults applied by build_config (name -> value); not an option
        self.fine_tuning_defaults: dict[str, Any] = {}
        #: the options the user gave (set by build_config; None: unknown, e.g. built in Python)
        self.given_options: set[str] | None = None
        problems = []

        def need(condition: bool, message: str) -> None:
            if not condition:
                problems.append(message)

        need(self.train_file is not None, "train_file is required")
        need(
            0.0 < self.valid_fraction < 1.0 or self.valid_file is not None,
            "valid_fraction must be between 0 and 1",
        )
        channels_ok = self.channels is None or self.channels >= 1
        max_l_ok = self.max_L is None or 0 <= self.max_L <= 3
        need(channels_ok, "channels must be >= 1")
        need(max_l_ok, "max_L must be 0..3")
        if channels_ok and max_l_ok:
            self._set_hidden_irreps()
        problems.extend(config_problems(self.model_options()))  # MACEConfig's validators
        need(self.batch_size >= 1 and self.valid_batch_size >= 1, "batch sizes must be >= 1")
        need(
            self.batch_max_atoms is None or self.batch_max_atoms >= 1,
            "batch_max_atoms must be >= 1",
        )
        need(
            self.batch_max_edges is None or self.batch_max_edges >= 1,
            "batch_max_edges must be >= 1",
        )
        need(self.num_workers >= 0, "num_workers must be >= 0")
        need(self.ddp_timeout > 0, "ddp_timeout must be positive")
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
        need(self.scheduler_patience >= 0, "scheduler_patience must be >= 0")
        need(0.0 < self.scheduler_factor < 1.0, "scheduler_factor must be in (0, 1)")
        need(self.huber_delta > 0, "huber_delta must be positive")
        need(self.clip_grad is None or self.clip_grad > 0, "clip_grad must be positive or none")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(self.threads is None or self.threads >= 1, "threads must be >= 1")
        need(self.patience is None or self.patience >= 0, "patience must be >= 0")
        need(self.stage_two_lr > 0, "stage_two_lr must be positive")
        need(
            is_plain_name(self.name),
            f"name must be a plain file name (no folders, '/', '\\', '..'), not {self.name!r}",
        )
        need(self.valid_fraction == self.valid_fraction, "valid_fraction must be a number")
        problems.extend(self._fine_tuning_problems())
        for name in ("energy_weight", "forces_weight", "stress_weight", "virials_weight"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def _fine_tuning_problems(self) -> list[str]:
        """Fine-tuning options that are invalid, or that would have no effect."""
        problems = []
        tuning = self.foundation_model is not None
        for name in ("foundation_head", "freeze"):
            if getattr(self, name) is not None and not tuning:
                problems.append(f"{name} needs --foundation-model")
        if self.e0s in ("foundation", "estimated") and not tuning:
            problems.append(f"e0s {self.e0s} needs --foundation-model")
        if self.foundation_elements not in ("foundation", "data"):
            problems.append(
                f"foundation_elements must be foundation or data, not {self.foundation_elements!r}"
            )
        elif self.foundation_elements == "data" and not tuning:
            problems.append("foundation_elements data needs --foundation-model")
        if self.multihead_finetuning and not tuning:
            problems.append("multihead_finetuning needs --foundation-model")
        if self.multihead_finetuning and self.pt_train_file is None:
            problems.append("multihead_finetuning needs --pt-train-file (the replay data)")
        if self.pt_train_file is not None and not self.multihead_finetuning:
            problems.append("pt_train_file needs --multihead-finetuning")
        if self.subselect_pt not in ("random", "fps"):
            problems.append(f"subselect_pt must be random or fps, not {self.subselect_pt!r}")
        if self.num_samples_pt < 1:
            problems.append("num_samples_pt must be >= 1")
        for name in ("lr_embedding", "lr_interactions", "lr_products", "lr_readouts"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0")
        if not self.weight_pt_head >= 0:
            problems.append("weight_pt_head must be >= 0")
        return problems

    def _set_hidden_irreps(self) -> None:
        """``channels`` and ``max_L`` (where given) → ``hidden_irreps``, as mace-torch does."""
        if self.channels is None and self.max_L is None:
            return
        try:
            current = FeatureIrreps.parse(self.hidden_irreps)
        except (ValueError, TypeError, AttributeError):
            return  # hidden_irreps' validator reports it
        channels = current.channels if self.channels is None else self.channels
        max_l = current.lmax if self.max_L is None else self.max_L
        self.hidden_irreps = "+".join(
            f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_l + 1)
        )

    @property
    def hidden(self) -> str:
        """The hidden irreps of the model (``hidden_irreps``, after channels and max_L)."""
        return self.hidden_irreps

    def model_options(self) -> dict[str, Any]:
        """Every MACEConfig user option as set here (copies), as keyword arguments."""
        return {name: copy.deepcopy(getattr(self, name)) for name in MODEL_OPTIONS}

    @property
    def run_dir(self) -> Path:
        return Path(self.work_dir)

    def to_dict(self) -> dict:
        return asdict(self)


FINE_TUNING_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "e0s": "estimated",
    "loss": "huber",
    "huber_delta": 0.01,
}
"""Defaults of a fine-tune (``--foundation-model``) that differ from plain training, applied
by :func:`build_config` to the options not given, and reported by the training log and the
model's provenance: a foundation's weights need a smaller step than random ones (0.01 moves
them far from the foundation in the first epoch); the foundation's predictions fix the E0s
best (``estimated``, see :mod:`openmace.train.finetune`); and a Huber loss (threshold 0.01)
keeps the energies from drifting while the forces adapt (benchmarks/finetune.py, 25 acac
structures, multi-head: energy MAE 24.4 meV/atom with the squared loss, 1.7 with Huber, forces
71.9 → 71.1 meV/Å; mace-torch switches to its Huber-based "universal" loss for fine-tuning
without saying so in its options)."""


def is_plain_name(name: object) -> bool:
    """Whether ``name`` can name files inside the work dir (``NAME.safetensors``, ...): not
    empty, no path separators, not ``.``/``..``, no control characters, at most 200 characters."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 200
        and name not in (".", "..")
        and not any(c in "/\\" or ord(c) < 32 for c in name)
    )


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
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, (int, float)):
                value = [value]
            if isinstance(value, str):
                value = value.strip("[]() ").split(",")
            return [_size(v) for v in value]
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
        return str(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid value for {name}: {value!r} (expected {kind})") from err


def _size(value: Any) -> int:
    """A layer size: 16, "16", or mace-torch's irreps spelling of scalars "16x0e"."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)x0e\s*", value)
        return int(match.group(1)) if match else int(value)
    return int(value)


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
    applied = {}
    if merged.get("foundation_model") is not None:
        for name, value in FINE_TUNING_DEFAULTS.items():
            if name not in merged:
                merged[name] = applied[name] = value
    cfg = TrainConfig(**merged)
    cfg.fine_tuning_defaults = applied
    cfg.given_options = set(merged) - set(applied)
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value")
    return data
