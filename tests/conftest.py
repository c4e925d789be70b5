"""Shared pytest fixtures: float64 by default, and the parity fixtures decompressed (helpers that
are not fixtures are in tests/helpers.py)."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest
import torch

from tests.helpers import PARITY, PARITY_NAMES


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def parity_dirs(tmp_path_factory) -> dict[str, Path]:
    """Parity fixtures with their weights decompressed into a temporary folder."""
    out = {}
    root = tmp_path_factory.mktemp("parity")
    for name in PARITY_NAMES:
        target = root / name
        target.mkdir()
        src = PARITY / name
        for f in ("config.json", "reference.json", "structures.xyz"):
            (target / f).write_bytes((src / f).read_bytes())
        (target / "weights.safetensors").write_bytes(
            lzma.decompress((src / "weights.safetensors.xz").read_bytes())
        )
        out[name] = target
    return out
