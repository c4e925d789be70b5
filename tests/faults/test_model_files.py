"""Hostile and broken model files (issue 14: memory and time bombs, non-finite models).

Every case is generated: each config field with wrong types, NaN/Inf, values beyond its bounds,
huge lists and deeply nested JSON; each tensor of a model missing, reshaped, retyped or holding
NaN/Inf; headers asking for hours of construction with tensors that match them. Each file must
be refused with a one-line :class:`ModelFileError` naming the file and the field or tensor,
within a wall-time bound and before the model is built (``MACE.__init__`` fails if called),
through ``load_model``, ``MACECalculator`` and the CLI (``info``, ``eval``, ``export``: exit 2,
one line). The closed-form state dict the files are checked against is proven against
``MACE(config).state_dict()`` for generated configs.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import ase.build
import ase.io
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from openmace import MACECalculator, load_model, save_model
from openmace.cli.main import main
from openmace.io import model_file
from openmace.io.model_file import ModelFileError, check_model_file
from openmace.model import MACE, MACEConfig
from openmace.model.config import MAX_MLP_LAYERS, MAX_NUM_BESSEL, MAX_POLYNOMIAL_CUTOFF
from openmace.model.shapes import basis_size, construction_work, expected_shapes, tree_count
from openmace.o3 import Irrep, coupling_basis
from openmace.o3.coupling import tree_frame

SECONDS = 2.0  # wall-time bound of refusing one file
NAN, INF = float("nan"), float("inf")
DEEP = 100_000  # nesting of the "deeply nested" JSON values
BASE = dict(
    atomic_numbers=[1, 8],
    atomic_energies=[-13.6, -2041.8],
    r_max=4.0,
    num_bessel=6,
    num_polynomial_cutoff=5,
    max_ell=2,
    hidden_irreps="4x0e+4x1o",
    correlation=2,
    num_interactions=2,
    radial_mlp=[8, 8],
    readout_mlp=[4],
    avg_num_neighbors=3.0,
    scale=1.1,
    shift=-0.1,
    residual_first=True,
    pair_repulsion=True,
)
TENSORS = sorted(expected_shapes(MACEConfig(**BASE)))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small model file and its metadata and tensors."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "base.safetensors"
    save_model(MACE(MACEConfig(**BASE), dtype=torch.float64), path)
    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return path, metadata, tensors


def _refuse_to_build(*args, **kwargs):
    raise AssertionError("the model was built for a file that must be refused first")


@pytest.fixture
def no_build(monkeypatch):
    """Building a model (coupling bases, weights) fails the test."""
    monkeypatch.setattr(MACE, "__init__", _refuse_to_build)


def refused(path: Path, *fragments: str, load=load_model) -> str:
    """``load(path)`` raises a one-line ModelFileError naming ``path`` and ``fragments``,
    within :data:`SECONDS`."""
    start = time.perf_counter()
    with pytest.raises(ModelFileError) as error:
        load(path)
    elapsed = time.perf_counter() - start
    message = str(error.value)
    assert elapsed < SECONDS, f"{elapsed:.1f} s to refuse: {message}"
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def write(path: Path, tensors: dict, metadata: dict, **changes: str) -> Path:
    save_file(tensors, str(path), metadata={**metadata, **changes})
    return path


def config_text(changes: dict, deep_field: str | None = None, remove: str | None = None) -> str:
    """The base config as JSON with ``changes`` (NaN and Infinity as JSON's extensions);
    ``deep_field`` becomes a list nested :data:`DEEP` levels (written as text: no recursion)."""
    config = {**BASE, **changes}
    if remove is not None:
        del config[remove]
    if deep_field is None:
        return json.dumps(config)
    config[deep_field] = "@DEEP@"
    return json.dumps(config).replace('"@DEEP@"', "[" * DEEP + "]" * DEEP)


# ---------------------------------------------------------------------------------------------
# every config field: wrong types, non-finite values, values beyond its bounds, huge lists


def _config_cases() -> list[tuple[str, object, str]]:
    """(field, bad value, what the message must name)."""
    cases: list[tuple[str, object, str]] = []
    wrong_types = ["text", None, {"value": 1}, [[1, 2]], True]
    numbers = {
        "r_max": [0, 0.0, -4.0, 1e-300, 0.05, 100.5, 1e300, 10**400],
        "avg_num_neighbors": [0, -3.0, 10**400],
        "scale": [10**400],
        "shift": [-(10**400)],
    }
    for name, extra in numbers.items():
        for value in [NAN, INF, -INF, "1.0", [1.0], *wrong_types, *extra]:
            cases.append((name, value, name))
    integers = {
        "num_bessel": [0, -1, MAX_NUM_BESSEL + 1, 10**30, 10**400],
        "num_polynomial_cutoff": [0, -5, MAX_POLYNOMIAL_CUTOFF + 1, 10**30],
        "max_ell": [-1, 7, 10**30],
        "num_interactions": [0, -2, 10**30, 10**6, 40],
    }
    for name, extra in integers.items():
        for value in [2.5, 2.0, "2", [2], NAN, INF, *wrong_types, *extra]:
            cases.append((name, value, name))
    for value in [0, 5, -1, 2.5, "2", [], [2, 5], [2, 2, 2], [[2, 2]], [2.0, 2.0], 10**30, NAN]:
        cases.append(("correlation", value, "correlation"))
    cases += [("correlation", v, "correlation") for v in wrong_types if v != [[1, 2]]]
    for value in [
        "",
        "4x0e+4x1o+4x1o",
        "4x1o",
        "0x0e+0x1o",
        "4x0e+4x4e",
        "4x0e+2x1o",
        "4x0e+4x1o+",
        "1" + "0" * 5000 + "x0e",
        "4x0e" + "+4x0e" * 100_000,
        4,
        ["4x0e"],
        *wrong_types,
    ]:
        cases.append(("hidden_irreps", value, "hidden_irreps"))
    for value in [
        [],
        [0, 8],
        [1, 1],
        [119, 8],
        [1.0, 8.0],
        [-1, 8],
        ["H", "O"],
        [True, False],
        list(range(1, 100_001)),
        8,
        *wrong_types,
    ]:
        cases.append(("atomic_numbers", value, "atomic_numbers"))
    cases.append(("atomic_numbers", [1, 8, 6], "atomic_energies"))  # one E0 per element
    for value in [
        [NAN, 0.0],
        [0.0, INF],
        [-INF, 0.0],
        [10**400, 0.0],
        ["-13.6", 0.0],
        [True, 0.0],
        [[0.0], [0.0]],
        [0.0],
        [0.0] * 100_000,
        -13.6,
        *wrong_types,
    ]:
        cases.append(("atomic_energies", value, "atomic_energies"))
    for name in ("radial_mlp", "readout_mlp"):
        for value in [
            [0],
            [-8],
            [8.5],
            [8.0],
            ["8"],
            [True],
            [[8]],
            [NAN],
            [1] * (MAX_MLP_LAYERS + 1),
            [1] * 100_000,
            8,
            "8,8",
            *wrong_types,
        ]:
            cases.append((name, value, name))
    for name in ("residual_first", "pair_repulsion"):
        for value in ["false", "true", 0, 1, 1.0, None, [True], {"value": True}]:
            cases.append((name, value, name))
    for name, value in [("evil", "__import__('os')"), ("R_MAX", 5.0), ("radial_MLP", [8])]:
        cases.append((name, value, "unknown field"))
    return cases


CONFIG_CASES = _config_cases()


@pytest.mark.parametrize(
    "name,value,named", CONFIG_CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CONFIG_CASES)]
)
def test_bad_config_values_are_refused_naming_the_field(
    base, tmp_path, no_build, name, value, named
):
    _, metadata, tensors = base
    path = write(tmp_path / "m.safetensors", tensors, metadata, config=config_text({name: value}))
    refused(path, named)


FIELDS = [f for f in BASE]


@pytest.mark.parametrize("name", FIELDS)
def test_deeply_nested_values_are_refused_before_parsing(base, tmp_path, no_build, name):
    """A value nested 100000 levels deep (the JSON parser recurses once per level)."""
    _, metadata, tensors = base
    text = config_text({}, deep_field=name)
    path = write(tmp_path / "m.safetensors", tensors, metadata, config=text)
    refused(path, "config", "nested")


@pytest.mark.parametrize("name", ["atomic_numbers", "atomic_energies", "the whole config"])
def test_missing_required_fields_are_named(base, tmp_path, no_build, name):
    _, metadata, tensors = base
    if name == "the whole config":
        metadata = {k: v for k, v in metadata.items() if k != "config"}
        path = write(tmp_path / "m.safetensors", tensors, metadata)
    else:
        path = write(
            tmp_path / "m.safetensors", tensors, metadata, config=config_text({}, remove=name)
        )
    refused(path, name if name != "the whole config" else "atomic_numbers")


# valid configs that describe another model than the file's tensors
OTHER_MODELS = [
    dict(hidden_irreps="4x0e"),
    dict(hidden_irreps="5x0e+5x1o"),
    dict(hidden_irreps="4x0e+4x1o+4x2e"),
    dict(hidden_irreps="4x0e+4x0o+4x1o+4x1e"),
    dict(max_ell=1),
    dict(max_ell=3),
    dict(correlation=3),
    dict(correlation=[2, 1]),
    dict(num_interactions=1),
    dict(num_interactions=3),
    dict(num_bessel=7),
    dict(radial_mlp=[8]),
    dict(radial_mlp=[8, 8, 8]),
    dict(readout_mlp=[5]),
    dict(readout_mlp=[]),
    dict(readout_mlp=[50_000, 50_000]),  # 2.5e9 weights claimed by a file of ~30 KB
    dict(residual_first=False),
    dict(pair_repulsion=False),
    dict(atomic_numbers=[1, 6, 8], atomic_energies=[0.0, 0.0, 0.0]),
    dict(atomic_numbers=[1], atomic_energies=[0.0]),
]


@pytest.mark.parametrize("changes", OTHER_MODELS, ids=[str(c)[:40] for c in OTHER_MODELS])
def test_configs_of_another_model_are_refused_by_the_tensor_table(
    base, tmp_path, no_build, changes
):
    _, metadata, tensors = base
    path = write(tmp_path / "m.safetensors", tensors, metadata, config=config_text(changes))
    message = refused(path)
    assert "tensor" in message or "at least" in message, message


# ---------------------------------------------------------------------------------------------
# the header around the config


HEADER_CASES = [
    ("format_version", "abc", "format_version"),
    ("format_version", "", "format_version"),
    ("format_version", "-1", "format_version"),
    ("format_version", "0", "format_version"),
    ("format_version", "3.0", "format_version"),
    ("format_version", "1" * 5000, "format_version"),
    ("format_version", "99", "newer"),
    ("format", "pickle", "not an openmace model file"),
    ("config", "not json", "config"),
    ("config", "[1, 2]", "config must be a JSON object"),
    ("config", "null", "config must be a JSON object"),
    ("config", '"text"', "config must be a JSON object"),
    ("config", '{"r_max": ' + "1" * 5000 + "}", "config"),
    ("config", "{" * 10**6, "config is nested"),
    ("config", '{"a": ' * 50_000 + "1" + "}" * 50_000, "config is nested"),
    ("units", json.dumps({**model_file.UNITS, "energy": "kcal/mol"}), "units"),
    ("units", "[]", "units must be a JSON object"),
    ("units", "[" * 10**6 + "]" * 10**6, "units is nested"),
    ("provenance", "[]", "provenance must be a JSON object"),
    ("provenance", '{"data": ' + "[" * 10**6 + "]" * 10**6 + "}", "provenance is nested"),
    ("provenance", '{"x": "' + "[" * 10**5 + '"}', None),  # brackets in a string: accepted
]


@pytest.mark.parametrize(
    "key,text,named", HEADER_CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(HEADER_CASES)]
)
def test_bad_header_fields_are_refused(base, tmp_path, monkeypatch, key, text, named):
    _, metadata, tensors = base
    path = write(tmp_path / "m.safetensors", tensors, metadata, **{key: text})
    if named is None:
        start = time.perf_counter()
        assert check_model_file(path)["provenance"]["x"].startswith("[[[")
        assert time.perf_counter() - start < SECONDS
        return
    monkeypatch.setattr(MACE, "__init__", _refuse_to_build)
    refused(path, named)


# ---------------------------------------------------------------------------------------------
# the tensor table and the tensors' values


def _reshaped(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Other shapes: one more row, a trailing axis, flat with a different size."""
    if not shape:
        return [(1,), (2, 1), (7,)]
    return [(shape[0] + 1, *shape[1:]), (*shape, 1), (math.prod(shape) + 7,)]


@pytest.mark.parametrize("name", TENSORS)
def test_missing_reshaped_and_retyped_tensors_are_named(base, tmp_path, no_build, name):
    _, metadata, tensors = base
    path = tmp_path / "m.safetensors"
    write(path, {k: v for k, v in tensors.items() if k != name}, metadata)
    refused(path, "missing", name)
    for shape in _reshaped(tuple(tensors[name].shape)):
        write(path, {**tensors, name: torch.zeros(shape, dtype=torch.float64)}, metadata)
        refused(path, f"tensor {name} has shape {shape}")
    for dtype, code in [(torch.int64, "I64"), (torch.int32, "I32"), (torch.bool, "BOOL")]:
        write(path, {**tensors, name: tensors[name].to(dtype)}, metadata)
        refused(path, f"tensor {name} has dtype {code}")


@pytest.mark.parametrize(
    "extra", ["evil", "products.0.contraction.weights.9_9", "interactions.0.radial_mlp.weights.0"]
)
def test_unexpected_tensors_are_named(base, tmp_path, no_build, extra):
    _, metadata, tensors = base
    path = write(tmp_path / "m.safetensors", {**tensors, extra: torch.zeros(2)}, metadata)
    refused(path, "unexpected", extra)


@pytest.mark.parametrize("name", TENSORS)
def test_non_finite_tensors_are_refused_before_building(base, tmp_path, no_build, name):
    """NaN, +Inf or -Inf anywhere; and numbers finite in float64 that overflow float32."""
    _, metadata, tensors = base
    path = tmp_path / "m.safetensors"
    for bad in (NAN, INF, -INF):
        value = tensors[name].clone()
        value.view(-1)[-1] = bad
        write(path, {**tensors, name: value}, metadata)
        refused(path, f"tensor {name} holds 1 non-finite value")
        refused(path, f"tensor {name}", load=lambda p: MACECalculator(model=p))
    value = tensors[name].clone()
    value.view(-1)[0] = 1e300
    write(path, {**tensors, name: value}, metadata)
    refused(path, f"tensor {name} holds values too large for float32", load=_load32)


def _load32(path):
    return load_model(path, dtype=torch.float32)


def test_float16_tensors_with_inf_are_refused(base, tmp_path, no_build):
    _, metadata, tensors = base
    half = {k: v.to(torch.float16) for k, v in tensors.items()}
    half["embedding"] = half["embedding"] * 1e5  # beyond float16's 65504
    refused(write(tmp_path / "m.safetensors", half, metadata), "tensor embedding holds")


# ---------------------------------------------------------------------------------------------
# construction work: headers within the fields' bounds whose coupling bases would take hours


def _closed_form_file(path: Path, config: MACEConfig) -> Path:
    """A model file whose tensors (zeros) match ``config`` exactly, made without building it."""
    tensors = {k: torch.zeros(s, dtype=torch.float32) for k, s in expected_shapes(config).items()}
    metadata = {
        "format": model_file.FORMAT_NAME,
        "format_version": str(model_file.FORMAT_VERSION),
        "config": json.dumps(config.to_dict()),
        "units": json.dumps(model_file.UNITS),
        "provenance": "{}",
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def _expensive_configs() -> list[MACEConfig]:
    hidden = [
        "1x0e+1x1o+1x2e",
        "1x0e+1x1o+1x2e+1x3o",
        "1x0e+1x0o+1x1o+1x1e+1x2e+1x2o+1x3o+1x3e",
        "1x0e+1x0o+1x1o+1x1e",
    ]
    out = []
    for max_ell in (3, 4, 5, 6):
        for correlation in (3, 4):
            for irreps in hidden:
                config = MACEConfig(
                    atomic_numbers=[1],
                    atomic_energies=[0.0],
                    max_ell=max_ell,
                    correlation=correlation,
                    hidden_irreps=irreps,
                    radial_mlp=[4],
                    num_bessel=4,
                )
                work = construction_work(config)
                if (
                    work.basis_flops > model_file.MAX_BASIS_FLOPS
                    or work.basis_numbers > model_file.MAX_BASIS_NUMBERS
                ):
                    out.append(config)
    return out


EXPENSIVE = _expensive_configs()


@pytest.mark.parametrize(
    "config",
    EXPENSIVE,
    ids=[f"ell{c.max_ell}-nu{c.correlation}-{c.hidden_irreps}" for c in EXPENSIVE],
)
def test_expensive_headers_are_refused_with_the_values_named(tmp_path, no_build, config):
    path = _closed_form_file(tmp_path / "m.safetensors", config)
    refused(
        path,
        f"max_ell {config.max_ell}",
        f"hidden_irreps {config.hidden_irreps}",
        f"correlation {config.correlation}",
        "coupling bases",
    )
    assert main(["info", str(path)]) == 2


def test_contracted_weights_and_layer_limits_apply(base, tmp_path, monkeypatch, no_build):
    path, _, _ = base
    monkeypatch.setattr(model_file, "MAX_CONTRACTED_NUMBERS", 1e3)
    refused(path, "contract", "2 elements")
    monkeypatch.setattr(model_file, "MAX_INTERACTIONS", 1)
    refused(path, "num_interactions 2")


def test_limits_refuse_the_issue_example_and_pass_documented_configs():
    """The issue's example (max_ell 6, correlation 4, L = 3 features) is over the limits; the
    default model and large common ones (89 elements) are within them."""
    assert any(c.max_ell == 6 and c.correlation == 4 and c.features.lmax == 3 for c in EXPENSIVE)
    assert len(EXPENSIVE) >= 15
    for changes in [
        {},
        dict(hidden_irreps="128x0e+128x1o+128x2e"),
        dict(hidden_irreps="64x0e+64x0o+64x1o+64x1e+64x2e+64x2o", max_ell=3),
        dict(hidden_irreps="64x0e+64x1o+64x2e+64x3o", correlation=4),
        dict(hidden_irreps="64x0e+64x1o", max_ell=6),
    ]:
        config = MACEConfig(
            atomic_numbers=list(range(1, 90)), atomic_energies=[0.0] * 89, **changes
        )
        work = construction_work(config)
        assert work.basis_flops <= model_file.MAX_BASIS_FLOPS, changes
        assert work.basis_numbers <= model_file.MAX_BASIS_NUMBERS, changes
        assert work.contracted_numbers <= model_file.MAX_CONTRACTED_NUMBERS, changes


# ---------------------------------------------------------------------------------------------
# every entry point: one line, exit code 2


def _broken_files(base, folder: Path) -> dict[str, Path]:
    _, metadata, tensors = base
    folder.mkdir(exist_ok=True)
    nan = dict(tensors)
    nan["embedding"] = nan["embedding"].clone()
    nan["embedding"][0, 0] = NAN
    expensive = EXPENSIVE[-1]
    return {
        "type": write(
            folder / "type.safetensors",
            tensors,
            metadata,
            config=config_text({"num_interactions": "2"}),
        ),
        "nan-config": write(
            folder / "nan.safetensors", tensors, metadata, config=config_text({"scale": NAN})
        ),
        "nested": write(
            folder / "deep.safetensors",
            tensors,
            metadata,
            config=config_text({}, deep_field="radial_mlp"),
        ),
        "shape": write(
            folder / "shape.safetensors", {**tensors, "embedding": torch.zeros(3)}, metadata
        ),
        "nan-tensor": write(folder / "nan-tensor.safetensors", nan, metadata),
        "expensive": _closed_form_file(folder / "expensive.safetensors", expensive),
        "directory": folder,
        "absent": folder / "absent.safetensors",
    }


KINDS = ["type", "nan-config", "nested", "shape", "nan-tensor", "expensive", "directory", "absent"]


def _one_error_line(capsys, command: str, path: Path) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("openmace ")]
    assert len(lines) == 1 and lines[0].startswith(f"openmace {command}: error: "), err
    assert str(path) in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("kind", KINDS)
def test_every_entry_point_refuses_with_one_line(base, tmp_path, capsys, no_build, kind):
    path = _broken_files(base, tmp_path / "files")[kind]
    refused(path)
    refused(path, load=lambda p: MACECalculator(model=p))
    capsys.readouterr()
    if kind != "nan-tensor":  # info reads the header and the tensor table, not the data
        assert main(["info", str(path)]) == 2
        _one_error_line(capsys, "info", path)
    structures = tmp_path / "water.xyz"
    ase.io.write(structures, [ase.build.molecule("H2O")])
    output = tmp_path / "out" / "predicted.xyz"
    command = ["eval", "--model", str(path), "--configs", str(structures), "--output", str(output)]
    assert main(command) == 2
    _one_error_line(capsys, "eval", path)
    assert not output.exists()
    exported = tmp_path / "exported.pt"
    assert main(["export", "--torchscript", str(path), "-o", str(exported)]) == 2
    _one_error_line(capsys, "export", path)
    assert not exported.exists()


def test_info_reports_the_checked_tensor_table(base, capsys):
    path, _, tensors = base
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    count = sum(v.numel() for v in tensors.values())
    assert f"parameters             {count} in {len(tensors)} tensors" in out


# ---------------------------------------------------------------------------------------------
# any JSON value in any field: loads (then it is that value) or one line naming the problem

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from([*FIELDS, "evil"]), value=json_values)
def test_any_json_value_in_any_field_loads_or_is_refused(base, tmp_path, name, value):
    _, metadata, tensors = base
    path = write(tmp_path / "m.safetensors", tensors, metadata, config=config_text({name: value}))
    start = time.perf_counter()
    try:
        model = load_model(path)
    except ModelFileError as err:
        assert time.perf_counter() - start < SECONDS and "\n" not in str(err)
        return
    assert name in FIELDS and getattr(model.config, name) == value  # a valid value, same model


# ---------------------------------------------------------------------------------------------
# the closed form the files are checked against, proven against the model


def _random_config(rng: random.Random) -> dict:
    max_ell = rng.randint(0, 3)
    correlation = rng.randint(1, 2 if max_ell == 3 else 3)
    extra = rng.sample(
        ["0o", "1o", "1e", "2e", "2o", "3o"], rng.randint(0, 3 if correlation < 3 else 2)
    )
    if correlation == 3:
        extra = [ir for ir in extra if ir[0] != "3"]
    channels = rng.randint(1, 3)
    elements = sorted(rng.sample(range(1, 119), rng.randint(1, 3)))
    layers = rng.randint(1, 3)
    return dict(
        atomic_numbers=elements,
        atomic_energies=[rng.uniform(-10, 0) for _ in elements],
        max_ell=max_ell,
        hidden_irreps="+".join(f"{channels}x{ir}" for ir in ["0e", *extra]),
        correlation=(
            [rng.randint(1, correlation) for _ in range(layers)]
            if rng.random() < 0.3
            else correlation
        ),
        num_interactions=layers,
        num_bessel=rng.randint(1, 9),
        radial_mlp=[rng.randint(1, 5) for _ in range(rng.randint(0, 2))],
        readout_mlp=[rng.randint(1, 5) for _ in range(rng.randint(0, 2))],
        residual_first=rng.random() < 0.5,
        pair_repulsion=rng.random() < 0.5,
    )


GENERATED = [_random_config(random.Random(seed)) for seed in range(40)]


@pytest.mark.parametrize("kwargs", GENERATED, ids=[f"config{i}" for i in range(len(GENERATED))])
def test_closed_form_state_dict_equals_the_models(kwargs):
    config = MACEConfig(**kwargs)
    expected = expected_shapes(config)
    actual = {k: tuple(v.shape) for k, v in MACE(config).state_dict().items()}
    assert expected == actual


def _irrep_sets() -> list[tuple[Irrep, ...]]:
    rng = random.Random(1)
    pool = [Irrep(l, p) for l in range(3) for p in (1, -1)]
    return [tuple(rng.sample(pool, rng.randint(1, 3))) for _ in range(16)]


@pytest.mark.parametrize("irreps", _irrep_sets(), ids=lambda irreps: "+".join(map(str, irreps)))
def test_closed_form_basis_and_tree_counts_equal_the_constructions(irreps):
    """Basis sizes (multiplicities in the symmetric powers) and coupling-tree counts, for every
    output irrep up to L = 3 and degree 3, equal those of the constructed coupling bases."""
    small = sum(ir.dim for ir in irreps) <= 9  # degree 3 of more components takes seconds
    for degree in (1, 2, 3) if small else (1, 2):
        for irrep_out in [Irrep(l, p) for l in range(4) for p in (1, -1)]:
            size = coupling_basis(irreps, irrep_out, degree).size
            assert basis_size(irreps, irrep_out, degree) == size, (irrep_out, degree)
            if size:
                trees = tree_frame(irreps, irrep_out, degree).shape[1]
                assert tree_count(irreps, irrep_out, degree) == trees, (irrep_out, degree)
