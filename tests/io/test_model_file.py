from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from openmace import load_model, save_model
from openmace.data.graph import batch_atoms
from openmace.io.model_file import ModelFileError, read_header
from tests.conftest import make_model, molecule, triclinic_cell


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
    torch.save({"x": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError):
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
