"""Published MACE foundation models by name: ``mace_mp``, ``mace_off``, ``mace_omol``.

    from openmace.foundations import mace_mp
    atoms.calc = mace_mp("medium-mpa-0")                    # float32 on the CPU
    atoms.calc = mace_mp("medium-0b3", dtype="float64", dispersion=True)   # + DFT-D3(BJ)

A model is named as mace-torch names it (``"small"``, ``"medium"``, ``"medium-mpa-0"``,
``"medium-omat-0"``, ``"mh-1"``, ...; the tables are :data:`URLS`), or given as the path of a
model file (used as it is) or as an ``http(s)://`` address. A name is looked up in the cache
directory (:func:`cache_dir`: ``$OPENMACE_CACHE``, else ``$XDG_CACHE_HOME/openmace``, else
``~/.cache/openmace``) and downloaded there when absent: streamed into a temporary file in the
same directory, checked against the announced length, then renamed into place, so the final path
never holds a partial file. The first download records the file's size and SHA-256 in
``registry.json`` in the cache directory; every later use checks the file against that record
(size, then SHA-256: 0.14 s for a cached 100 MB file here, so it is done on every use, not
cached) and refuses a file that changed.
``OPENMACE_FOUNDATIONS_URL`` replaces everything before the file name of every published address
(a mirror, or a directory served inside an air-gapped site).

Because openmace's reader of mace-torch files never executes code from them, a downloaded file
cannot run anything; the checksum guards against a file that changed, not against code.

Every failure (server unreachable, HTTP error, truncated download, changed file, unknown name,
cache not writable) raises :class:`FoundationModelError` (a ``ValueError``) naming the model,
its address or path, and the cause.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import http.client
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from ase import units
from ase.calculators.calculator import Calculator

from openmace.calculators import MACECalculator
from openmace.version import __version__

log = logging.getLogger("openmace.foundations")

FAMILIES = ("mp", "off", "omol")
"""``mp``: materials (89 elements, :func:`mace_mp`); ``off``: organic molecules
(:func:`mace_off`); ``omol``: molecules with charge and spin (:func:`mace_omol`)."""

_MP = "https://github.com/ACEsuit/mace-mp/releases/download"
_FOUNDATIONS = "https://github.com/ACEsuit/mace-foundations/releases/download"
_OFF = "https://raw.githubusercontent.com/ACEsuit/mace-off/main"

URLS: dict[str, dict[str, str]] = {
    "mp": {
        "small": f"{_MP}/mace_mp_0/2023-12-10-mace-128-L0_energy_epoch-249.model",
        "medium": f"{_MP}/mace_mp_0/2023-12-03-mace-128-L1_epoch-199.model",
        "large": f"{_MP}/mace_mp_0/MACE_MPtrj_2022.9.model",
        "small-0b": f"{_MP}/mace_mp_0b/mace_agnesi_small.model",
        "medium-0b": f"{_MP}/mace_mp_0b/mace_agnesi_medium.model",
        "small-0b2": f"{_MP}/mace_mp_0b2/mace-small-density-agnesi-stress.model",
        "medium-0b2": f"{_MP}/mace_mp_0b2/mace-medium-density-agnesi-stress.model",
        "large-0b2": f"{_MP}/mace_mp_0b2/mace-large-density-agnesi-stress.model",
        "medium-0b3": f"{_MP}/mace_mp_0b3/mace-mp-0b3-medium.model",
        "medium-mpa-0": f"{_MP}/mace_mpa_0/mace-mpa-0-medium.model",
        "small-omat-0": f"{_MP}/mace_omat_0/mace-omat-0-small.model",
        "medium-omat-0": f"{_MP}/mace_omat_0/mace-omat-0-medium.model",
        "mace-matpes-pbe-0": f"{_FOUNDATIONS}/mace_matpes_0/MACE-matpes-pbe-omat-ft.model",
        "mace-matpes-r2scan-0": f"{_FOUNDATIONS}/mace_matpes_0/MACE-matpes-r2scan-omat-ft.model",
        "mh-0": f"{_FOUNDATIONS}/mace_mh_1/mace-mh-0.model",
        "mh-1": f"{_FOUNDATIONS}/mace_mh_1/mace-mh-1.model",
    },
    "off": {
        "small": f"{_OFF}/mace_off23/MACE-OFF23_small.model",
        "medium": f"{_OFF}/mace_off23/MACE-OFF23_medium.model",
        "large": f"{_OFF}/mace_off23/MACE-OFF23_large.model",
        "medium-off24": f"{_OFF}/mace_off24/MACE-OFF24_medium.model",
    },
    "omol": {
        "extra_large": f"{_FOUNDATIONS}/mace_omol_0/MACE-omol-0-extra-large-1024.model",
    },
}
"""Published address of each named model, per family (the names mace-torch uses; ``medium-off24``
is openmace's name for MACE-OFF24, which mace-torch reaches only by address)."""

ASL = frozenset(
    {
        ("mp", "small-omat-0"),
        ("mp", "medium-omat-0"),
        ("mp", "mace-matpes-pbe-0"),
        ("mp", "mace-matpes-r2scan-0"),
        *(("off", name) for name in URLS["off"]),
        *(("omol", name) for name in URLS["omol"]),
    }
)
"""Models distributed under the Academic Software License (no commercial use), as mace-torch
announces them: https://github.com/gabor1/ASL."""

DOWNLOAD_TIMEOUT = 60.0
"""Seconds a connection attempt or a single read may wait before the download fails."""

REGISTRY = "registry.json"
_CHUNK = 1 << 20
_ENV_CACHE = "OPENMACE_CACHE"
_ENV_URL = "OPENMACE_FOUNDATIONS_URL"


class FoundationModelError(ValueError):
    """A foundation model could not be found, downloaded or verified.

    Attributes: ``model`` (the name or path asked for), ``source`` (its address or path) and
    ``cause`` (what went wrong); the message holds all three.
    """

    def __init__(self, model: object, source: object, cause: str) -> None:
        self.model, self.source, self.cause = str(model), str(source), cause
        super().__init__(f"foundation model {self.model!r} ({self.source}): {cause}")


def cache_dir() -> Path:
    """The directory downloaded models are kept in: ``$OPENMACE_CACHE`` if set, else
    ``$XDG_CACHE_HOME/openmace``, else ``~/.cache/openmace``."""
    if os.environ.get(_ENV_CACHE):
        return Path(os.environ[_ENV_CACHE]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "openmace"
    return Path.home() / ".cache" / "openmace"


def model_url(name: str, family: str) -> str:
    """The address a named model is downloaded from: its published address, or, when
    ``OPENMACE_FOUNDATIONS_URL`` is set, that base followed by the published file name."""
    url = URLS[_family(family)][name]
    base = os.environ.get(_ENV_URL)
    if base:
        return f"{base.rstrip('/')}/{url.rsplit('/', 1)[1]}"
    return url


def resolve(
    name_or_path: str | os.PathLike[str],
    family: str,
    *,
    timeout: float = DOWNLOAD_TIMEOUT,
    progress: bool | None = None,
) -> Path:
    """The local path of a model: a name of ``family`` (:data:`URLS`) from the cache, downloaded
    and recorded there when absent, and verified against the record on every use; an
    ``http(s)://`` address likewise (cached under ``urls/``); an existing file as it is.

    A string that is a known name is a name, even if a file of that name exists.
    ``timeout`` (seconds) bounds the connection and each read. ``progress``: a progress bar
    on standard error (``None``: only when it is a terminal; log messages are written either way).

    Raises :class:`FoundationModelError` naming the model, its address or path, and the cause.
    """
    family = _family(family)
    if isinstance(name_or_path, os.PathLike):
        return _existing_file(Path(name_or_path), family)
    name = str(name_or_path)
    if name in URLS[family]:
        url = model_url(name, family)
        key = url.rsplit("/", 1)[1]
        licence = (family, name) in ASL
    elif name.startswith(("http://", "https://")):
        url, key, licence = name, _url_key(name), False
    else:
        return _existing_file(Path(name).expanduser(), family, name)
    directory = cache_dir()
    target = directory / key
    if licence:
        log.info(
            "%s model %r is distributed under the Academic Software License (no commercial "
            "use): https://github.com/gabor1/ASL",
            family,
            name,
        )
    if target.is_file():
        _verify(target, directory, key, name, url)
        return target
    _download(url, target, directory, key, name, timeout=timeout, progress=progress)
    return target


def resolve_any(
    spec: str | os.PathLike[str], *, timeout: float = DOWNLOAD_TIMEOUT, progress: bool | None = None
) -> Path:
    """:func:`resolve` of a model given without its family (``openmace train
    --foundation-model``): an existing file; ``FAMILY:NAME`` (``mp:medium``, ``off:small``);
    an ``http(s)://`` address; or a name that exactly one family has (``mh-1``,
    ``medium-mpa-0``). A name several families have (``small``) is an error listing the
    ``FAMILY:NAME`` spellings."""
    text = os.fspath(spec)
    family, _, name = text.partition(":")
    if name and family in FAMILIES:
        return resolve(name, family, timeout=timeout, progress=progress)
    if Path(text).expanduser().is_file() or text.startswith(("http://", "https://")):
        return resolve(text, "mp", timeout=timeout, progress=progress)
    owners = [f for f in FAMILIES if text in URLS[f]]
    if len(owners) == 1:
        return resolve(text, owners[0], timeout=timeout, progress=progress)
    if owners:
        spelled = " or ".join(f"{f}:{text}" for f in owners)
        raise FoundationModelError(text, text, f"a name of several families: say {spelled}")
    known = [f"{f}:{n}" for f in FAMILIES for n in URLS[f]]
    raise FoundationModelError(
        text, text, f"no such file, and not a published model name (known: {', '.join(known)})"
    )


def mace_mp(
    model: str | os.PathLike[str] | None = "medium-mpa-0",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    head: str | None = None,
    dispersion: bool = False,
    damping: str = "bj",
    dispersion_xc: str = "pbe",
    dispersion_cutoff: float = 40.0 * units.Bohr,
    **kwargs: Any,
) -> Calculator:
    """A calculator for a materials foundation model (MACE-MP-0, -MPA-0, -OMAT-0, -MATPES, -MH).

    Args:
        model: a name of :data:`URLS` ``["mp"]`` (default ``"medium-mpa-0"``, as in mace-torch;
            ``None`` means the same), an ``http(s)://`` address, or a model file's path.
        dtype: ``"float32"`` (default, as in mace-torch: fast, for MD) or ``"float64"``
            (recommended for geometry optimisation and phonons).
        device: where to evaluate (``"cpu"``, ``"cuda"``, ...).
        head: the head of a multi-head model (``mh-0``, ``mh-1``); ``None``: the calculator's
            default.
        dispersion: add DFT-D3 (torch-dftd's ``TorchDFTD3Calculator``, summed with ASE's
            ``SumCalculator``, as mace-torch does); needs ``pip install "openmace[d3]"``.
        damping: D3 damping: ``"bj"`` (default), ``"zero"``, ``"bjm"`` or ``"zerom"``.
        dispersion_xc: the functional whose D3 parameters are used (default ``"pbe"``).
        dispersion_cutoff: D3 cutoff in Å (default 40 Bohr = 21.17 Å).
        **kwargs: passed to :class:`~openmace.MACECalculator` (``skin``, ``implementation``,
            ``memory_limit``, ...).

    Returns the :class:`~openmace.MACECalculator`, or with ``dispersion`` an ASE
    ``SumCalculator`` of it and the D3 calculator. Energies in eV, forces in eV/Å, stress in
    eV/Å³.
    """
    d3 = _d3_class() if dispersion else None
    calc = _calculator("mp", model, "medium-mpa-0", dtype, device, head, kwargs)
    if d3 is None:
        return calc
    from ase.calculators.mixing import SumCalculator

    d3_calc = d3(
        device=str(device),
        damping=damping,
        dtype=_torch_dtype(dtype),
        xc=dispersion_xc,
        cutoff=dispersion_cutoff,
    )
    log.info(
        "adding DFT-D3(%s) dispersion for %s (cutoff %.2f Å)",
        damping,
        dispersion_xc,
        dispersion_cutoff,
    )
    return SumCalculator([calc, d3_calc])


def mace_off(
    model: str | os.PathLike[str] | None = "medium",
    dtype: str | torch.dtype = "float64",
    device: str | torch.device = "cpu",
    head: str | None = None,
    **kwargs: Any,
) -> MACECalculator:
    """A calculator for an organic-molecule foundation model (MACE-OFF23, MACE-OFF24).

    ``model``: a name of :data:`URLS` ``["off"]`` (default ``"medium"``: MACE-OFF23 medium, as
    in mace-torch; ``"medium-off24"``: MACE-OFF24), an ``http(s)://`` address, or a path.
    ``dtype`` defaults to ``"float64"`` (as in mace-torch). No dispersion option: the training
    data (ωB97M-D3(BJ)) already include D3. Other arguments as :func:`mace_mp`.
    """
    return _calculator("off", model, "medium", dtype, device, head, kwargs)


def mace_omol(
    model: str | os.PathLike[str] | None = "extra_large",
    dtype: str | torch.dtype = "float64",
    device: str | torch.device = "cpu",
    head: str | None = "omol",
    **kwargs: Any,
) -> MACECalculator:
    """A calculator for the MACE-OMOL foundation model (molecules with total charge and spin,
    read from ``atoms.info["charge"]`` and ``atoms.info["spin"]``).

    ``model``: ``"extra_large"`` (default, as in mace-torch), an ``http(s)://`` address, or a
    path. ``dtype`` defaults to ``"float64"`` and ``head`` to ``"omol"`` (as in mace-torch). Other
    arguments as :func:`mace_mp`.
    """
    return _calculator("omol", model, "extra_large", dtype, device, head, kwargs)


# ---------------------------------------------------------------------------------------------


def _family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    return family


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    if dtype in ("float32", "float64"):
        return getattr(torch, str(dtype))
    raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")


def _calculator(
    family: str,
    model: str | os.PathLike[str] | None,
    default: str,
    dtype: str | torch.dtype,
    device: str | torch.device,
    head: str | None,
    kwargs: dict[str, Any],
) -> MACECalculator:
    if "default_dtype" in kwargs:
        raise TypeError("use dtype= (mace-torch's default_dtype= has that name in openmace)")
    _torch_dtype(dtype)  # a wrong dtype fails before any download
    path = resolve(default if model is None else model, family)
    if head is not None:
        kwargs = {**kwargs, "head": head}
    log.info("%s foundation model %s (%s, %s)", family, path, dtype, device)
    return MACECalculator(model=path, device=device, dtype=dtype, **kwargs)


def _d3_class() -> type:
    try:
        from torch_dftd.torch_dftd3_calculator import TorchDFTD3Calculator
    except ImportError as err:
        raise ImportError(
            f'dispersion=True needs torch-dftd: pip install "openmace[d3]" ({err})'
        ) from err
    return TorchDFTD3Calculator


def _existing_file(path: Path, family: str, name: str | None = None) -> Path:
    if path.is_file():
        return path
    if path.exists():
        raise FoundationModelError(path, path, "not a file")
    cause = "no such file"
    if name is not None:
        known = list(URLS[family])
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        cause += f", and not a known {family} model name (known: {', '.join(known)}){hint}"
    raise FoundationModelError(name or path, path, cause)


def _url_key(url: str) -> str:
    """Cache key of a user-given address: ``urls/<hash of the address>/<file name>``."""
    base = os.path.basename(urllib.parse.urlsplit(url).path)
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "model"
    return f"urls/{hashlib.sha256(url.encode()).hexdigest()[:16]}/{base}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_registry(directory: Path) -> dict[str, dict[str, Any]]:
    path = directory / REGISTRY
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise FoundationModelError(
            "registry", path, f"unreadable ({err}); delete it to record the cached files anew"
        ) from err
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise FoundationModelError(
            "registry", path, "not a registry of files; delete it to record the files anew"
        )
    return files


def _write_registry(directory: Path, files: dict[str, dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{REGISTRY}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": 1, "files": files}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        _public(tmp)
        os.replace(tmp, directory / REGISTRY)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _registry_lock(directory: Path) -> Iterator[None]:
    """Exclusive lock for a read-modify-write of the registry (other processes downloading)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic replacement only
        yield
        return
    with open(directory / ".registry.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _record(directory: Path, key: str, entry: dict[str, Any]) -> None:
    with _registry_lock(directory):
        files = _read_registry(directory)
        files[key] = entry
        _write_registry(directory, files)


def _public(path: str) -> None:
    """Permissions of a normal new file (mkstemp makes them private), for shared caches."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _verify(target: Path, directory: Path, key: str, name: str, url: str) -> None:
    """Check a cached file against its record (size, then SHA-256); record it if unrecorded."""
    entry = _read_registry(directory).get(key)
    size = target.stat().st_size
    if entry is None:
        digest = _sha256(target)
        log.warning(
            "%s has no record in %s (placed there by hand, or its record was lost); "
            "recording it now: %d bytes, sha256 %s",
            target,
            directory / REGISTRY,
            size,
            digest,
        )
        try:
            _record(directory, key, _entry(url, size, digest, source="found in cache"))
        except OSError as err:
            log.warning("cannot record %s in %s: %s", target, directory, err)
        return
    delete = f"; delete {target} to download it again"
    if size != entry["size"]:
        raise FoundationModelError(
            name,
            target,
            f"the cached file changed since it was recorded: {size} bytes, recorded "
            f"{entry['size']}{delete}",
        )
    started = time.perf_counter()
    digest = _sha256(target)
    log.debug("sha256 of %s (%d bytes): %.3f s", target, size, time.perf_counter() - started)
    if digest != entry["sha256"]:
        raise FoundationModelError(
            name,
            target,
            f"the cached file changed since it was recorded: sha256 {digest}, recorded "
            f"{entry['sha256']}{delete}",
        )


def _entry(url: str, size: int, digest: str, source: str = "downloaded") -> dict[str, Any]:
    return {
        "url": url,
        "size": size,
        "sha256": digest,
        source.replace(" ", "_"): time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _download(
    url: str,
    target: Path,
    directory: Path,
    key: str,
    name: str,
    *,
    timeout: float,
    progress: bool | None,
) -> None:
    """Stream ``url`` into a temporary file beside ``target``, check its length, record its size
    and SHA-256, then rename it to ``target``; on any failure nothing is left behind."""

    def fail(cause: str) -> FoundationModelError:
        return FoundationModelError(name, url, cause)

    not_writable = f"cache directory {target.parent} is not writable"
    hint = f"; set {_ENV_CACHE} to a writable directory"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as err:
        raise fail(f"{not_writable} ({err}){hint}") from err
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"openmace/{__version__}"})
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as err:
                raise fail(f"the server answered HTTP {err.code} {err.reason}") from err
            except urllib.error.URLError as err:
                if isinstance(err.reason, TimeoutError):
                    raise fail(f"no answer from the server within {timeout:g} s") from err
                raise fail(f"cannot reach the server ({err.reason})") from err
            except TimeoutError as err:
                raise fail(f"no answer from the server within {timeout:g} s") from err
            except (OSError, http.client.HTTPException) as err:
                raise fail(f"cannot reach the server ({err!r})") from err
            with response:
                digest, size, total = _stream(response, out, url, target, timeout, progress, fail)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and size < total:
            raise fail(
                f"truncated download: {size} of {total} bytes arrived (the connection closed "
                "early); try again"
            )
        _public(tmp)
        try:
            with _registry_lock(directory):
                files = _read_registry(directory)
                pinned = files.get(key)
                if pinned is not None and pinned["sha256"] != digest:
                    raise fail(
                        f"the downloaded file (sha256 {digest}, {size} bytes) differs from the "
                        f"one recorded for {key} in {directory / REGISTRY} (sha256 "
                        f"{pinned['sha256']}, {pinned['size']} bytes); if the publisher replaced "
                        "the file, delete that entry to accept the new one"
                    )
                files[key] = _entry(url, size, digest)
                _write_registry(directory, files)
        except OSError as err:
            raise fail(f"{not_writable} ({err}){hint}") from err
        os.replace(tmp, target)
        log.info("downloaded %s: %d bytes, sha256 %s", target, size, digest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _stream(
    response: http.client.HTTPResponse,
    out: BinaryIO,
    url: str,
    target: Path,
    timeout: float,
    progress: bool | None,
    fail: Callable[[str], FoundationModelError],
) -> tuple[str, int, int | None]:
    """Copy the body to ``out`` while hashing it; (sha256, bytes received, announced length)."""
    content_type = response.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() == "text/html":
        raise fail("the server sent a web page (text/html), not a model file")
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    log.info(
        "downloading %s to %s%s",
        url,
        target,
        f" ({total / 1e6:.1f} MB)" if total is not None else "",
    )
    bar = None
    if progress is not False:
        from tqdm import tqdm

        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=target.name,
            disable=None if progress is None else False,
        )
    digest, size, next_log = hashlib.sha256(), 0, 0.1
    try:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except TimeoutError as err:
                raise fail(f"no data for {timeout:g} s after {size} bytes; try again") from err
            except (http.client.HTTPException, OSError) as err:
                raise fail(
                    f"truncated download: {size} of {total or '?'} bytes arrived ({err!r}); "
                    "try again"
                ) from err
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as err:
                raise fail(f"cannot write {target.parent} ({err})") from err
            digest.update(chunk)
            size += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            if total and (bar is None or bar.disable) and size >= next_log * total:
                log.info("downloaded %d%% of %s", int(100 * size / total), target.name)
                next_log = int(10 * size / total) / 10 + 0.1
    finally:
        if bar is not None:
            bar.close()
    return digest.hexdigest(), size, total
