"""openmace.foundations: names → cache → download (a real HTTP server on 127.0.0.1), the record
of size and SHA-256, every failure path with its message, dtype defaults, DFT-D3.

No test reaches beyond 127.0.0.1 or writes outside ``tmp_path`` (``OPENMACE_CACHE`` points there).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from openmace import MACECalculator, save_model
from openmace import foundations as fm
from openmace.foundations import (
    FoundationModelError,
    cache_dir,
    mace_mp,
    mace_off,
    mace_omol,
    resolve,
)
from tests.helpers import make_model, molecule, triclinic_cell

MPA = "mace-mpa-0-medium.model"  # the published file name of mace_mp's default model
PAYLOAD = os.urandom(300_000)  # a look-alike: the download path never reads what it carries


class _Handler(BaseHTTPRequestHandler):
    """``/ok/NAME``: the file; ``/truncated/NAME``: half of it under the full length, then the
    connection closes; ``/html/NAME``: a web page; ``/slow/NAME``: no answer for 1 s."""

    files: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        _, mode, name = self.path.split("/", 2)
        body = self.files.get(name)
        if body is None or mode not in ("ok", "truncated", "html", "slow"):
            self.send_error(404, "Not Found")
            return
        if mode == "slow":
            time.sleep(1.0)
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if mode == "html" else "application/x-zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if mode == "truncated" else body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def server():
    """A file server on 127.0.0.1 at an ephemeral port: (base address, handler class, stop)."""
    handler = type("Handler", (_Handler,), {"files": {MPA: PAYLOAD}, "hits": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    stopped = []

    def stop() -> None:
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            thread.join()
            stopped.append(True)

    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler, stop
    stop()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test's cache is in tmp_path; no proxy between the client and 127.0.0.1."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(fm._ENV_URL, raising=False)
    monkeypatch.setenv("OPENMACE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _mirror(monkeypatch, base: str, mode: str = "ok") -> None:
    monkeypatch.setenv("OPENMACE_FOUNDATIONS_URL", f"{base}/{mode}/")


def _no_partial_file(cache: Path) -> None:
    assert not (cache / MPA).exists()
    assert not list(cache.glob("*.part")) and not list(cache.glob(".*.part"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    model = make_model(max_ell=2, correlation=2)  # small: built in 0.3 s
    return save_model(model, tmp_path_factory.mktemp("model") / "look-alike.safetensors")


class _Recorder:
    """Stands in for MACECalculator: records what the constructor was given."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


# --- download, record, verify ------------------------------------------------------------------


def test_first_download_records_size_and_sha256(server, cache, monkeypatch):
    base, handler, _ = server
    _mirror(monkeypatch, base)
    path = resolve("medium-mpa-0", "mp")
    assert path == cache / MPA and path.read_bytes() == PAYLOAD
    assert handler.hits == [f"/ok/{MPA}"]
    entry = json.loads((cache / fm.REGISTRY).read_text())["files"][MPA]
    assert entry["size"] == len(PAYLOAD)
    assert entry["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert entry["url"] == f"{base}/ok/{MPA}"
    assert sorted(p.name for p in cache.iterdir()) == sorted([".registry.lock", MPA, fm.REGISTRY])


def test_second_use_does_not_contact_the_server(server, monkeypatch):
    base, handler, stop = server
    _mirror(monkeypatch, base)
    first = resolve("medium-mpa-0", "mp")
    stop()
    assert resolve("medium-mpa-0", "mp") == first
    assert handler.hits == [f"/ok/{MPA}"]


@pytest.mark.parametrize("change", ["same size", "longer"])
def test_a_changed_cached_file_is_refused(server, cache, monkeypatch, change):
    base, _, _ = server
    _mirror(monkeypatch, base)
    path = resolve("medium-mpa-0", "mp")
    body = bytearray(PAYLOAD)
    body[1000] ^= 0xFF
    path.write_bytes(bytes(body) + (b"x" if change == "longer" else b""))
    with pytest.raises(FoundationModelError, match="changed since it was recorded") as err:
        resolve("medium-mpa-0", "mp")
    assert str(path) in str(err.value) and "delete" in str(err.value)
    assert err.value.model == "medium-mpa-0"


def test_a_mirror_serving_another_file_is_refused(server, cache, monkeypatch):
    """The record pins the file: deleted and downloaded again, it must be the same bytes."""
    base, handler, _ = server
    _mirror(monkeypatch, base)
    resolve("medium-mpa-0", "mp")
    (cache / MPA).unlink()
    handler.files[MPA] = PAYLOAD[::-1]
    with pytest.raises(FoundationModelError, match="differs from the one recorded"):
        resolve("medium-mpa-0", "mp")
    _no_partial_file(cache)
    handler.files[MPA] = PAYLOAD
    assert resolve("medium-mpa-0", "mp").read_bytes() == PAYLOAD


def test_a_file_placed_in_the_cache_by_hand_is_recorded(cache, caplog):
    cache.mkdir()
    (cache / MPA).write_bytes(PAYLOAD)
    assert resolve("medium-mpa-0", "mp") == cache / MPA  # no server: nothing is downloaded
    assert "no record" in caplog.text
    entry = json.loads((cache / fm.REGISTRY).read_text())["files"][MPA]
    assert entry["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()


# --- failure paths -----------------------------------------------------------------------------


def test_truncated_download_fails_and_leaves_no_file(server, cache, monkeypatch):
    base, _, _ = server
    _mirror(monkeypatch, base, "truncated")
    with pytest.raises(FoundationModelError, match="truncated download") as err:
        resolve("medium-mpa-0", "mp")
    assert f"{base}/truncated/{MPA}" in str(err.value)
    assert f"{len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes" in str(err.value)
    _no_partial_file(cache)
    assert not (cache / fm.REGISTRY).exists()  # nothing recorded


def test_server_down(server, cache, monkeypatch):
    base, _, stop = server
    stop()  # the port is closed now
    _mirror(monkeypatch, base)
    with pytest.raises(FoundationModelError, match="cannot reach the server") as err:
        resolve("medium-mpa-0", "mp")
    assert "medium-mpa-0" in str(err.value) and base in str(err.value)
    _no_partial_file(cache)


def test_http_error_status(server, cache, monkeypatch):
    base, _, _ = server
    monkeypatch.setenv("OPENMACE_FOUNDATIONS_URL", f"{base}/missing")
    with pytest.raises(FoundationModelError, match="HTTP 404"):
        resolve("medium-mpa-0", "mp")
    _no_partial_file(cache)


def test_a_web_page_is_not_a_model(server, cache, monkeypatch):
    base, _, _ = server
    _mirror(monkeypatch, base, "html")
    with pytest.raises(FoundationModelError, match="text/html"):
        resolve("medium-mpa-0", "mp")
    _no_partial_file(cache)


def test_a_silent_server_times_out(server, cache, monkeypatch):
    base, _, _ = server
    _mirror(monkeypatch, base, "slow")
    with pytest.raises(FoundationModelError, match="no answer from the server within 0.2 s"):
        resolve("medium-mpa-0", "mp", timeout=0.2)
    _no_partial_file(cache)


def test_unknown_name_lists_the_known_names():
    with pytest.raises(FoundationModelError, match="not a known mp model name") as err:
        resolve("medium-mpa-1", "mp")
    message = str(err.value)
    assert all(name in message for name in fm.URLS["mp"])
    assert "did you mean 'medium-mpa-0'" in message
    with pytest.raises(FoundationModelError, match="extra_large"):
        mace_omol("large")


def test_cache_not_writable(server, tmp_path, monkeypatch):
    base, _, _ = server
    _mirror(monkeypatch, base)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("OPENMACE_CACHE", str(blocker / "cache"))  # under a file: never writable
    with pytest.raises(FoundationModelError, match="not writable.*OPENMACE_CACHE"):
        resolve("medium-mpa-0", "mp")


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root writes to read-only folders"
)
def test_cache_read_only(server, cache, monkeypatch):
    base, _, _ = server
    _mirror(monkeypatch, base)
    cache.mkdir()
    cache.chmod(0o500)
    try:
        with pytest.raises(FoundationModelError, match="not writable"):
            resolve("medium-mpa-0", "mp")
    finally:
        cache.chmod(0o700)


def test_corrupt_registry_is_an_error(cache):
    cache.mkdir()
    (cache / MPA).write_bytes(PAYLOAD)
    (cache / fm.REGISTRY).write_text("{not json")
    with pytest.raises(FoundationModelError, match="registry.*unreadable"):
        resolve("medium-mpa-0", "mp")


# --- names, paths, cache directory --------------------------------------------------------------


def test_cache_directory(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("OPENMACE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "openmace"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "openmace"


def test_openmace_cache_is_where_downloads_go(server, tmp_path, monkeypatch):
    base, _, _ = server
    _mirror(monkeypatch, base)
    monkeypatch.setenv("OPENMACE_CACHE", str(tmp_path / "elsewhere"))
    assert resolve("medium-mpa-0", "mp") == tmp_path / "elsewhere" / MPA


def test_a_path_is_used_as_is(model_file, cache):
    assert resolve(model_file, "mp") == model_file
    assert resolve(str(model_file), "off") == model_file
    assert not cache.exists()
    with pytest.raises(FoundationModelError, match="no such file"):
        resolve(model_file.parent / "absent.model", "mp")
    with pytest.raises(FoundationModelError, match="not a file"):
        resolve(model_file.parent, "mp")


def test_an_address_is_downloaded_under_urls(server, cache):
    base, _, _ = server
    path = resolve(f"{base}/ok/{MPA}", "off")
    assert path.name == MPA and path.parent.parent == cache / "urls"
    assert path.read_bytes() == PAYLOAD


def test_mirror_replaces_everything_before_the_file_name(monkeypatch):
    assert fm.model_url("medium", "off").startswith("https://raw.githubusercontent.com/")
    monkeypatch.setenv("OPENMACE_FOUNDATIONS_URL", "http://mirror.example/models/")
    assert fm.model_url("mh-1", "mp") == "http://mirror.example/models/mace-mh-1.model"
    names = [url.rsplit("/", 1)[1] for family in fm.URLS.values() for url in family.values()]
    assert len(set(names)) == len(names)  # one cache, no two models share a file name


# --- calculators -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, dtype, head",
    [(mace_mp, "float32", None), (mace_off, "float64", None), (mace_omol, "float64", "omol")],
)
def test_dtype_and_head_defaults_per_family(build, dtype, head, model_file, monkeypatch):
    monkeypatch.setattr(fm, "MACECalculator", _Recorder)
    calc = build(model_file, device="cpu", skin=0.3)
    expected = {"model": model_file, "device": "cpu", "dtype": dtype, "skin": 0.3}
    assert calc.kwargs == (expected if head is None else {**expected, "head": head})
    assert build(model_file, head="h2").kwargs["head"] == "h2"
    with pytest.raises(TypeError, match="use dtype="):
        build(model_file, default_dtype="float64")


def test_default_model_names(server, monkeypatch):
    base, handler, _ = server
    _mirror(monkeypatch, base)
    monkeypatch.setattr(fm, "MACECalculator", _Recorder)
    assert mace_mp().kwargs["model"].name == MPA
    assert mace_mp(None).kwargs["model"].name == MPA
    for build, name in ((mace_off, "MACE-OFF23_medium.model"), (mace_omol, None)):
        name = name or fm.URLS["omol"]["extra_large"].rsplit("/", 1)[1]
        handler.files[name] = PAYLOAD
        assert build().kwargs["model"].name == name


def test_mace_mp_downloads_and_evaluates(server, model_file, monkeypatch):
    """End to end: a name, downloaded from the local server, becomes a working calculator."""
    base, handler, _ = server
    handler.files["look-alike.safetensors"] = model_file.read_bytes()
    monkeypatch.setitem(
        fm.URLS["mp"], "look-alike", "https://example.invalid/look-alike.safetensors"
    )
    _mirror(monkeypatch, base)
    calc = mace_mp("look-alike", dtype="float64")
    assert isinstance(calc, MACECalculator) and calc.dtype.is_floating_point
    atoms = triclinic_cell()
    atoms.calc = calc
    reference = MACECalculator(model=model_file, dtype="float64")
    assert atoms.get_potential_energy() == pytest.approx(
        reference.get_potential_energy(atoms), abs=1e-12
    )


def test_wrong_dtype_fails_before_downloading(server, monkeypatch):
    base, handler, _ = server
    _mirror(monkeypatch, base)
    with pytest.raises(ValueError, match="float32 or float64"):
        mace_mp(dtype="float16")
    assert handler.hits == []


def test_dispersion_without_torch_dftd_says_what_to_install(model_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_dftd", None)
    monkeypatch.setitem(sys.modules, "torch_dftd.torch_dftd3_calculator", None)
    with pytest.raises(ImportError, match=r'pip install "openmace\[d3\]"'):
        mace_mp(model_file, dispersion=True)


def test_dispersion_adds_d3(model_file):
    pytest.importorskip("torch_dftd")
    from ase.units import Bohr
    from torch_dftd.torch_dftd3_calculator import TorchDFTD3Calculator

    atoms = molecule()
    plain = mace_mp(model_file, dtype="float64")
    summed = mace_mp(model_file, dtype="float64", dispersion=True)
    d3 = TorchDFTD3Calculator(
        device="cpu", damping="bj", xc="pbe", cutoff=40 * Bohr, dtype=torch.float64
    )
    e_plain = plain.get_potential_energy(atoms)
    e_d3 = d3.get_potential_energy(atoms)
    assert e_d3 < -0.01  # dispersion binds
    assert summed.get_potential_energy(atoms) == pytest.approx(e_plain + e_d3, abs=1e-9)
    np.testing.assert_allclose(
        summed.get_forces(atoms), plain.get_forces(atoms) + d3.get_forces(atoms), atol=1e-9
    )


def test_mace_omol_downloads_a_mace_torch_file_and_matches_mace_torch(server, monkeypatch):
    """The published name of MACE-OMOL, served (as a mace-torch look-alike .model) by the local
    server: downloaded, read without running its code, converted, and equal to mace-torch's
    numbers with the charge and spin of each structure."""
    import lzma

    import ase.io

    folder = Path(__file__).parent / "fixtures" / "foundation" / "omol"
    base, handler, _ = server
    name = fm.URLS["omol"]["extra_large"].rsplit("/", 1)[1]
    handler.files[name] = lzma.decompress((folder / "model.model.xz").read_bytes())
    _mirror(monkeypatch, base)
    calc = mace_omol()
    assert calc.dtype == torch.float64
    reference = json.loads((folder / "reference.json").read_text())["heads"]["omol"]
    frames = ase.io.read(folder / "structures.xyz", index=":")
    for atoms, ref in zip(frames, reference["structures"]):
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(ref["energy"], abs=1e-9 * len(atoms))


# --- names for fine-tuning (openmace train --foundation-model) ----------------------------------


def test_resolve_any_takes_family_names_unique_names_and_paths(server, model_file, monkeypatch):
    base, handler, _ = server
    _mirror(monkeypatch, base)
    assert fm.resolve_any("medium-mpa-0").name == MPA  # a name only "mp" has
    assert fm.resolve_any("mp:medium-mpa-0").name == MPA
    assert fm.resolve_any(str(model_file)) == model_file
    with pytest.raises(FoundationModelError, match="several families: say mp:small or off:small"):
        fm.resolve_any("small")
    with pytest.raises(FoundationModelError, match="not a published model name.*mp:medium-mpa-0"):
        fm.resolve_any("no-such-model")


def test_train_fine_tunes_a_named_foundation(server, model_file, tmp_path, monkeypatch):
    """``openmace train --foundation-model NAME`` end to end: downloaded (local server), its
    SHA-256 recorded in the fine-tuned model's provenance."""
    from openmace import load_model
    from openmace.cli.main import main
    from tests.helpers import molecules, write_xyz

    base, handler, _ = server
    handler.files["look-alike.safetensors"] = model_file.read_bytes()
    address = "https://example.invalid/look-alike.safetensors"
    monkeypatch.setitem(fm.URLS["mp"], "look-alike", address)
    _mirror(monkeypatch, base)
    data = write_xyz(tmp_path / "data.xyz", molecules(8))
    work = tmp_path / "run"
    argv = ["train", "--foundation-model", "mp:look-alike", "--train-file", str(data)]
    argv += ["--epochs", "1", "--work-dir", str(work), "--quiet", "--valid-fraction", "0.25"]
    assert main(argv) == 0
    tuned = load_model(work / "model.safetensors")
    foundation = tuned.provenance["foundation"]
    assert foundation["name"] == "mp:look-alike"
    assert foundation["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert tuned.config.r_max == load_model(model_file).config.r_max
    config = json.loads((work / "model.config.json").read_text())
    assert config["lr"] == 1e-3 and config["e0s"] == "estimated"  # the fine-tuning defaults
