"""The long-running commands tell glibc's malloc to keep freed memory (openmace/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "from openmace.allocator import keep_freed_memory; print(keep_freed_memory())"


def _run(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("OPENMACE_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["OPENMACE_KEEP_FREED_MEMORY"] = env_value
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_malloc_settings_are_applied_on_linux_and_can_be_switched_off():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert _run(None) == "True"
    assert _run("0") == "False"
