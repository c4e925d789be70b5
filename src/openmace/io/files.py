"""Output files that never destroy data.

- :func:`check_outputs` refuses, before any work, an output path that is an input (the same
  path, a symlink or hard link to it, a relative spelling of it), another output, a folder, a
  path in a missing folder, or an existing file (unless the caller allows replacing it: the
  command-line flag ``--overwrite``). Refusals are :class:`OutputPathError`, a ``ValueError``.
- :func:`atomic_path` and :func:`atomic_open` write to a temporary file in the destination's
  folder, fsync it, rename it over the destination and fsync the folder. If the write fails
  (disk full, an exception, Ctrl-C) the temporary file is removed and the destination, if it
  existed, is unchanged: a reader sees the old file or the complete new one, never half of one.
  Writing to a symbolic link replaces the file it points to, as a plain write would.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

OVERWRITE_FLAG = "--overwrite"


class OutputPathError(ValueError):
    """An output path that would destroy data or cannot be written."""


class OutputWriteError(OSError):
    """Writing an output failed (a full disk, an I/O error); the destination is unchanged."""

    def __init__(self, errno: int | None, message: str) -> None:
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path (symbolic links and
    ``..`` followed, also for files not created yet) or the same inode (hard links)."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:  # one of them does not exist (yet)
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(
    outputs: Mapping[str, str | Path | None],
    inputs: Mapping[str, str | Path | None],
    overwrite: bool = False,
    create_folders: bool = False,
) -> None:
    """Refuse outputs that would destroy data or cannot be written, before any work.

    ``outputs`` and ``inputs`` map a name for messages (a command-line flag such as
    ``--output``) to a path (``None``: not used). Raises :class:`OutputPathError` when an
    output is the same file as an input or as another output, is a folder, lies in a missing
    folder (created instead with ``create_folders``) or one that cannot be written, or exists
    and ``overwrite`` is false.
    """
    checked: list[tuple[str, Path]] = []
    for flag, value in outputs.items():
        if value is None:
            continue
        path = Path(value)
        for in_flag, source in inputs.items():
            if source is not None and same_file(path, source):
                raise OutputPathError(
                    f"{flag} {path} is the same file as {in_flag} {source}: an output never "
                    f"replaces an input; choose another {flag}"
                )
        for other_flag, other in checked:
            if same_file(path, other):
                raise OutputPathError(
                    f"{flag} {path} and {other_flag} {other} are the same file; give them "
                    "different paths"
                )
        if path.is_dir():
            raise OutputPathError(f"{flag} {path} is a folder, not a file")
        folder = Path(os.path.realpath(path)).parent
        if not folder.exists():
            if not create_folders:
                raise OutputPathError(f"{flag} {path}: the folder {path.parent} does not exist")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputPathError(
                    f"{flag} {path}: cannot create the folder {path.parent} ({err.strerror})"
                ) from err
        if not folder.is_dir():
            raise OutputPathError(f"{flag} {path}: {path.parent} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputPathError(f"{flag} {path}: no permission to write in {path.parent}")
        if path.exists() and not overwrite:
            raise OutputPathError(f"{flag} {path} exists; pass {OVERWRITE_FLAG} to replace it")
        checked.append((flag, path))


def _open(path: Path, mode: str) -> IO:
    """Opens the temporary file (a seam for tests that simulate a full disk)."""
    return open(path, mode)  # noqa: SIM115 - closed by atomic_open


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some systems cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (same folder, same suffix) to write ``path``'s new content to;
    on success it is synced and renamed over ``path``, on any exception removed (an ``OSError``
    is raised again as :class:`OutputWriteError` naming ``path``)."""
    target = Path(os.path.realpath(path))
    try:
        fd, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}"
        )
    except OSError as err:
        message = f"cannot write {path}: {err.strerror or err}"
        raise OutputWriteError(err.errno, message) from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if target.exists():
            mode = target.stat().st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        before = "was left unchanged" if target.exists() else "was not created"
        reason = err.strerror or str(err)
        message = f"cannot write {path}: {reason}; {path} {before}"
        raise OutputWriteError(err.errno, message) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """An open file (``mode`` ``"w"`` or ``"wb"``) whose content replaces ``path`` only when
    the ``with`` block completes (see :func:`atomic_path`)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        fh = _open(tmp, mode)
        try:
            yield fh
            fh.flush()
        finally:
            fh.close()
