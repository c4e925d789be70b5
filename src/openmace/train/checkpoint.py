"""Training checkpoints, written atomically (temporary file, fsync, rename), and the lock of a
run's files.

Checkpoints hold tensors and plain Python values only and are read with
``torch.load(weights_only=True)``, which refuses arbitrary objects: loading one runs no code.
A damaged or foreign checkpoint is a :class:`CheckpointError` naming the file.

:class:`WorkDirLock` is an OS file lock (``flock``) on ``WORK_DIR/NAME.lock`` held for the whole
of a training run, so two runs never write the same checkpoint and model; the operating system
releases it when the process ends, however it ends.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import IO

import torch

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = (
    "epoch",
    "stage",
    "model",
    "optimizer",
    "scheduler",
    "ema",
    "history",
    "best",
    "elapsed",
    "model_config",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or was not written by ``openmace train``."""


class WorkDirLocked(RuntimeError):
    """Another process holds the lock of this work dir and run name."""


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically; a failed write (a full disk) raises an
    ``OSError`` naming ``path`` and leaves the previous checkpoint as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        kept = "the previous checkpoint is unchanged" if path.exists() else "none was written"
        reason = err.strerror or str(err) or type(err).__name__
        raise OSError(err.errno, f"{reason} (writing a checkpoint; {kept})", str(path)) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_partial_writes(path: Path) -> int:
    """Delete temporary files left by writes of ``path`` that were killed; returns how many."""
    stale = list(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def load_checkpoint(path: Path) -> dict:
    """The state saved by :func:`save_checkpoint`; :class:`CheckpointError` if ``path`` is
    damaged (truncated, overwritten) or not a training checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # torch reports a damaged file as RuntimeError, pickle errors, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(
            f"{path}: damaged or not a training checkpoint ({reason}); restore a copy, or "
            "delete it to start again"
        ) from err
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a checkpoint of openmace train (missing {', '.join(missing)})"
        )
    return state


class WorkDirLock:
    """Exclusive lock of the files of run ``name`` in ``run_dir`` (``run_dir/name.lock``).

    :meth:`acquire` creates ``run_dir`` if needed and takes the lock without waiting; if another
    process holds it, :class:`WorkDirLocked` names the lock file and that process (PID and host,
    written into the file). :meth:`release` (also on leaving a ``with`` block) deletes the lock
    file, and ``run_dir`` too if this lock created it and nothing else was written there.
    On systems without ``fcntl`` (Windows) the lock does nothing.
    """

    def __init__(self, run_dir: str | Path, name: str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / f"{name}.lock"
        self._fh: IO | None = None
        self._created_dir = False

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX
            log.debug("no fcntl: %s is not locked", self.path)
            return
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"--work-dir {self.run_dir} is a file, not a folder")
        self._created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # the holder may delete the file between our open and our lock
            fh = open(self.path, "a+")  # noqa: SIM115 - closed in release()
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read(200).split()
                fh.close()
                raise WorkDirLocked(self._held_message(holder)) from None
            except BaseException:
                fh.close()
                raise
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        else:  # pragma: no cover - a lock file deleted 100 times in a row
            raise WorkDirLocked(f"{self.path}: could not take the lock (the file keeps changing)")
        self._fh = fh
        try:  # who holds it, for the message of the next run
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()} {socket.gethostname()}\n")
            fh.flush()
        except OSError as err:  # a full disk
            self.release()
            raise OSError(err.errno, err.strerror or str(err), str(self.path)) from err

    def _held_message(self, holder: list[str]) -> str:
        pid = holder[0] if holder else "?"
        host = holder[1] if len(holder) > 1 else "?"
        return (
            f"{self.path} is locked by process {pid} on host {host}: another openmace train is "
            f"running with --work-dir {self.run_dir} and --name {self.path.stem}; wait for it "
            "to finish or choose another --work-dir / --name (the lock is released when that "
            f"process ends; if process {pid} is no longer running, e.g. on a network file "
            f"system that kept the lock, delete {self.path})"
        )

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: the next run finds no file
        finally:
            fh.close()
        if self._created_dir:
            try:
                self.run_dir.rmdir()  # only if this run wrote nothing else
            except OSError:
                pass

    @property
    def held(self) -> bool:
        return self._fh is not None

    def __enter__(self) -> WorkDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
