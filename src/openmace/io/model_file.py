"""The openmace model file: one safetensors file, no pickle.

Tensors are the model's parameters (plain arrays, read by the safetensors library, which never
executes code). The header's string metadata holds JSON: the file format and its version, the
model hyperparameters (:class:`openmace.model.MACEConfig`), units, the openmace version and free
provenance (training data, metrics).

Loading checks before it builds anything (:func:`check_model_file`, also run by ``openmace
info``): the header (size, format, JSON nesting, the type, range and finiteness of every config
value), that the config's model fits in the file's data, the work of building it (the coupling
bases of the symmetric contraction: limits below), and the name, shape and dtype of every tensor
against the state dict computed from the config in closed form
(:func:`openmace.model.shapes.expected_shapes`). Then it reads the tensors, refuses non-finite
values (also values that overflow the requested dtype), and only then builds the model.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from openmace.model import MACE, MACEConfig
from openmace.model.shapes import (
    Shape,
    basis_size,
    construction_work,
    expected_shapes,
    layers,
    parameter_count,
)
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
# limits of what a header may ask for (docs/robustness.md). The work estimates are those of
# openmace.model.shapes.construction_work; on 2 CPU cores 1e10 basis flops take a few
# minutes, the default model (128x0e+128x1o, max_ell 3, correlation 3) needs 3e6, hidden
# features of both parities up to L = 2 6e9, correlation 4 with L = 3 features 3e9
MAX_JSON_DEPTH = 32  # nesting of the header's JSON values (a config needs 2)
MAX_INTERACTIONS = 32  # layers
MAX_BASIS_FLOPS = 1e10  # building the coupling bases
MAX_BASIS_NUMBERS = 2.5e8  # largest tensor made for them: 2 GB in float64
MAX_CONTRACTED_NUMBERS = 1e9  # weights contracted with the bases per evaluation: 8 GB
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class ModelFileError(ValueError):
    """A model file that cannot be loaded; the message (one line) names the file and the
    problem."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


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
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file")
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with open(path, "rb") as fh:
            start = fh.read(9)
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read the model file ({err.strerror})") from err
    if len(start) < 8:
        raise ModelFileError(f"{path}: not an openmace model file (file too short)")
    # a safetensors header (JSON) starts at byte 8; its size may begin with 0x80 or "PK" too
    if start[8:9] != b"{" and (start[:1] == b"\x80" or start[:2] == b"PK"):
        raise ModelFileError(
            f"{path}: this is a pickle/zip file (e.g. a mace-torch .model); it was not loaded "
            "because unpickling can run code. Convert it with `openmace convert`."
        )
    header_size = int.from_bytes(start[:8], "little")
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
    if version < 1:
        raise ModelFileError(f"{path}: bad format_version {version}")
    header: dict[str, Any] = {
        k: metadata[k] for k in ("openmace_version", "dtype") if k in metadata
    }
    for key in ("config", "units", "provenance"):
        header[key] = _json_object(path, key, metadata.get(key, "{}"))
    if header["units"] and header["units"] != UNITS:
        raise ModelFileError(
            f"{path}: invalid header: units {header['units']} (openmace models use {UNITS})"
        )
    try:
        header["config"] = MACEConfig.from_dict(header["config"])
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: invalid header: {err}") from err
    header["format_version"] = version
    return header


def _json_object(path: Path, key: str, text: str) -> dict[str, Any]:
    """One JSON object of the header. Its nesting is measured before parsing (the parser
    recurses once per level): at most :data:`MAX_JSON_DEPTH` levels."""
    codes = np.frombuffer(_JSON_STRING.sub("", text).encode(), dtype=np.uint8)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int64)
    steps -= np.isin(codes, (ord("]"), ord("}")))
    depth = int(np.cumsum(steps).max()) if steps.size else 0
    if depth > MAX_JSON_DEPTH:
        raise ModelFileError(
            f"{path}: invalid header: {key} is nested {depth} levels deep "
            f"(at most {MAX_JSON_DEPTH})"
        )
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ModelFileError(f"{path}: invalid header: {key} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise ModelFileError(
            f"{path}: invalid header: {key} must be a JSON object, not {type(value).__name__}"
        )
    return value


def check_model_file(path: str | Path) -> dict[str, Any]:
    """Every check of a model file that needs no tensor data (the checks of :func:`load_model`
    before it reads the tensors): the header (:func:`read_header`), the model's size against
    the file's, the work of building it, and every tensor's name, shape and dtype against the
    state dict that the config describes (computed in closed form; nothing is built). Returns
    the header, with ``tensors`` (name → shape) and ``parameters`` (their total size) added."""
    path = Path(path)
    header = read_header(path)
    config, version = header["config"], header["format_version"]
    _check_config_fits_file(path, config)
    if config.num_interactions > MAX_INTERACTIONS:
        raise ModelFileError(
            f"{path}: num_interactions {config.num_interactions} is more than the limit of "
            f"{MAX_INTERACTIONS} layers"
        )
    expected = stored_shapes(config, version)
    _check_tensor_table(path, expected)
    _check_construction_work(path, config)
    header["tensors"] = expected
    header["parameters"] = parameter_count(expected)
    return header


def stored_shapes(config: MACEConfig, version: int = FORMAT_VERSION) -> dict[str, Shape]:
    """Name → shape of every tensor of a model file of ``version`` with ``config`` (closed
    form). Version 1 stored contraction weights as basis coefficients ``[elements, basis
    size, channels]``; versions 1-2 name the radial MLP differently and lack ZBL's constants."""
    shapes = expected_shapes(config)
    if version < 2:
        all_layers = layers(config)
        for name, shape in shapes.items():
            match = _CONTRACTION_WEIGHT.fullmatch(name)
            if match is not None:
                layer = all_layers[int(match.group(1))]
                j, nu = (int(x) for x in match.group(2).split("_"))
                size = basis_size(layer.irreps_a, layer.irreps_out[j], nu)
                shapes[name] = (shape[0], size, shape[2])
    if version < 3:
        shapes = {_v2_name(k): v for k, v in shapes.items() if k not in _ZBL_BUFFERS_V3}
    return shapes


def _check_tensor_table(path: Path, expected: dict[str, Shape]) -> None:
    """Names, shapes and dtypes of the file's tensors (read from its header, no data)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            names = set(fh.keys())
            if names != set(expected):
                missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
                raise ModelFileError(
                    f"{path}: tensors do not match the config (missing {missing[:5]}, "
                    f"unexpected {extra[:5]})"
                )
            for name, want in expected.items():
                sl = fh.get_slice(name)
                shape = tuple(sl.get_shape())
                if shape != want:
                    raise ModelFileError(
                        f"{path}: tensor {name} has shape {shape}, expected {want}"
                    )
                if sl.get_dtype() not in FLOAT_DTYPES:
                    raise ModelFileError(f"{path}: tensor {name} has dtype {sl.get_dtype()}")
    except SafetensorError as err:
        raise ModelFileError(f"{path}: corrupt or truncated model file ({err})") from err


def _check_construction_work(path: Path, config: MACEConfig) -> None:
    """Refuse a config whose model would take too long or too much memory to build."""
    work = construction_work(config)
    values = (
        f"max_ell {config.max_ell}, hidden_irreps {config.hidden_irreps}, "
        f"correlation {config.correlation}"
    )
    if work.basis_flops > MAX_BASIS_FLOPS or work.basis_numbers > MAX_BASIS_NUMBERS:
        raise ModelFileError(
            f"{path}: building this model's coupling bases ({values}) would need about "
            f"{work.basis_flops:.1e} operations and a tensor of {work.basis_numbers:.1e} numbers "
            f"(limits {MAX_BASIS_FLOPS:.0e} and {MAX_BASIS_NUMBERS:.1e})"
        )
    if work.contracted_numbers > MAX_CONTRACTED_NUMBERS:
        raise ModelFileError(
            f"{path}: this model ({values}, {len(config.atomic_numbers)} elements) would "
            f"contract {work.contracted_numbers:.1e} weights at every evaluation "
            f"(limit {MAX_CONTRACTED_NUMBERS:.0e})"
        )


def is_mace_torch_file(path: Path) -> bool:
    """A PyTorch zip archive (what ``torch.save`` writes, e.g. mace-torch's ``.model``), not an
    openmace (safetensors) file: told by the first bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> MACE:
    """Load a model file into a :class:`MACE` on ``device`` in ``dtype``: an openmace file, or
    a mace-torch ``.model`` (converted on the fly by :func:`openmace.io.mace_torch.load_mace_torch`,
    read without running any of its code)."""
    path = Path(path)
    if is_mace_torch_file(path):
        from openmace.io.mace_torch import load_mace_torch

        model = load_mace_torch(path, dtype=dtype)
        model.provenance = {"converted_from": "mace-torch", "source": str(path)}
        return model.to(device)
    header = check_model_file(path)
    version = header["format_version"]
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            for name in header["tensors"]:
                tensors[name] = fh.get_tensor(name)
                _check_finite(path, name, tensors[name], dtype)
    except SafetensorError as err:
        raise ModelFileError(f"{path}: corrupt or truncated model file ({err})") from err
    model = MACE(header["config"], dtype=dtype)
    if version < 2:
        tensors = _contraction_weights_from_v1(model, tensors)
    if version < 3:
        tensors = _tensors_from_v2(model, tensors)
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()})
    model.provenance = header["provenance"]
    return model.to(device)


def _check_finite(path: Path, name: str, value: torch.Tensor, dtype: torch.dtype) -> None:
    """Refuse NaN or infinite numbers, also those that appear when converting to ``dtype``."""
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ModelFileError(f"{path}: tensor {name} holds {bad} non-finite value(s) (NaN or Inf)")
    if not bool(torch.isfinite(value.to(dtype)).all()):
        largest = float(value.abs().max())
        raise ModelFileError(
            f"{path}: tensor {name} holds values too large for {str(dtype).removeprefix('torch.')}"
            f" (largest magnitude {largest:.3g}); load it in float64"
        )


def _v2_name(name: str) -> str:
    return re.sub(
        r"interactions\.(\d+)\.messages\.radial_mlp\.", r"interactions.\1.radial_mlp.", name
    )


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
            f"file holds only {data_bytes} bytes of tensors (corrupt or hostile header: "
            f"hidden_irreps {config.hidden_irreps}, num_interactions {config.num_interactions}, "
            f"{len(config.atomic_numbers)} elements)"
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
