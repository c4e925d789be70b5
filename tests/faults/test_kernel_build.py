"""The compiled kernels are optional: a failed build falls back to PyTorch operations with one
warning, and a build lock left by a killed build does not hang the next process."""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch

from openmace import kernels
from openmace.accel import for_inference
from openmace.data.graph import batch_atoms
from tests.helpers import compiler_available, make_model, molecule


def test_a_failed_build_falls_back_to_pytorch_operations(monkeypatch, caplog):
    model = make_model()
    graph = batch_atoms([molecule()], model.config.r_max)
    reference = for_inference(model, "pytorch")(graph)

    def broken_build():
        raise RuntimeError("Error building extension 'openmace_kernels': no compiler")

    monkeypatch.setenv("OPENMACE_KERNELS", "1")
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setattr(kernels, "_build", broken_build)
    with caplog.at_level(logging.WARNING, logger="openmace.kernels"):
        first = for_inference(model)(graph)
        second = for_inference(model)(graph)
    warnings = [r for r in caplog.records if "compiled kernels unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "no compiler" in warnings[0].getMessage()
    for out in (first, second):
        torch.testing.assert_close(out["forces"], reference["forces"], rtol=0, atol=0)


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, fresh = tmp_path / "stale_build", tmp_path / "fresh_build"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "lock").touch()
    old = time.time() - kernels.STALE_LOCK_SECONDS - 60
    os.utime(stale / "lock", (old, old))
    kernels._remove_stale_lock(kernels._build_directory("stale_build"))
    kernels._remove_stale_lock(kernels._build_directory("fresh_build"))
    assert not (stale / "lock").exists()
    assert (fresh / "lock").exists()


def test_compiled_kernels_refuse_edges_outside_the_atoms():
    """The kernels read raw memory, so they check the indices first (a clear error, no crash)."""
    if not compiler_available():
        pytest.skip("no C++ compiler or ninja")
    compiled = kernels.cpu_kernels()
    block = make_model().interactions[1]
    tp, c = block.messages.tensor_product, block.channels
    n, edges = 3, 4
    x = torch.zeros(n, sum(ir.dim for ir in tp.irreps_in), c)
    sh = torch.zeros(edges, tp.cg_matrix.shape[0])
    w = torch.zeros(edges, tp.num_paths, c)
    pooled = torch.zeros(1, n, tp.dim_mid, c)  # one scatter copy (one part)
    good = torch.tensor([0, 1, 2, 0])
    compiled.pooled_forward(pooled, x, sh, w, good, good, 0, 0, *tp.sparse_cg())
    bad = torch.tensor([0, 1, 3, 0])
    with pytest.raises(RuntimeError, match="to an atom outside the receivers 0..2"):
        compiled.pooled_forward(pooled, x, sh, w, good, bad, 0, 0, *tp.sparse_cg())
    with pytest.raises(RuntimeError, match="from an atom outside 0..2"):
        compiled.pooled_forward(pooled, x, sh, w, bad, good, 0, 0, *tp.sparse_cg())
    # rows for the first 2 atoms only (a domain's own atoms): an edge into atom 2 is refused
    own = torch.zeros(1, 2, tp.dim_mid, c)
    with pytest.raises(RuntimeError, match="to an atom outside the receivers 0..1"):
        compiled.pooled_forward(own, x, sh, w, good, good, 0, 0, *tp.sparse_cg())
    # pairs beyond the edges: the reverse of a pair would be read past the end
    with pytest.raises(RuntimeError, match="radial rows out of range"):
        compiled.pooled_forward(pooled, x, sh, w, good, good, 0, 1, *tp.sparse_cg())
