"""The training loop: the paper's recipe (Appendix A.5) with checkpoints and resume.

AMSGrad Adam; weight decay on the product and message weights; gradient clipping; an EMA of
the weights for validation and the saved model; ReduceLROnPlateau on the validation loss;
optional stage two (other loss weights, lower lr) for the last part of training; early stopping.
Every evaluation writes an atomic checkpoint; ``resume`` continues from it and reaches the same
result as an uninterrupted run (batch order is a function of seed and epoch only).

A run's files are never lost or replaced: :func:`train` holds a lock on ``WORK_DIR/NAME.lock``
(:class:`openmace.train.checkpoint.WorkDirLock`); a new run refuses a work dir that holds the
run's checkpoint or model; ``resume`` without a checkpoint is an error listing the checkpoints
present; on ``resume`` each option that differs from the checkpoint's run is refused, or applied
and reported, by the policy of :data:`RESUME_FREE`, :data:`RESUME_REPORTED` and
:data:`RESUME_OPTIMISATION` (all others, the model and data options, are refused), and the
changes applied are recorded in the checkpoint and the model's provenance (``resume_changes``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from openmace.accel import for_inference, for_training
from openmace.data.dataset import Batch, GraphDataset, load_batches
from openmace.data.statistics import compute_statistics
from openmace.evaluation.metrics import (
    Predictions,
    error_rows,
    format_table,
    predict,
    predictions_from,
)
from openmace.evaluation.plots import plot_learning_curves, plot_parity
from openmace.evaluation.predict import split_by_structure
from openmace.io.files import atomic_open
from openmace.io.model_file import save_model
from openmace.memory import check_memory
from openmace.model import MACE, MACEConfig
from openmace.train.checkpoint import (
    WorkDirLock,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
)
from openmace.train.config import TrainConfig
from openmace.train.data_setup import (
    TrainingData,
    file_digest,
    graph_dataset,
    load_training_data,
)
from openmace.train.distributed import (
    World,
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_parameters,
    gather,
    global_batches,
    share,
)
from openmace.train.ema import EMA
from openmace.train.finetune import (
    GROUPS,
    FineTuning,
    load_foundation,
    parameter_group,
    prepare_fine_tuning,
)
from openmace.train.loss import TERMS, LossWeights, combine, compute_loss, loss_terms

log = logging.getLogger("openmace.train")


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. a non-finite loss); the last checkpoint is kept."""


RESUME_FREE = (
    "resume",
    "apply_new_options",
    "device",
    "threads",
    "quiet",
    "work_dir",
    "name",
    "num_workers",
    "ddp_timeout",
)
"""Options of where and how a run executes, not what it computes: free to differ on resume."""
RESUME_REPORTED = ("epochs", "patience", "valid_batch_size", "test_file")
"""May differ on resume (the run's length, early stopping, the evaluation batch size, the final
test set): applied, reported in the log and recorded."""
RESUME_OPTIMISATION = (
    "lr",
    "batch_size",
    "batch_max_atoms",
    "batch_max_edges",
    "eval_interval",
    "ema_decay",
    "energy_weight",
    "forces_weight",
    "stress_weight",
    "virials_weight",
    "loss",
    "huber_delta",
    "weight_decay",
    "clip_grad",
    "scheduler_patience",
    "scheduler_factor",
    "stage_two_start",
    "stage_two_lr",
    "stage_two_energy_weight",
    "stage_two_forces_weight",
)
"""Refused on resume unless ``apply_new_options``; then applied for real (the learning rate,
weight decay, scheduler and EMA settings are set in the restored optimiser, scheduler and EMA)
and recorded. Every other option (model options, data files and label keys, E0s, seed, dtype)
is refused: the checkpoint's weights and statistics belong to them. A data file given under a
new path with the same content (SHA-256) is accepted and reported."""
DATA_FILES = ("train_file", "valid_file", "foundation_model", "pt_train_file")


def checkpoint_path(cfg: TrainConfig) -> Path:
    """Where the run ``cfg`` keeps its checkpoint."""
    return cfg.run_dir / "checkpoints" / f"{cfg.name}.ckpt"


@dataclass
class TrainResult:
    model_path: Path
    tables: dict[str, list[dict]]
    table_text: str
    epochs_run: int


def model_config(cfg: TrainConfig, data: TrainingData, train_set: GraphDataset) -> MACEConfig:
    stats = compute_statistics(train_set, data.e0s)
    log.info(
        "statistics: avg_num_neighbors %.3f, shift %.6f eV/atom, scale %.6f eV/Å",
        stats.avg_num_neighbors,
        stats.shift,
        stats.scale,
    )
    return MACEConfig(
        **cfg.model_options(),  # every user option, as declared by MACEConfig
        atomic_numbers=data.elements,
        atomic_energies=[data.e0s[z] for z in data.elements],
        avg_num_neighbors=stats.avg_num_neighbors,
        scale=stats.scale,
        shift=stats.shift,
    )


def _optimizer(model: MACE, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AMSGrad Adam over the trainable parameters: weight decay on the product and message
    weights; with learning-rate factors (``lr_embedding`` ...) one group per parameter group
    (:func:`openmace.train.finetune.parameter_group`), else the two groups decay/no decay."""
    factors = {group: getattr(cfg, f"lr_{group}") for group in GROUPS}
    split = len(set(factors.values())) > 1
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # frozen (--freeze)
        in_decay = name.startswith("products.") or ".linear." in name and "interactions." in name
        group = parameter_group(name) if split else "all"
        groups.setdefault((group, in_decay), []).append(p)
    order = sorted(groups, key=lambda key: (not key[1], key[0]))  # decay first, as before
    return torch.optim.Adam(
        [
            {
                "params": groups[key],
                "weight_decay": cfg.weight_decay if key[1] else 0.0,
                "decay": key[1],
                "lr_factor": factors.get(key[0], 1.0),
                "lr": cfg.lr * factors.get(key[0], 1.0),
            }
            for key in order
        ],
        lr=cfg.lr,
        amsgrad=True,
    )


class Trainer:
    """One training run, in steps: :meth:`setup` (data, graphs, statistics, model, optimiser;
    resumes from the checkpoint with ``cfg.resume``), :meth:`run` (epochs with validation and a
    checkpoint after each), :meth:`finish` (best weights, error tables, plots, the model file).

    Args:
        cfg: the validated training configuration (:class:`TrainConfig`: data, model options
            declared by :class:`openmace.MACEConfig`, optimisation, run).
        progress: show progress bars (also off with ``cfg.quiet``).

    ``resolve``: turns ``cfg.foundation_model`` into a file (a published name; the CLI passes
    :func:`openmace.foundations.resolve_any`); without it, the option must be a path.

    Validation and the final tables run on :func:`openmace.accel.for_inference` copies of the
    current weights; the memory check (:mod:`openmace.memory`) runs before every batch.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        progress: bool = True,
        resolve: Callable[[str], Path] | None = None,
        world: World | None = None,
    ) -> None:
        self.cfg = cfg
        self.resolve = resolve
        self.world = world or World()
        self.progress = progress and not cfg.quiet and self.world.main
        self.dtype = getattr(torch, cfg.dtype)
        self.device = torch.device(cfg.device)
        if self.world.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        self.run_dir = cfg.run_dir
        self.checkpoint_path = checkpoint_path(cfg)
        self.model_path = self.run_dir / f"{cfg.name}.safetensors"
        self.log_path = self.run_dir / f"{cfg.name}.log.jsonl"
        self.resume_changes: list[dict] = []  # options changed on resume, as applied
        self._applied: set[str] = set()

    # ---- setup -------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        state = self._resume_state()  # before any data is read: refusals come first
        self.fine_tuning: FineTuning | None = None
        foundation = None
        r_max = cfg.r_max
        if cfg.foundation_model is not None:  # before the data: a bad name fails at once
            foundation, info = load_foundation(cfg, self.dtype, self.device, self.resolve)
            r_max = foundation.config.r_max
        self.data = load_training_data(cfg)
        # graphs (neighbour lists within r_max) once per structure; the statistics count on them,
        # so they exist before the model config (whose r_max is this declared option's value)
        self.train_set = graph_dataset(self.data.train, r_max)
        self.valid_set = graph_dataset(self.data.valid, r_max)
        self.pt_sets: dict[str, GraphDataset] = {}
        if foundation is not None:
            tuning = prepare_fine_tuning(cfg, self.data, self.train_set, foundation, info)
            self.data.files["foundation_model"] = {"path": info["path"], "sha256": info["sha256"]}
            if cfg.pt_train_file:
                self.data.files["pt_train_file"] = {
                    "path": cfg.pt_train_file,
                    "sha256": file_digest(cfg.pt_train_file),
                }
            self.fine_tuning, self.model = tuning, tuning.model
            self.model_config = self.model.config
            if tuning.pt_train is not None:  # the user's data trains the new head
                user = self.model_config.heads.index("default")
                self.train_set.set_head(user)
                self.valid_set.set_head(user)
                self.pt_sets = {"pt_train": tuning.pt_train, "pt_valid": tuning.pt_valid}
        else:
            self.model_config = model_config(cfg, self.data, self.train_set)
            torch.manual_seed(cfg.seed)
            self.model = MACE(self.model_config, dtype=self.dtype, device=self.device)
        # the edge messages by the compiled kernels with their second derivative (CPU; the
        # reference elsewhere): the same gradients to rounding (openmace.accel.training)
        for_training(self.model)
        # what the loss is fitted on and validated with: the user's data and any replay data
        self.fit_set, self.check_set = self.train_set, self.valid_set
        if self.pt_sets:
            self.fit_set = GraphDataset.joined([self.train_set, self.pt_sets["pt_train"]])
            self.check_set = GraphDataset.joined([self.valid_set, self.pt_sets["pt_valid"]])
        log.info(
            "model: %s, %d parameters (%d trained)",
            self.model_config.hidden_irreps,
            sum(p.numel() for p in self.model.parameters()),
            sum(p.numel() for p in self.model.parameters() if p.requires_grad),
        )
        broadcast_parameters(self.model, self.world)  # the same start on every rank
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = _optimizer(self.model, cfg)
        self.scheduler = self._scheduler()
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.epoch = 0
        self.stage = 1
        self.history: list[dict] = []
        self.best = {"valid_loss": math.inf, "epoch": -1, "state": None}
        self.elapsed = 0.0
        if state is not None:
            self._restore(state)

    # ---- the run's files and resume --------------------------------------------------------
    def _resume_state(self) -> dict | None:
        """The checkpoint to resume (None for a new run), after refusing to replace an earlier
        run's checkpoint or model, ``resume`` without a checkpoint, and changed options."""
        cfg = self.cfg
        if not cfg.resume:
            if self.checkpoint_path.exists():
                raise ValueError(
                    f"{self.checkpoint_path} exists from an earlier run: pass --resume to "
                    "continue it, or choose another --work-dir / --name"
                )
            if self.model_path.exists():
                raise ValueError(
                    f"{self.model_path} exists (a trained model, with no checkpoint to resume): "
                    "a new run would replace it; choose another --work-dir / --name, or move "
                    "the file away"
                )
            return None
        if not self.checkpoint_path.is_file():
            raise ValueError(self._no_checkpoint_message())
        state = load_checkpoint(self.checkpoint_path)
        self._check_resume_options(state)
        return state

    def _no_checkpoint_message(self) -> str:
        folder = self.checkpoint_path.parent
        found = sorted(p.stem for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        message = f"--resume: there is no checkpoint {self.checkpoint_path}"
        if found:
            names = ", ".join(f"{n}.ckpt (--name {n})" for n in found)
            message += f"; the checkpoints in {folder} are: {names}"
        else:
            message += f"; {self.run_dir} holds no checkpoints"
        if self.model_path.exists():
            message += f" ({self.model_path} is a finished model: it cannot be trained further)"
        return message + "; check --work-dir and --name, or start a new run without --resume"

    def _check_resume_options(self, state: dict) -> None:
        """Refuse the options that may not differ from the checkpoint's run; list the others in
        ``self.resume_changes`` (applied by :meth:`_restore`)."""
        cfg, now = self.cfg, self.cfg.to_dict()
        old = state.get("train_config") or {}
        old_files = state.get("files") or {}
        epoch, stage = state["epoch"], state["stage"]
        refused, unapplied, changes = [], [], []
        for name, value in now.items():
            before = old.get(name, value)  # checkpoints of older versions lack some options
            same_content = False
            if name in DATA_FILES and value and Path(value).exists():
                digest = old_files.get(name, {}).get("sha256")
                if digest is not None and digest != file_digest(value):
                    refused.append(f"{name} {value} (its content changed since the checkpoint)")
                    continue
                same_content = digest is not None
            if before == value or name in RESUME_FREE:
                continue
            change = f"{name} {before!r} -> {value!r}"
            if name in RESUME_REPORTED or (name in DATA_FILES and same_content):
                changes.append({"epoch": epoch, "option": name, "checkpoint": before, "now": value})
            elif name not in RESUME_OPTIMISATION:
                refused.append(change)
            elif stage == 2 and name in ("lr", "stage_two_start"):
                refused.append(f"{change} (stage two began before epoch {epoch}: no effect)")
            elif name == "ema_decay" and (before == 0) != (value == 0):
                refused.append(f"{change} (the EMA cannot be switched on or off)")
            elif not cfg.apply_new_options:
                unapplied.append(change)
            else:
                changes.append({"epoch": epoch, "option": name, "checkpoint": before, "now": value})
        if refused or unapplied:
            parts = []
            if refused:
                parts.append(
                    f"options that cannot change in a resumed run differ from the checkpoint's "
                    f"run: {', '.join(refused)}; use the checkpoint's values or start a new run "
                    "with another --name"
                )
            if unapplied:
                parts.append(
                    f"optimisation options differ from the checkpoint's run: "
                    f"{', '.join(unapplied)}; pass --apply-new-options to apply them from epoch "
                    f"{epoch + 1}, or use the checkpoint's values"
                )
            raise ValueError(f"--resume {self.checkpoint_path}: " + "; ".join(parts))
        self.resume_changes = list(state.get("resume_changes") or []) + changes
        if changes:
            log.info(
                "resuming with changed options (applied from epoch %d): %s",
                epoch + 1,
                ", ".join(f"{c['option']} {c['checkpoint']!r} -> {c['now']!r}" for c in changes),
            )
        self._applied = {c["option"] for c in changes}

    def _apply_changed_options(self) -> None:
        """Set changed optimisation options in the restored optimiser, scheduler and EMA (the
        others are read from ``self.cfg`` where they are used)."""
        cfg, applied = self.cfg, self._applied
        if "lr" in applied and self.stage == 1:
            self._set_lr(cfg.lr)
        if "stage_two_lr" in applied and self.stage == 2:
            self._set_lr(cfg.stage_two_lr)
        if "weight_decay" in applied:
            for group in self.optimizer.param_groups:
                if group.get("decay", group is self.optimizer.param_groups[0]):
                    group["weight_decay"] = cfg.weight_decay
        if "scheduler_factor" in applied:
            self.scheduler.factor = cfg.scheduler_factor
        if "scheduler_patience" in applied:
            self.scheduler.patience = cfg.scheduler_patience
        if "ema_decay" in applied and self.ema is not None:
            self.ema.decay = cfg.ema_decay

    def _scheduler(self):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=self.cfg.scheduler_factor, patience=self.cfg.scheduler_patience
        )

    def _restore(self, state: dict) -> None:
        if state["model_config"] != self.model_config.to_dict():
            raise ValueError(
                f"{self.checkpoint_path}: the checkpoint's model differs from this "
                "config (different data or model options); cannot resume"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"{self.checkpoint_path}: written by an incompatible openmace version; "
                f"cannot resume ({str(err).splitlines()[0]})"
            ) from err
        removed = remove_partial_writes(self.checkpoint_path)
        if removed:
            log.info("removed %d partial checkpoint file(s) of an interrupted write", removed)
        self.stage = state["stage"]  # the optimiser's state holds the lr of that stage
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self._apply_changed_options()
        self.epoch = state["epoch"]
        self.history = state["history"]
        self.best = state["best"]
        self.elapsed = state["elapsed"]
        log.info("resumed from %s at epoch %d", self.checkpoint_path, self.epoch)

    def _checkpoint(self) -> None:
        if not self.world.main:
            return
        save_checkpoint(
            {
                "epoch": self.epoch,
                "stage": self.stage,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "history": self.history,
                "best": self.best,
                "elapsed": self.elapsed,
                "model_config": self.model_config.to_dict(),
                "train_config": self.cfg.to_dict(),
                "files": self.data.files,
                "resume_changes": self.resume_changes,
            },
            self.checkpoint_path,
        )
        _write_text(self.log_path, "".join(json.dumps(h) + "\n" for h in self.history))

    # ---- loop --------------------------------------------------------------------------
    def weights(self) -> LossWeights:
        cfg = self.cfg
        if self.stage == 2:
            return LossWeights(
                cfg.stage_two_energy_weight,
                cfg.stage_two_forces_weight,
                cfg.stress_weight,
                cfg.virials_weight,
            )
        return LossWeights(
            cfg.energy_weight, cfg.forces_weight, cfg.stress_weight, cfg.virials_weight
        )

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_factor", 1.0)

    def _lr(self) -> float:
        """The run's learning rate (that of a group with factor 1)."""
        group = self.optimizer.param_groups[0]
        factor = group.get("lr_factor", 1.0)
        return group["lr"] / factor if factor else group["lr"]

    def _needs_stress(self, dataset: GraphDataset) -> bool:
        w, summary = self.weights(), dataset.summary
        return bool(
            (w.stress and summary.has_stress.any()) or (w.virials and summary.has_virials.any())
        )

    def train_epoch(self) -> float:
        """One epoch over the global batches (:func:`global_batches`, a function of seed and
        epoch); this process trains on its share of each (all of it on one process)."""
        cfg, world = self.cfg, self.world
        self._stress = self._needs_stress(self.fit_set)  # the stage's loss weights
        summary = self.fit_set.summary
        batches = global_batches(
            summary.num_atoms,
            cfg.batch_size,
            cfg.seed * 100_003 + self.epoch,
            cfg.batch_max_atoms,
            summary.num_edges,
            cfg.batch_max_edges,
        )
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=len(batches),
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                leave=False,
                unit="batch",
                dynamic_ncols=True,
            )
        losses, sizes = [], []
        shares = [share(b, world) for b in batches]
        for k, batch in enumerate(load_batches(self.fit_set, shares, cfg.num_workers)):
            losses.append(self._step(batch, k))
            sizes.append(len(batches[k]))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if bar is not None:
            bar.close()
        return float(np.average(losses, weights=sizes))

    def _step(self, batch: Batch | None, k: int) -> float:
        """One optimiser step on this process's share ``batch`` (None: an empty share) of
        global batch ``k``; returns the global batch's loss."""
        cfg, world, weights = self.cfg, self.world, self.weights()
        huber = cfg.huber_delta if cfg.loss == "huber" else None
        self.optimizer.zero_grad(set_to_none=True)
        terms, out = {}, None
        if batch is not None:
            batch = batch.to(self.device, self.dtype)
            check_memory(self.model, len(batch.graph.positions), batch.graph.edge_index.shape[1])
            out = self.model(
                batch.graph,
                compute_forces=True,
                compute_stress=self._stress,
                create_graph=True,
            )
            terms = loss_terms(out, batch, weights, huber)
        counts = None
        if world.distributed:  # the whole global batch's label counts
            local = [float(terms[n][1]) if n in terms else 0.0 for n in TERMS]
            total = all_reduce_sum(torch.tensor(local, dtype=torch.float64), world)
            counts = dict(zip(TERMS, total.tolist()))
        loss = combine(terms, weights, counts)
        if loss is None and out is not None:
            loss = out["energy"].sum() * 0.0
        if loss is not None:
            loss.backward()
        value = loss.detach().reshape(1) if loss is not None else None
        if value is None:
            value = torch.zeros(1, dtype=self.dtype, device=self.device)
        value = all_reduce_gradients(self.trained, world, value)
        if not torch.isfinite(value).all():
            last = (
                f"the last good checkpoint is {self.checkpoint_path}"
                if self.checkpoint_path.exists()
                else "no checkpoint was written yet"
            )
            raise TrainingError(
                f"non-finite loss ({float(value)}) in epoch {self.epoch + 1}, batch "
                f"{k}; weights were not updated, {last} (try a lower --lr, or check the labels)"
            )
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        return float(value)

    def evaluate(self, dataset: GraphDataset) -> tuple[float, Predictions]:
        """Mean loss and predictions of the current weights on ``dataset`` (one pass; with
        several processes, batch ``k`` is evaluated by rank ``k mod W`` and every rank gets
        all results, in order)."""
        weights = self.weights()
        huber = self.cfg.huber_delta if self.cfg.loss == "huber" else None
        model = for_inference(self.model)
        size, world = self.cfg.valid_batch_size, self.world
        mine = []
        for k, start in enumerate(range(0, len(dataset), size)):
            if k % world.size != world.rank:
                continue
            idx = list(range(start, min(start + size, len(dataset))))
            batch = dataset.batch(idx)
            periodic = [bool(p.all()) for p in batch.graph.pbc]
            batch = batch.to(self.device, self.dtype)
            check_memory(model, len(batch.graph.positions), batch.graph.edge_index.shape[1])
            out = model(batch.graph, compute_forces=True, compute_stress=any(periodic))
            loss, _ = compute_loss(out, batch, weights, huber)
            sizes = batch.num_atoms.to(torch.long).tolist()
            results = list(split_by_structure(out, sizes, periodic))
            mine.append((k, float(loss.detach()), len(idx), results))
        results = sorted((r for part in gather(mine, world) for r in part), key=lambda r: r[0])
        losses = [r[1] for r in results]
        outputs = [o for r in results for o in r[3]]
        mean = float(np.average(losses, weights=[r[2] for r in results]))
        return mean, predictions_from(dataset.configs, outputs)

    def averaged(self):
        from contextlib import nullcontext

        return self.ema.applied() if self.ema is not None else nullcontext()

    def run(self) -> int:
        cfg = self.cfg
        stage_two_epoch = (
            int(cfg.stage_two_start * cfg.epochs) if cfg.stage_two_start is not None else None
        )
        since_best = 0 if self.best["epoch"] < 0 else self.epoch - self.best["epoch"]
        while self.epoch < cfg.epochs:
            if stage_two_epoch is not None and self.stage == 1 and self.epoch >= stage_two_epoch:
                self.stage = 2
                self._set_lr(cfg.stage_two_lr)
                self.scheduler = self._scheduler()
                self.best = {"valid_loss": math.inf, "epoch": -1, "state": None}
                log.info(
                    "stage two from epoch %d: lr %g, energy weight %g, forces weight %g",
                    self.epoch + 1,
                    cfg.stage_two_lr,
                    cfg.stage_two_energy_weight,
                    cfg.stage_two_forces_weight,
                )
            start = time.perf_counter()
            train_loss = self.train_epoch()
            self.epoch += 1
            if self.epoch % cfg.eval_interval and self.epoch != cfg.epochs:
                self.elapsed += time.perf_counter() - start
                continue
            with self.averaged():
                valid_loss, preds = self.evaluate(self.check_set)
                if valid_loss < self.best["valid_loss"]:
                    self.best = {
                        "valid_loss": valid_loss,
                        "epoch": self.epoch,
                        "state": {
                            k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                        },
                    }
            self.scheduler.step(valid_loss)
            self.elapsed += time.perf_counter() - start
            row = error_rows(preds)[-1]
            record = {
                "epoch": self.epoch,
                "stage": self.stage,
                "lr": self._lr(),
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "time_s": round(self.elapsed, 3),
                **{f"valid_{k}": v for k, v in row.items() if k.endswith(("mae", "rmse"))},
            }
            self.history.append(record)
            self._checkpoint()
            log.info(
                "epoch %4d  loss %.4g  valid loss %.4g  E RMSE %s meV/atom  F RMSE %s meV/Å  "
                "lr %.2g  %.0f s",
                self.epoch,
                train_loss,
                valid_loss,
                _fmt(record.get("valid_energy_rmse")),
                _fmt(record.get("valid_forces_rmse")),
                record["lr"],
                self.elapsed,
            )
            since_best = self.epoch - self.best["epoch"]
            if cfg.patience is not None and since_best > cfg.patience:
                log.info("early stopping: no validation improvement for %d epochs", since_best)
                break
        return self.epoch

    # ---- end ---------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        cfg = self.cfg
        if self.best["state"] is not None:
            self.model.load_state_dict(self.best["state"])
        sets = {"train": self.train_set, "valid": self.valid_set}
        if self.data.test:
            sets["test"] = graph_dataset(self.data.test, self.model.config.r_max)
            if self.pt_sets:
                sets["test"].set_head(self.model_config.heads.index("default"))
        sets |= self.pt_sets  # the foundation's head on the replay data (multi-head fine-tunes)
        model = for_inference(self.model)
        predictions = {name: predict(model, ds, cfg.valid_batch_size) for name, ds in sets.items()}
        tables = {name: error_rows(p) for name, p in predictions.items()}
        text = format_table(tables)
        _write_text(self.run_dir / f"{cfg.name}.errors.txt", text + "\n")
        _write_text(self.run_dir / f"{cfg.name}.errors.json", json.dumps(tables, indent=1))
        if self.history:
            plot_learning_curves(self.history, self.run_dir / f"{cfg.name}.learning_curves.png")
        plot_parity(predictions, self.run_dir / f"{cfg.name}.parity.png")
        provenance = {
            "files": self.data.files,
            "e0s": self.data.e0_source,
            "epochs": self.epoch,
            "best_epoch": self.best["epoch"],
            "errors": tables,
            "training_config": cfg.to_dict(),
        }
        if self.resume_changes:
            provenance["resume_changes"] = self.resume_changes
        if self.fine_tuning is not None:
            provenance["foundation"] = self.fine_tuning.foundation
            provenance["fine_tuning"] = self.fine_tuning.report
            provenance["e0s"] = self.fine_tuning.e0_source
        path = save_model(self.model, self.run_dir / f"{cfg.name}.safetensors", provenance)
        return TrainResult(path, tables, text, self.epoch)


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically; a failed write (a full disk) names it, the old file kept."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def train(
    cfg: TrainConfig,
    progress: bool = True,
    resolve: Callable[[str], Path] | None = None,
    world: World | None = None,
) -> TrainResult | None:
    """Train a model as configured; returns the saved model's path and the error tables.
    ``resolve``: see :class:`Trainer`. ``world``: this process's place among data-parallel
    processes (:mod:`openmace.train.distributed`; default: the environment's, as torchrun or
    srun set it); the process group is joined here. Only rank 0 writes files and returns the
    result; the other ranks return None when training ends.

    Rank 0 holds the lock of the run's files (``WORK_DIR/NAME.lock``) from start to end: a
    second run with the same work dir and name raises
    :class:`openmace.train.checkpoint.WorkDirLocked` naming the process that holds it.
    """
    from contextlib import nullcontext

    from openmace.train.distributed import start, stop, world_from_env

    world = world or world_from_env()
    if world.distributed:
        start(world, torch.device(cfg.device), cfg.ddp_timeout)
        log.info("data-parallel training: rank %d of %d", world.rank, world.size)
    try:
        with WorkDirLock(cfg.run_dir, cfg.name) if world.main else nullcontext():
            trainer = Trainer(cfg, progress, resolve, world)
            trainer.setup()
            if world.main:
                _write_text(
                    cfg.run_dir / f"{cfg.name}.config.json", json.dumps(cfg.to_dict(), indent=1)
                )
            trainer.run()
            return trainer.finish() if world.main else None
    finally:
        if world.distributed:
            stop()
