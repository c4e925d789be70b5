from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from openmace import load_model, save_model
from openmace.data.graph import batch_atoms
from openmace.io.errors import ConversionError
from openmace.io.model_file import ModelFileError, read_header
from tests.helpers import make_model, molecule, triclinic_cell


def predict(model, dtype=torch.float64):
    graph = batch_atoms([molecule(), triclinic_cell()], model.config.r_max)
    return model(graph, compute_stress=True)


def test_round_trip_is_bit_identical(tmp_path):
    model = make_model(pair_repulsion=True, hidden_irreps="4x0e+4x0o+4x1o+4x1e")
    path = save_model(model, tmp_path / "m.safetensors", provenance={"data": "x.xyz"})
    loaded = load_model(path)
    a, b = predict(model), predict(loaded)
    for key in ("energy", "forces", "stress"):
        assert torch.equal(a[key], b[key])
    assert read_header(path)["provenance"] == {"data": "x.xyz"}
    assert loaded.config == model.config


def test_loads_in_the_other_dtype(tmp_path):
    path = save_model(make_model(), tmp_path / "m.safetensors")
    model32 = load_model(path, dtype=torch.float32)
    assert model32.atomic_energies.dtype == torch.float32
    assert torch.allclose(
        predict(model32)["energy"].double(), predict(make_model())["energy"], rtol=1e-5
    )


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickle_is_refused_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(bad)
    # a PyTorch zip goes to the safe mace-torch reader, which refuses the global by name
    torch.save({"x": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="refused global"):
        load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_truncated_and_garbage_files(tmp_path):
    path = save_model(make_model(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    for name, content in [
        ("short", data[:5]),
        ("truncated", data[: len(data) // 2]),
        ("garbage", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}!!!!!!"),
    ]:
        target = tmp_path / f"{name}.safetensors"
        target.write_bytes(content)
        with pytest.raises(ModelFileError, match=str(target)):
            load_model(target)


def _rewrite(tmp_path, model, **metadata_changes):
    path = save_model(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    metadata.update(metadata_changes)
    out = tmp_path / "changed.safetensors"
    save_file(tensors, str(out), metadata=metadata)
    return out, tensors, metadata


def test_newer_format_and_bad_config_are_refused(tmp_path):
    model = make_model()
    path, _, metadata = _rewrite(tmp_path, model, format_version="99")
    with pytest.raises(ModelFileError, match="newer"):
        load_model(path)
    config = json.loads(metadata["config"])
    config["evil"] = "__import__('os')"
    path, _, _ = _rewrite(tmp_path, model, format_version="1", config=json.dumps(config))
    with pytest.raises(ModelFileError, match="unknown field"):
        load_model(path)


def test_wrong_tensor_shape_is_refused(tmp_path):
    model = make_model()
    path = save_model(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors["embedding"] = torch.zeros(3, 3)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ModelFileError, match="embedding"):
        load_model(path)


def test_version_1_files_still_load_to_the_same_model(tmp_path):
    """Format 1 stored contraction weights as basis coefficients (w_basis = frame @ w_trees)."""
    from openmace.o3.coupling import tree_frame

    model = make_model()
    path, tensors, metadata = _rewrite(tmp_path, model)
    shrunk = 0
    for name in list(tensors):
        if ".contraction.weights." in name:
            layer, key = int(name.split(".")[1]), name.rsplit(".", 1)[1]
            contraction = model.products[layer].contraction
            j, nu = (int(x) for x in key.split("_"))
            frame = tree_frame(contraction.irreps_in, contraction.irreps_out[j], nu)
            tensors[name] = torch.einsum("kt,etc->ekc", frame, tensors[name].double()).contiguous()
            shrunk += tensors[name].shape[1] < model.state_dict()[name].shape[1]
    assert shrunk > 0
    old = tmp_path / "v1.safetensors"
    tensors = {_v2_name(k): v for k, v in tensors.items()}  # names before version 3
    save_file(tensors, str(old), metadata={**metadata, "format_version": "1"})
    a, b = predict(model), predict(load_model(old))
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-12)


def _v2_name(name: str) -> str:
    return name.replace(".messages.radial_mlp.", ".radial_mlp.")


def test_version_2_files_load_to_the_same_model(tmp_path):
    """Format 2 named the radial MLP interactions.N.radial_mlp and had no ZBL constants."""
    model = make_model(pair_repulsion=True)
    path, tensors, metadata = _rewrite(tmp_path, model)
    old_tensors = {_v2_name(k): v for k, v in tensors.items() if ".a_" not in k}
    assert set(old_tensors) != set(tensors)
    old = tmp_path / "v2.safetensors"
    save_file(old_tensors, str(old), metadata={**metadata, "format_version": "2"})
    a, b = predict(model), predict(load_model(old))
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_converted_zbl_constants_survive_save_and_load(tmp_path, parity_dirs):
    """mace-torch keeps ZBL's a_exp and a_prefactor as buffers, in the model's dtype (float32
    models: 0.30000001, not 0.3) and trainable in principle: a converted model keeps the file's
    values through save and load. The mixed-parity ZBL fixture with such values."""
    import shutil

    from safetensors.torch import load_file
    from safetensors.torch import save_file as save_tensors

    from openmace.io.mace_torch import load_mace_torch

    folder = tmp_path / "zbl"
    shutil.copytree(parity_dirs["p4_mixed_parity_zbl"], folder)
    state = load_file(str(folder / "weights.safetensors"))
    values = {"a_exp": float(torch.tensor(0.3, dtype=torch.float32)), "a_prefactor": 0.51}
    for name, value in values.items():
        state[f"pair_repulsion_fn.{name}"] = torch.tensor(value, dtype=torch.float64)
    save_tensors(state, str(folder / "weights.safetensors"))
    converted = load_mace_torch(folder)
    for name, value in values.items():
        assert float(getattr(converted.pair_repulsion, name)) == value
    loaded = load_model(save_model(converted, tmp_path / "zbl.safetensors"))
    for name in values:
        assert torch.equal(
            getattr(loaded.pair_repulsion, name), getattr(converted.pair_repulsion, name)
        )
    graph = batch_atoms([molecule(), molecule(seed=1)], converted.config.r_max)
    a, b = converted(graph), loaded(graph)
    for key in ("energy", "forces"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def _fail_if_called(*args, **kwargs):
    raise AssertionError("a hostile file reached a decompressor or unpickler")


def test_zip_bomb_and_compressed_files_are_refused_unopened(tmp_path, monkeypatch):
    import gzip
    import lzma
    import zipfile
    import zlib

    bomb = tmp_path / "bomb.model"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data/0", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(64):  # 64 MiB of zeros in a file of ~64 KiB
                member.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    model_bytes = save_model(make_model(), tmp_path / "m.safetensors").read_bytes()
    gz = tmp_path / "m.safetensors.gz"
    gz.write_bytes(gzip.compress(model_bytes))
    xz = tmp_path / "m.safetensors.xz"
    xz.write_bytes(lzma.compress(model_bytes))
    monkeypatch.setattr(zipfile.ZipFile, "open", _fail_if_called)
    monkeypatch.setattr(zlib, "decompressobj", _fail_if_called)
    monkeypatch.setattr(torch, "load", _fail_if_called)
    monkeypatch.setattr(pickle, "loads", _fail_if_called)
    # a zip goes to the safe mace-torch reader, which judges it from the central directory
    with pytest.raises(ConversionError, match="zip bomb"):
        load_model(bomb)
    for path in (gz, xz):
        with pytest.raises(ModelFileError, match=str(path)):
            load_model(path)


def _raw_safetensors(path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def test_header_claims_are_checked_before_allocation(tmp_path):
    model = make_model()
    _, tensors, metadata = _rewrite(tmp_path, model)
    # a header size beyond the file
    huge_header = tmp_path / "huge_header.safetensors"
    huge_header.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    # one tensor claiming 2^40 float64 numbers backed by 16 bytes
    huge_tensor = tmp_path / "huge_tensor.safetensors"
    entry = {"dtype": "F64", "shape": [1 << 40], "data_offsets": [0, 8 << 40]}
    _raw_safetensors(huge_tensor, {"__metadata__": metadata, "embedding": entry}, bytes(16))
    # a config with 10^6 channels (terabytes of weights) on top of small tensors
    config = json.loads(metadata["config"])
    config["hidden_irreps"] = "1000000x0e"
    huge_config, _, _ = _rewrite(tmp_path, model, config=json.dumps(config))
    # a config with 10^6 layers
    config = json.loads(metadata["config"])
    config.update(num_interactions=1_000_000, correlation=2)
    many_layers = tmp_path / "many_layers.safetensors"
    save_file(tensors, str(many_layers), metadata={**metadata, "config": json.dumps(config)})
    for path, message in [
        (huge_header, "header size"),
        (huge_tensor, "corrupt or truncated"),
        (huge_config, "at least"),
        (many_layers, "at least"),
    ]:
        with pytest.raises(ModelFileError, match=message):
            load_model(path)


def test_wrong_tensor_dtype_is_refused(tmp_path):
    path, tensors, metadata = _rewrite(tmp_path, make_model())
    tensors["embedding"] = tensors["embedding"].to(torch.int64)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ModelFileError, match="embedding has dtype I64"):
        load_model(path)
