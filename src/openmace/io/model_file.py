"""The openmace model file: one safetensors file, no pickle.

Tensors are the model's parameters (plain arrays, read by the safetensors library, which never
executes code). The header's string metadata holds JSON: the file format and its version, the
model hyperparameters (:class:`openmace.model.MACEConfig`), units, the openmace version and free
provenance (training data, metrics). Loading validates the header, rebuilds the model from the
hyperparameters and checks every tensor's name, shape and dtype before copying it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from openmace.model import MACE, MACEConfig
from openmace.o3.coupling import tree_frame

FORMAT_NAME = "openmace-model"
FORMAT_VERSION = 3
# version 1 stored symmetric-contraction weights in the orthonormal coupling basis; version 2
# stores one weight per coupling tree (the paper's eq. 10); version 3 names the radial MLP
# ``interactions.N.messages.radial_mlp`` (it belongs to the edge messages, the operator the
# inference conversion swaps) and stores ZBL's ``a_exp``/``a_prefactor`` (version 2 files lost
# them: they load with ZBL's defaults, as before). Files of every version load.
_CONTRACTION_WEIGHT = re.compile(r"products\.(\d+)\.contraction\.weights\.(\d+_\d+)")
_RADIAL_MLP_V2 = re.compile(r"interactions\.(\d+)\.radial_mlp\.")
_ZBL_BUFFERS_V3 = ("pair_repulsion.a_exp", "pair_repulsion.a_prefactor")
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³"}
MAX_HEADER_BYTES = 16 * 1024 * 1024


class ModelFileError(ValueError):
    """A model file that cannot be loaded; the message names the file and the problem."""


def _version() -> str:
    from openmace.version import __version__

    return __version__


def save_model(model: MACE, path: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "units": json.dumps(UNITS),
        "openmace_version": _version(),
        "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch."),
        "provenance": json.dumps(provenance or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """Validated metadata of a model file (config, units, versions, provenance)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    with open(path, "rb") as fh:
        start = fh.read(8)
    if len(start) < 8:
        raise ModelFileError(f"{path}: not an openmace model file (file too short)")
    if start[:2] == b"\x80\x02" or start[:1] == b"\x80" or start[:2] == b"PK":
        raise ModelFileError(
            f"{path}: this is a pickle/zip file (e.g. a mace-torch .model); it was not loaded "
            "because unpickling can run code. Convert it with `openmace convert`."
        )
    header_size = int.from_bytes(start, "little")
    if header_size > MAX_HEADER_BYTES or header_size > path.stat().st_size - 8:
        raise ModelFileError(f"{path}: corrupt model file (header size {header_size} bytes)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path}: corrupt or truncated model file ({err})") from err
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path}: not an openmace model file (format {metadata.get('format')!r})"
        )
    try:
        version = int(metadata.get("format_version", "0"))
    except ValueError as err:
        raise ModelFileError(f"{path}: bad format_version") from err
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format {version} is newer than this openmace supports "
            f"({FORMAT_VERSION}); upgrade openmace"
        )
    try:
        header = {k: metadata[k] for k in ("openmace_version", "dtype") if k in metadata}
        for key in ("config", "units", "provenance"):
            header[key] = json.loads(metadata.get(key, "{}"))
        header["config"] = MACEConfig.from_dict(header["config"])
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: invalid header: {err}") from err
    header["format_version"] = version
    return header


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> MACE:
    """Load a model file into a :class:`MACE` on ``device`` in ``dtype``."""
    path = Path(path)
    header = read_header(path)
    _check_config_fits_file(path, header["config"])
    model = MACE(header["config"], dtype=dtype)
    version = header["format_version"]
    expected = _stored_names(model.state_dict(), version)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            names = set(fh.keys())
            if names != set(expected):
                missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
                raise ModelFileError(
                    f"{path}: tensors do not match the config (missing {missing[:5]}, "
                    f"unexpected {extra[:5]})"
                )
            for name in expected:
                sl = fh.get_slice(name)
                shape = tuple(sl.get_shape())
                want = _stored_shape(model, name, tuple(expected[name].shape), version)
                if shape != want:
                    raise ModelFileError(
                        f"{path}: tensor {name} has shape {shape}, expected {want}"
                    )
                if sl.get_dtype() not in ("F64", "F32", "F16", "BF16"):
                    raise ModelFileError(f"{path}: tensor {name} has dtype {sl.get_dtype()}")
                tensors[name] = fh.get_tensor(name)
    except SafetensorError as err:
        raise ModelFileError(f"{path}: corrupt or truncated model file ({err})") from err
    if version < 2:
        tensors = _contraction_weights_from_v1(model, tensors)
    if version < 3:
        tensors = _tensors_from_v2(model, tensors)
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()})
    model.provenance = header["provenance"]
    return model.to(device)


def _v2_name(name: str) -> str:
    return re.sub(
        r"interactions\.(\d+)\.messages\.radial_mlp\.", r"interactions.\1.radial_mlp.", name
    )


def _stored_names(state: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
    """The model's state dict under the names (and with the entries) of a file ``version``."""
    if version >= 3:
        return state
    return {_v2_name(k): v for k, v in state.items() if k not in _ZBL_BUFFERS_V3}


def _tensors_from_v2(model: MACE, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Version 2 names → version 3; ZBL's constants (absent in version 2) at their defaults."""
    out = {
        _RADIAL_MLP_V2.sub(r"interactions.\1.messages.radial_mlp.", k): v
        for k, v in tensors.items()
    }
    state = model.state_dict()
    for name in _ZBL_BUFFERS_V3:
        if name in state:
            out[name] = state[name]
    return out


def _minimum_parameters(config: MACEConfig) -> int:
    """A lower bound on the parameter count of a model with this config (cheap arithmetic)."""
    c, e, layers = config.features.channels, len(config.atomic_numbers), config.num_interactions
    radial = [config.num_bessel, *config.radial_mlp, c]
    per_layer = c * c + e * c * c + sum(a * b for a, b in zip(radial[:-1], radial[1:]))
    return e * c + layers * per_layer


def _check_config_fits_file(path: Path, config: MACEConfig) -> None:
    """Refuse, before building anything, a config whose model could not fit in the file's
    tensor data (a hostile or corrupt header could otherwise make us allocate terabytes)."""
    with open(path, "rb") as fh:
        header_size = int.from_bytes(fh.read(8), "little")
    data_bytes = path.stat().st_size - 8 - header_size
    needed = 2 * _minimum_parameters(config)  # 2 bytes: the smallest accepted dtype
    if needed > data_bytes:
        raise ModelFileError(
            f"{path}: the config describes a model of at least {needed // 2} parameters but the "
            f"file holds only {data_bytes} bytes of tensors (corrupt or hostile header)"
        )


def _basis_to_trees(model: MACE, name: str) -> torch.Tensor | None:
    """For a contraction weight: the float64 Parseval frame ``[K_basis, K_trees]`` of its block
    (``w_basis = frame @ w_trees``); None for other tensors."""
    match = _CONTRACTION_WEIGHT.fullmatch(name)
    if match is None:
        return None
    contraction = model.products[int(match.group(1))].contraction
    j, nu = (int(x) for x in match.group(2).split("_"))
    return tree_frame(contraction.irreps_in, contraction.irreps_out[j], nu)


def _stored_shape(model: MACE, name: str, shape: tuple[int, ...], version: int) -> tuple:
    frame = _basis_to_trees(model, name) if version < 2 else None
    if frame is not None:  # version 1: [elements, basis size, channels]
        return (shape[0], frame.shape[0], shape[2])
    return shape


def _contraction_weights_from_v1(
    model: MACE, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Basis coefficients → the minimum-norm tree weights giving the same polynomials."""
    out = dict(tensors)
    for name, value in tensors.items():
        frame = _basis_to_trees(model, name)
        if frame is not None:
            pinv = torch.linalg.pinv(frame)
            out[name] = torch.einsum("tk,ekc->etc", pinv, value.to(torch.float64))
    return out
