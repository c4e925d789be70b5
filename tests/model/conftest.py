"""The two CPU implementations of the inference paths (edge messages, symmetric contraction):
compiled kernels and PyTorch operations."""

from __future__ import annotations

import pytest

from openmace import kernels
from tests.helpers import compiler_available


@pytest.fixture(params=["compiled", "pytorch"])
def cpu_implementation(request, monkeypatch) -> str:
    """Runs a test with the compiled kernels and again with PyTorch operations. Where a
    C++ compiler and ninja exist, the kernels must build (a silent fallback would test the
    PyTorch path twice)."""
    if request.param == "pytorch":
        monkeypatch.setenv("OPENMACE_KERNELS", "0")
    else:
        monkeypatch.setenv("OPENMACE_KERNELS", "1")
        if not compiler_available():
            pytest.skip("no C++ compiler or ninja: the compiled kernels cannot be built here")
        assert kernels.cpu_kernels() is not None, "the compiled edge kernels did not build"
    return request.param
