"""The safe reader of mace-torch ``.model`` files: same configuration and state dict as
mace-torch itself recovers, and hostile files refused without running anything.

The fixtures (tests/fixtures/mace_pickle, made by tests/fixtures/make_mace_pickle_fixtures.py
with mace-torch) hold each file, mace-torch's ``extract_config_mace_model`` of it and its
``state_dict()``. Hostile files are built here, zipped as ``torch.save`` zips them.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import lzma
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from openmace.io import mace_pickle
from openmace.io.mace_pickle import (
    Record,
    UnsafeModelFile,
    UnsupportedModel,
    load_records,
    read_mace_torch_model,
    state_dict_from_records,
)
from openmace.io.mace_torch import ConversionError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mace_pickle"
NAMES = sorted(p.name.split(".")[0] for p in FIXTURES.glob("*.expected.json"))


def fixture_file(name: str, folder: Path) -> Path:
    plain = FIXTURES / f"{name}.model"
    if plain.exists():
        return plain
    out = folder / f"{name}.model"
    out.write_bytes(lzma.decompress((FIXTURES / f"{name}.model.xz").read_bytes()))
    return out


def expected(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    info = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    state = load_safetensors(
        lzma.decompress((FIXTURES / f"{name}.state.safetensors.xz").read_bytes())
    )
    return info, state


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1)


def assert_same_state(ours: dict, theirs: dict, order: list[str]) -> None:
    assert list(ours) == order
    for key, value in theirs.items():
        mine = ours[key]
        assert mine.device.type == "cpu", key
        assert mine.dtype == value.dtype and mine.shape == value.shape, key
        assert torch.equal(bits(mine), bits(value)), key


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mace_pickle")
    return {name: fixture_file(name, folder) for name in NAMES}


def test_fixtures_present():
    assert len(NAMES) >= 6
    total = sum(f.stat().st_size for f in FIXTURES.iterdir())
    assert total < 1.5e6


@pytest.mark.parametrize("name", NAMES)
def test_same_config_and_state_as_mace_torch(name, files):
    info, state = expected(name)
    config, ours = read_mace_torch_model(files[name])
    assert config == info["config"]
    json.dumps(config)  # JSON-compatible
    assert_same_state(ours, state, info["state_dict_keys"])


def test_config_keys(files):
    config, _ = read_mace_torch_model(files["density_agnesi_zbl"])
    assert set(config) == {
        "model_class",
        "r_max",
        "num_bessel",
        "num_polynomial_cutoff",
        "max_ell",
        "interaction_cls",
        "interaction_cls_first",
        "num_interactions",
        "num_elements",
        "hidden_irreps",
        "edge_irreps",
        "MLP_irreps",
        "gate",
        "use_reduced_cg",
        "use_so3",
        "use_edge_irreps_first",
        "use_agnostic_product",
        "use_last_readout_only",
        "use_embedding_readout",
        "readout_cls",
        "atomic_energies",
        "avg_num_neighbors",
        "atomic_numbers",
        "correlation",
        "radial_type",
        "embedding_specs",
        "apply_cutoff",
        "radial_MLP",
        "pair_repulsion",
        "distance_transform",
        "atomic_inter_scale",
        "atomic_inter_shift",
        "heads",
        "keep_last_layer_irreps",
    }


def test_what_each_fixture_covers(files):
    """The options the fixtures were built for are seen (guards against a regenerated set)."""
    nl, _ = read_mace_torch_model(files["nonlinear_heads_embedding"])
    assert nl["heads"] == ["pt_head", "omol"] and nl["correlation"] == [3, 2, 2]
    assert nl["readout_cls"] == "NonLinearBiasReadoutBlock" and nl["keep_last_layer_irreps"]
    assert nl["embedding_specs"]["total_charge"]["num_classes"] == 11
    assert nl["apply_cutoff"] is False and nl["use_agnostic_product"] is True
    assert len(nl["atomic_energies"]) == 2 and isinstance(nl["atomic_inter_scale"], list)
    old, _ = read_mace_torch_model(files["mace_0_3_4"])
    assert old["heads"] == ["default"] and old["use_reduced_cg"] is False
    tanh, _ = read_mace_torch_model(files["tanh_last_readout_float32"])
    assert tanh["gate"] == "tanh"


# --- helpers to build archives ------------------------------------------------------------------


def torch_zip(
    path: Path,
    data_pkl: bytes,
    storages: dict[str, bytes] | None = None,
    prefix: str = "archive",
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, data in (storages or {}).items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", "3\n")
    return path


def rewrite_archive(src: Path, dst: Path, change: dict) -> Path:
    """Copy a zip, replacing (bytes) or dropping (None) the entries whose name ends as given."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            for suffix, new in change.items():
                if info.filename.endswith(suffix):
                    data = new
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def data_pickle(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


def replace_ops(data: bytes, change) -> bytes:
    """Rewrite a pickle opcode by opcode: change(name, arg) gives new bytes for that opcode, or
    None to keep it (strings inside strings, such as e3nn's blobs, are left alone)."""
    out, last = bytearray(), 0
    ops = list(pickletools.genops(data))
    for (op, arg, pos), (_, _, end) in zip(ops, ops[1:]):
        new = change(op.name, arg)
        if new is not None:
            out += data[last:pos] + new
            last = end
    return bytes(out + data[last:])


def replace_strings(data: bytes, predicate, new) -> bytes:
    """Replace each BINUNICODE string the predicate selects by new(old)."""

    def change(name, arg):
        if name == "BINUNICODE" and predicate(arg):
            text = new(arg).encode("utf-8", "surrogatepass")
            return b"X" + struct.pack("<I", len(text)) + text
        return None

    return replace_ops(data, change)


def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


PROTO, STOP, REDUCE, BUILD, NEWOBJ = b"\x80\x02", b".", b"R", b"b", b"\x81"


def tensor_ops(key: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    pid = tup(s("storage"), g("torch", "DoubleStorage"), s(key), s("cpu"), i(numel)) + b"Q"
    return (
        g("torch._utils", "_rebuild_tensor_v2")
        + tup(
            pid,
            i(offset),
            tup(*map(i, size)),
            tup(*map(i, stride)),
            b"\x89",
            g("collections", "OrderedDict") + b")" + REDUCE,
        )
        + REDUCE
    )


class Call:
    """An object that pickles as a call of ``fn(*args)`` (what a hostile file contains)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self, *args):  # lets a Call be the callable of another Call
        raise AssertionError("never called in the test")


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "code from the file ran"


@pytest.fixture
def no_code_loading(monkeypatch):
    """Loading TorchScript or unpickling with torch is a failure."""

    def refuse(*args, **kwargs):
        raise AssertionError("the reader must not load code")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch._C, "import_ir_module", refuse)
    monkeypatch.setattr(torch._C, "import_ir_module_from_buffer", refuse)


# --- no code is ever loaded ---------------------------------------------------------------------


def test_reading_never_loads_code(files, no_code_loading):
    for path in files.values():
        read_mace_torch_model(path)


def test_reader_imports_neither_mace_nor_e3nn(files):
    """In a fresh interpreter where mace, opt_einsum_fx, cuequivariance and every e3nn module
    not already imported by openmace's own modules cannot be imported, each fixture reads."""
    script = """
import importlib.abc, sys
import torch
def refuse(*args, **kwargs):
    raise AssertionError("the reader must not load code")
torch.jit.load = torch.load = torch._C.import_ir_module = refuse
import openmace.io.mace_pickle as reader
FAMILIES = ("mace", "e3nn", "opt_einsum_fx", "cuequivariance", "cuequivariance_torch")
before = {m for m in sys.modules if m.split(".")[0] in FAMILIES}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in FAMILIES:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
for path in sys.argv[1:]:
    reader.read_mace_torch_model(path)
after = {m for m in sys.modules if m.split(".")[0] in FAMILIES}
assert after == before, after - before
assert not any(m.split(".")[0] == "mace" for m in sys.modules)
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, files.values())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_reader_source_imports_neither_mace_nor_e3nn():
    tree = ast.parse(Path(mace_pickle.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [n for n in names if n.split(".")[0] in ("mace", "e3nn", "opt_einsum_fx")]


# --- files saved on a GPU -----------------------------------------------------------------------


def test_cuda_location_tags_load_on_cpu(files, tmp_path):
    name = "density_agnesi_zbl"
    data = data_pickle(files[name])
    patched = replace_strings(data, lambda t: t == "cpu", lambda t: "cuda:0")
    patched = replace_ops(  # the storage type names of files from older torch saved on a GPU
        patched,
        lambda op, arg: b"ctorch.cuda\nDoubleStorage\n" if arg == "torch DoubleStorage" else None,
    )
    # the location string is written once and memoised
    assert patched.count(b"X\x06\x00\x00\x00cuda:0") == 1
    assert b"ctorch.cuda\nDoubleStorage\n" in patched
    path = rewrite_archive(files[name], tmp_path / "cuda.model", {"/data.pkl": patched})
    info, state = expected(name)
    config, ours = read_mace_torch_model(path)
    assert config == info["config"]
    assert_same_state(ours, state, info["state_dict_keys"])


def test_big_endian_archive(tmp_path):
    values = torch.tensor([1.5, -2.25, 3.0e-7], dtype=torch.float64)
    path = tmp_path / "t.pt"
    torch.save({"t": values}, path)
    swapped = values.numpy().astype(">f8").tobytes()
    path = rewrite_archive(path, tmp_path / "big.pt", {"/byteorder": b"big", "/data/0": swapped})
    assert torch.equal(load_records(path).root["t"], values)


# --- unsupported models -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, name",
    [
        ("mace.modules.models", "AtomicDipolesMACE"),
        ("mace.modules.models", "AtomicDielectricMACE"),
        ("mace.modules.models", "EnergyDipolesMACE"),
        ("mace.modules.extensions", "MACELES"),
        ("mace.modules.extensions", "PolarMACE"),
        ("mace.modules.models", "FutureMACE"),
    ],
)
def test_unsupported_model_classes(tmp_path, module, name):
    body = PROTO + g(module, name) + b")" + NEWOBJ + b"}" + BUILD + STOP
    path = torch_zip(tmp_path / "m.model", body)
    with pytest.raises(UnsupportedModel, match=f"{module}.{name} is not supported.*ScaleShiftMACE"):
        read_mace_torch_model(path)


def test_a_checkpoint_is_not_a_model(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, path)
    with pytest.raises(UnsupportedModel, match="holds a dict, not a pickled mace-torch model"):
        read_mace_torch_model(path)


def test_graph_module_at_the_root_is_refused(tmp_path, marker):
    from torch.fx.graph_module import reduce_graph_module

    code = f"import os\nos.system('touch {marker}')\n"
    path = tmp_path / "fx.model"
    torch.save(Call(reduce_graph_module, {"_code": code}, code), path)
    with pytest.raises(
        UnsupportedModel, match="torch.fx.graph_module.GraphModule is not supported"
    ):
        read_mace_torch_model(path)
    root = load_records(path).root
    assert root.reduced_by == "torch.fx.graph_module.reduce_graph_module"
    assert f"touch {marker}" in root.source


# --- hostile files ------------------------------------------------------------------------------


def test_malicious_graph_module_source_is_never_run(files, tmp_path, marker, no_code_loading):
    """The GraphModules of mace's symmetric contractions carry Python source that torch.fx
    would exec: replaced by code writing the marker, the file still reads (as data)."""
    name = "density_agnesi_zbl"
    evil = f"import os\nos.system('touch {marker}')\nopen({str(marker)!r}, 'w')\n"
    data = data_pickle(files[name])
    patched = replace_strings(
        data, lambda t: t.startswith(("NoneType = ", "\n\n\ndef forward")), lambda t: evil
    )
    assert patched.count(b"os.system") > 2
    path = rewrite_archive(files[name], tmp_path / "evil_fx.model", {"/data.pkl": patched})
    info, state = expected(name)
    config, ours = read_mace_torch_model(path)
    assert config == info["config"]
    assert_same_state(ours, state, info["state_dict_keys"])
    graphs = []

    def walk(record):
        if isinstance(record, Record):
            if record.reduced_by:
                graphs.append(record)
            for child in record.children():
                walk(child)

    walk(load_records(path).root)
    assert graphs and all(evil in g.source for g in graphs)


def _codegen_blob(text: str) -> bool:
    return text.startswith("PK\x03\x04")


def test_malicious_torchscript_codegen_blob(files, tmp_path, marker, no_code_loading):
    """An e3nn codegen blob whose pickle calls os.system: refused, naming it and the blob."""
    evil = io.BytesIO()
    torch_zip_bytes = pickle.dumps(Call(os.system, f"touch {marker}"), protocol=2)
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("archive/data.pkl", torch_zip_bytes)
        zf.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
    blob = evil.getvalue().decode("latin1")
    data = data_pickle(files["density_agnesi_zbl"])
    patched = replace_strings(data, _codegen_blob, lambda t: blob)
    path = rewrite_archive(
        files["density_agnesi_zbl"], tmp_path / "ts.model", {"/data.pkl": patched}
    )
    with pytest.raises(
        UnsafeModelFile,
        match=r"ts.model \(codegen blob .*_compiled_main.*\): "
        r"refused global posix.system",
    ):
        read_mace_torch_model(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_valid_torchscript_with_hostile_code_is_read_as_data(
    files, tmp_path, marker, no_code_loading
):
    """A real TorchScript archive whose source is replaced by hostile Python: its buffers are
    read from its pickle, its source only scanned as text for the buffer names."""

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("_w3j_0_0_0", torch.full((1, 1, 1), 7.0, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self._w3j_0_0_0

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Holder()), buffer)
    evil = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(".py"):
                data += f"\nimport os\nos.system('touch {marker}')\n".encode()
            zout.writestr(info.filename, data)
    blob = evil.getvalue().decode("latin1")
    data = data_pickle(files["density_agnesi_zbl"])
    seen = []
    patched = replace_strings(
        data, lambda t: _codegen_blob(t) and not seen and not seen.append(t), lambda t: blob
    )
    path = rewrite_archive(
        files["density_agnesi_zbl"], tmp_path / "ts.model", {"/data.pkl": patched}
    )
    _, state = read_mace_torch_model(path)
    (key,) = [k for k in state if k.endswith("._w3j_0_0_0")]
    assert state[key].item() == 7.0


@pytest.mark.parametrize(
    "payload, refused",
    [
        (lambda m: Call(os.system, f"touch {m}"), "posix.system"),
        (lambda m: Call(builtins.eval, f"open({str(m)!r}, 'w')"), "builtins.eval"),
        (lambda m: Call(builtins.exec, f"open({str(m)!r}, 'w')"), "builtins.exec"),
        (lambda m: Call(subprocess.Popen, ["touch", str(m)]), "subprocess.Popen"),
        (lambda m: Call(builtins.__import__, "os"), "builtins.__import__"),
        (
            lambda m: Call(Call(getattr, Call(builtins.__import__, "os"), "system"), f"touch {m}"),
            "builtins.__import__",
        ),
        (lambda m: Call(Call(getattr, torch.nn.Module, "__init__"), 1), "builtins.getattr"),
        (
            lambda m: Call(Call(getattr, torch._C._VariableFunctionsClass, "load"), str(m)),
            "builtins.getattr",
        ),
        (lambda m: Call(torch.load, str(m)), "torch.serialization.load"),
        (lambda m: Call(pickle.loads, b"cos\nsystem\n."), "pickle.loads"),
    ],
)
def test_globals_outside_the_allowlist(tmp_path, marker, payload, refused):
    path = tmp_path / "evil.model"
    torch.save({"model": payload(marker)}, path)
    with pytest.raises(UnsafeModelFile, match=f"evil.model: .*{refused}"):
        read_mace_torch_model(path)


@pytest.mark.slow
def test_hostile_payloads_are_live(tmp_path):
    """Control: the os.system file of the test above, loaded the ordinary way in a separate
    interpreter, does write the marker (so its absence elsewhere means nothing ran)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.model"
    torch.save({"model": Call(os.system, f"touch {marker}")}, path)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_model_is_not_a_pickled_model(tmp_path):
    path = tmp_path / "lammps.model"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UnsupportedModel, match="a TorchScript \\(compiled\\) model"):
        read_mace_torch_model(path)


@pytest.mark.parametrize(
    "body, message",
    [
        # a class called instead of rebuilt from its state
        (
            g("mace.modules.models", "ScaleShiftMACE") + tup(i(1)) + REDUCE,
            "calls mace.modules.models.ScaleShiftMACE with arguments",
        ),
        (
            g("torch.nn.modules.linear", "Linear") + tup(i(3), i(4)) + REDUCE,
            "calls torch.nn.modules.linear.Linear",
        ),
        (g("torch.nn.functional", "silu") + tup(i(3)) + REDUCE, "calls torch.nn.functional.silu"),
        # allowed callables with unexpected arguments
        (
            g("collections", "OrderedDict") + tup(s("abc")) + REDUCE,
            "collections.OrderedDict called with unexpected arguments",
        ),
        (g("_codecs", "encode") + tup(s("x"), s("rot13")) + REDUCE, "_codecs.encode called"),
        (g("builtins", "set") + tup(s("abc")) + REDUCE, "builtins.set called"),
        (
            g("torch._utils", "_rebuild_tensor_v2")
            + tup(s("x"), i(0), b")", b")", b"\x89", b"N")
            + REDUCE,
            "_rebuild_tensor_v2 called with unexpected arguments",
        ),
        (
            g("torch._utils", "_rebuild_parameter") + tup(s("x"), b"\x88", b"N") + REDUCE,
            "_rebuild_parameter called",
        ),
        (
            g("torch.fx.graph_module", "reduce_graph_module") + tup(s("import os")) + REDUCE,
            "reduce_graph_module called with unexpected arguments",
        ),
        (g("torch", "device") + tup(s("cuda"), s("zero")) + REDUCE, "torch.device called"),
        # dotted or dunder names reach attributes of allowed classes
        (g("torch.nn.modules.module", "Module.__init__"), "not a plain module and name"),
        (g("mace.modules.models", "__builtins__"), "a dunder name"),
        # opcode tricks
        (b"}}" + BUILD, "BUILD on a dict"),
        (tensor_ops("0", 2, 0, (2,), (1,)) + b"}" + BUILD, "BUILD on a Tensor"),
        (b"(" * 5000, "nested deeper than 1000"),
        (b"cos\nsystem\n", "refused global os.system"),
        (b"(S'touch x'\nios\nsystem\n", "opcode b'S'"),
        (b"(X\x01\x00\x00\x00xios\nsystem\n", "opcode b'i'"),
        (b"\x82\x01", "opcode b'\\\\x82'"),
        (b"P0\n", "opcode b'P'"),
        (g("mace.modules.blocks", "X") + b")" + b"\x92", "opcode b'\\\\x92'"),
        (b"N)" + REDUCE, "the pickle calls a NoneType"),
        (b"NN" + REDUCE, "REDUCE with arguments that are not a tuple"),
        (b"h\x07", "malformed pickle"),
        (REDUCE, "malformed pickle"),
    ],
)
def test_refused_pickles(tmp_path, marker, body, message):
    path = torch_zip(tmp_path / "bad.model", PROTO + body + STOP, {"0": b"\0" * 16})
    with pytest.raises(UnsafeModelFile, match=f"bad.model: .*{message}"):
        read_mace_torch_model(path)


def test_tensor_views_are_checked(tmp_path):
    ok = torch_zip(
        tmp_path / "ok.pt",
        PROTO + tensor_ops("0", 4, 1, (3,), (1,)) + STOP,
        {"0": struct.pack("<4d", 1, 2, 3, 4)},
    )
    assert load_records(ok).root.tolist() == [2.0, 3.0, 4.0]
    beyond = torch_zip(
        tmp_path / "beyond.pt",
        PROTO + tensor_ops("0", 4, 2, (3,), (1,)) + STOP,
        {"0": struct.pack("<4d", 1, 2, 3, 4)},
    )
    with pytest.raises(UnsafeModelFile, match="reaches beyond its storage of 4 elements"):
        load_records(beyond)
    short = torch_zip(
        tmp_path / "short.pt",
        PROTO + tensor_ops("0", 400, 0, (3,), (1,)) + STOP,
        {"0": struct.pack("<4d", 1, 2, 3, 4)},
    )
    with pytest.raises(UnsafeModelFile, match="holds 32 bytes where 400 .* need 3200"):
        load_records(short)
    missing = torch_zip(tmp_path / "missing.pt", PROTO + tensor_ops("7", 4, 0, (3,), (1,)) + STOP)
    with pytest.raises(ConversionError, match="missing storage data/7"):
        load_records(missing)
    traversal = torch_zip(tmp_path / "dots.pt", PROTO + tensor_ops("../x", 4, 0, (3,), (1,)) + STOP)
    with pytest.raises(UnsafeModelFile, match="unexpected persistent id"):
        load_records(traversal)


def test_zip_bomb_declared_size(files, tmp_path):
    """A data.pkl whose central-directory entry claims 2 GiB: refused before reading."""
    raw = bytearray(files["mace_one_layer"].read_bytes())
    with zipfile.ZipFile(files["mace_one_layer"]) as zf:
        name = next(i.filename for i in zf.infolist() if i.filename.endswith("/data.pkl"))
    pos = raw.find(b"PK\x01\x02")  # central directory entries: the name starts at byte 46
    while raw[pos + 46 : pos + 46 + len(name)] != name.encode():
        pos = raw.find(b"PK\x01\x02", pos + 4)
    raw[pos + 24 : pos + 28] = struct.pack("<I", 0x7FFF_FFFF)  # uncompressed size
    path = tmp_path / "bomb.model"
    path.write_bytes(bytes(raw))
    with pytest.raises(
        UnsafeModelFile, match=r"bomb.model: the archive claims 2048 MiB .* zip bomb"
    ):
        read_mace_torch_model(path)


def test_zip_bomb_deflated(tmp_path):
    """64 MiB of zeros deflated to ~64 kB as a storage entry."""
    path = torch_zip(
        tmp_path / "bomb.model",
        PROTO + tensor_ops("0", 8 << 20, 0, (1,), (1,)) + STOP,
        {"0": bytes(64 << 20)},
        compression=zipfile.ZIP_DEFLATED,
    )
    assert path.stat().st_size < 1 << 20
    with pytest.raises(UnsafeModelFile, match="the archive claims 64 MiB .* zip bomb"):
        read_mace_torch_model(path)


def test_truncated_archive(files, tmp_path):
    data = files["mace_one_layer"].read_bytes()
    path = tmp_path / "cut.model"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="cut.model: truncated or corrupt zip archive"):
        read_mace_torch_model(path)


def test_corrupt_entry(files, tmp_path):
    raw = bytearray(files["mace_one_layer"].read_bytes())
    pos = raw.find(b"NoneType = type(None)")
    raw[pos : pos + 8] = b"XXXXXXXX"  # the stored CRC no longer matches
    path = tmp_path / "crc.model"
    path.write_bytes(bytes(raw))
    with pytest.raises(ConversionError, match="crc.model: truncated or corrupt archive entry"):
        read_mace_torch_model(path)


def test_missing_storage(files, tmp_path):
    path = rewrite_archive(files["mace_one_layer"], tmp_path / "gap.model", {"/data/3": None})
    with pytest.raises(ConversionError, match="gap.model: missing storage data/3"):
        read_mace_torch_model(path)


def test_legacy_format_refused(tmp_path):
    path = tmp_path / "legacy.model"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ConversionError, match="legacy.model: a legacy .* not supported"):
        read_mace_torch_model(path)


def test_not_an_archive(tmp_path):
    path = tmp_path / "text.model"
    path.write_text("hello")
    with pytest.raises(ConversionError, match="not a torch zip archive"):
        read_mace_torch_model(path)
    with pytest.raises(ConversionError, match="no such file"):
        read_mace_torch_model(tmp_path / "absent.model")


def test_cyclic_and_deep_module_trees(tmp_path):
    module = g("torch.nn.modules.container", "ModuleList") + b")" + NEWOBJ
    # a module whose _modules holds itself: BINPUT 0, BUILD {"_modules": {"a": BINGET 0}}
    cyclic = module + b"q\x00" + b"}" + s("_modules") + b"}" + s("a") + b"h\x00" + b"ss" + BUILD
    path = torch_zip(tmp_path / "cycle.model", PROTO + cyclic + STOP)
    with pytest.raises(UnsafeModelFile, match="contains itself"):
        state_dict_from_records(load_records(path))
    deep = module + b"}" + BUILD
    for _ in range(300):
        deep = module + b"}" + s("_modules") + b"}" + s("a") + deep + b"ss" + BUILD
    path = torch_zip(tmp_path / "deep.model", PROTO + deep + STOP)
    with pytest.raises(UnsafeModelFile, match="nested deeper than 200"):
        state_dict_from_records(load_records(path))


def test_shared_modules_cannot_blow_up_the_walk(tmp_path, monkeypatch):
    """40 levels, each module holding the next one twice: 2**40 paths, stopped by a budget."""
    monkeypatch.setattr(mace_pickle, "MAX_VISITS", 10_000)
    module = g("torch.nn.modules.container", "ModuleList") + b")" + NEWOBJ
    body = module + b"}" + BUILD + b"q\x00"
    for k in range(1, 41):
        prev = b"h" + bytes([k - 1])
        children = b"}" + s("a") + prev + b"s" + s("b") + prev + b"s"
        body += module + b"}" + s("_modules") + children + b"s" + BUILD + b"q" + bytes([k])
    path = torch_zip(tmp_path / "dag.model", PROTO + body + STOP)
    with pytest.raises(UnsafeModelFile, match="more than 10000 objects to visit"):
        state_dict_from_records(load_records(path))


def test_expanded_views_are_bounded(tmp_path):
    path = torch_zip(
        tmp_path / "wide.pt",
        PROTO + tensor_ops("0", 4, 0, (10**9,), (0,)) + STOP,
        {"0": struct.pack("<4d", 1, 2, 3, 4)},
    )
    with pytest.raises(UnsafeModelFile, match="1000000000 elements viewing a storage of 4"):
        load_records(path)


def test_non_persistent_buffers_and_parameters(tmp_path):
    """Module.state_dict rules: parameters, then persistent buffers, then children; None
    entries and non-persistent buffers left out."""

    model = torch.nn.Module()  # torch.nn classes only: others are outside the allowlist
    model.register_buffer("kept", torch.ones(2))
    model.register_buffer("dropped", torch.zeros(2), persistent=False)
    model.register_buffer("empty", None)
    model.weight = torch.nn.Parameter(torch.full((3,), 2.0))
    model.register_parameter("bias", None)
    model.inner = torch.nn.Linear(2, 1)
    path = tmp_path / "block.pt"
    torch.save(model, path)
    ours = state_dict_from_records(load_records(path))
    assert list(ours) == list(model.state_dict())
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())


def test_numpy_values_are_inert(tmp_path):
    import numpy as np

    path = tmp_path / "np.pt"
    torch.save({"x": np.float64(2.5), "a": np.arange(6, dtype=np.int32).reshape(2, 3)}, path)
    root = load_records(path).root
    assert root["x"] == 2.5
    assert root["a"].value.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_fx_codegen_blob_with_legacy_storage(files):
    """e3nn >= 0.5.2 pickles its GraphModules with plain pickle: storages are nested legacy
    torch bytes (torch.storage._load_from_bytes), read here without torch.load."""
    records = load_records(files["e3nn_0_5_9_fx"])
    assert any(
        isinstance(v, tuple) and v[0] == "fx"
        for r in _records(records.root)
        for v in (r.state.get("__codegen__") or {}).values()
    )


def _records(record):
    if isinstance(record, Record):
        yield record
        for child in record.children():
            yield from _records(child)


def test_ordered_dict_forms():
    context = mace_pickle._Context("x", 0)
    assert mace_pickle._ordered_dict(([("a", 1)],), context) == OrderedDict(a=1)
    with pytest.raises(UnsafeModelFile):
        mace_pickle._ordered_dict(([("a",)],), context)
