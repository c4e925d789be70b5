"""One validation of structures on every entry point (issue 14, classes 1, 4 and the structure
half of 6): absurd coordinates, flat and degenerate cells with 1, 2 or 3 periodic directions,
atoms on top of each other (also across periodic images), NaN/Inf and neighbour lists too large
for memory are refused with one clear error by the reader, the ASE calculator and
``openmace eval``; nothing reaches the neighbour-list library that could kill the process
(SIGFPE) or hang it, and valid but extreme structures keep working with the right pairs.

The cases are generated (seeded), many more than the issue's examples; a hang fails the run
(``faulthandler`` ends it with a traceback) instead of stalling it.
"""

from __future__ import annotations

import faulthandler
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import ase
import ase.build
import numpy as np
import pytest
from ase.io import write
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import openmace.data.graph as graph_module
from openmace import MACECalculator, save_model
from openmace.cli.main import main
from openmace.data.configurations import Configuration, read_configurations
from openmace.data.dataset import GraphDataset
from openmace.data.errors import DataError
from openmace.data.geometry import MAX_COORDINATE, MIN_CELL_HEIGHT, periodic_heights
from openmace.data.graph import neighbour_list
from openmace.data.validation import MIN_DISTANCE, validate_structure
from tests.helpers import make_model, molecule, triclinic_cell

ROOT = Path(__file__).resolve().parents[2]
PBC_PATTERNS = [tuple(bool(int(c)) for c in f"{k:03b}") for k in range(1, 8)]  # 7 patterns


@pytest.fixture(autouse=True)
def no_hang():
    """A hang (the nearly flat cells used to loop for hours) ends the run with a traceback."""
    faulthandler.dump_traceback_later(300, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ---------------------------------------------------------------- the generated structures


def base(kind: str, seed: int = 0) -> ase.Atoms:
    """A valid structure of elements the test model knows: a molecule, a periodic cell, a slab
    (periodic in x, y) or a wire (periodic in z)."""
    if kind == "molecule":
        return molecule(seed)
    if kind == "cell":
        return triclinic_cell(seed)
    atoms = ase.build.bulk("Cu", cubic=True) * (2, 2, 2)
    atoms.rattle(0.03, seed=seed)
    if kind == "slab":
        atoms.center(vacuum=4.0, axis=2)
        atoms.pbc = (True, True, False)
    else:
        atoms.center(vacuum=4.0, axis=(0, 1))
        atoms.pbc = (False, False, True)
    return atoms


KINDS = ["molecule", "cell", "slab", "wire"]


def absurd_coordinate_cases() -> list[tuple[str, ase.Atoms]]:
    """Finite coordinates from just beyond the bound to 1e300 Å, any sign, atom and axis."""
    rng = np.random.default_rng(1)
    cases = []
    for kind in KINDS:
        for exponent in (5.3, 6, 9, 15, 50, 100, 200, 300):
            atoms = base(kind, seed=int(rng.integers(100)))
            atom, axis = int(rng.integers(len(atoms))), int(rng.integers(3))
            atoms.positions[atom, axis] = rng.choice([-1, 1]) * 10.0**exponent
            cases.append((f"{kind}-1e{exponent:g}", atoms))
    return cases


def non_finite_cases() -> list[tuple[str, ase.Atoms]]:
    rng = np.random.default_rng(2)
    cases = []
    for kind in KINDS:
        for value in (np.nan, np.inf, -np.inf):
            atoms = base(kind)
            atom, axis = int(rng.integers(len(atoms))), int(rng.integers(3))
            atoms.positions[atom, axis] = value
            cases.append((f"{kind}-position-{value}", atoms))
    return cases


def _unit_orthogonal(rng: np.random.Generator, *vectors: np.ndarray) -> np.ndarray:
    v = rng.normal(size=3)
    for w in vectors:
        w = w / np.linalg.norm(w)
        v -= (v @ w) * w
    return v / np.linalg.norm(v)


def flat_cell_cases() -> list[tuple[str, ase.Atoms]]:
    """For each of the 7 periodicity patterns: a periodic cell vector sheared into (nearly) the
    span of the other periodic vectors, so that the periodic sub-cell's height along it is
    ``h`` while every vector keeps a normal length (the volume test alone misses these)."""
    rng = np.random.default_rng(3)
    cases = []
    for pbc in PBC_PATTERNS:
        periodic = [k for k in range(3) if pbc[k]]
        for h in (0.0, 1e-9, 1e-6, 1e-3, 0.05, 0.3):
            cell = np.diag(rng.uniform(4.0, 7.0, 3)) + rng.normal(0, 0.5, (3, 3))
            k = int(rng.choice(periodic))
            others = [cell[m] for m in periodic if m != k]
            if len(others) == 0:  # one periodic direction: its length is the height
                cell[k] = h * _unit_orthogonal(rng)
            else:
                span = sum(rng.uniform(0.5, 1.0) * o for o in others)
                cell[k] = span + h * _unit_orthogonal(rng, *others)
            atoms = ase.Atoms(
                "CuCuOH",
                positions=rng.uniform(0, 1, (4, 3)) + np.arange(4)[:, None] * 1.5,
                cell=cell,
                pbc=pbc,
            )
            cases.append((f"pbc{''.join('TF'[not p] for p in pbc)}-h{h:g}", atoms))
    return cases


def coincident_cases() -> list[tuple[str, ase.Atoms]]:
    """Two atoms closer than 0.1 Å: in molecules, and across a periodic boundary (the pair is
    close only through the periodic image) for every periodicity pattern."""
    rng = np.random.default_rng(4)
    cases = []
    for m in range(8):
        atoms = molecule(m)
        i = int(rng.integers(len(atoms)))
        offset = rng.uniform(0, 0.099) * _unit_orthogonal(rng)
        atoms += ase.Atoms("H", positions=[atoms.positions[i] + offset])
        cases.append((f"molecule-{m}", atoms))
    for pbc in PBC_PATTERNS:
        axis = int(rng.choice([k for k in range(3) if pbc[k]]))
        cell = np.diag(rng.uniform(5.0, 8.0, 3))
        frac = rng.uniform(0.2, 0.8, (3, 3))
        frac[0, axis], frac[1, axis] = 1e-3, 1 - 1e-3  # near opposite faces
        frac[1, [a for a in range(3) if a != axis]] = frac[0, [a for a in range(3) if a != axis]]
        atoms = ase.Atoms("CuOH", scaled_positions=frac, cell=cell, pbc=pbc)
        cases.append((f"image-pbc{''.join('TF'[not p] for p in pbc)}", atoms))
    return cases


CASES = {
    "absurd coordinate": (absurd_coordinate_cases(), rf"beyond ±{MAX_COORDINATE:g} Å"),
    "non-finite": (non_finite_cases(), "non-finite position"),
    "flat cell": (flat_cell_cases(), r"\(nearly\) flat|zero-length|zero volume"),
    "coincident": (coincident_cases(), f"closer than {MIN_DISTANCE} Å"),
}
ALL = [
    pytest.param(atoms, problem, id=f"{name}:{case}")
    for name, (cases, problem) in CASES.items()
    for case, atoms in cases
]
EVAL = ALL[::3]  # through the whole command: every third case (the reader is the same code)


def _write(path: Path, atoms_list: list[ase.Atoms]) -> Path:
    write(path, atoms_list, format="extxyz")
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return save_model(make_model(), tmp_path_factory.mktemp("model") / "m.safetensors")


@pytest.fixture(scope="module")
def calculator(model_path) -> MACECalculator:
    return MACECalculator(model=model_path)


# ---------------------------------------------------------------- reader, calculator, eval


@pytest.mark.parametrize("atoms,problem", ALL)
def test_reader_names_file_structure_and_problem(tmp_path, atoms, problem):
    path = _write(tmp_path / "bad.xyz", [base("molecule"), atoms])
    with pytest.raises(DataError, match=problem) as info:
        read_configurations(path)
    assert info.value.source == str(path) and info.value.index == 1
    assert str(info.value).startswith(f"{path}: structure 1: ")


@pytest.mark.parametrize("atoms,problem", ALL)
def test_calculator_refuses_instead_of_returning_nan_or_crashing(calculator, atoms, problem):
    atoms = atoms.copy()
    atoms.calc = calculator
    with pytest.raises(DataError, match=problem) as info:
        atoms.get_potential_energy()
    assert str(info.value).startswith("atoms: ")
    with pytest.raises(DataError):  # no stale result from an earlier structure either
        atoms.get_forces()


@pytest.mark.parametrize("atoms,problem", EVAL)
def test_eval_exits_2_with_one_line(tmp_path, capsys, model_path, atoms, problem):
    configs = _write(tmp_path / "in.xyz", [base("cell"), atoms])
    out = tmp_path / "out.xyz"
    code = main(["eval", "--model", str(model_path), "--configs", str(configs)]
                + ["--output", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"openmace eval: error: {configs}: structure 1: ")
    assert re.search(problem, err)
    assert not out.exists()


def test_the_calculator_recovers_after_a_refused_structure(calculator):
    atoms = molecule()
    atoms.calc = calculator
    good = atoms.get_potential_energy()
    atoms.positions[0, 0] = np.nan
    with pytest.raises(DataError, match="atom 0 has a non-finite position"):
        atoms.get_potential_energy()
    atoms.positions[0, 0] = molecule().positions[0, 0]
    assert atoms.get_potential_energy() == pytest.approx(good, abs=1e-10)


def test_the_calculator_validates_every_step_without_extra_neighbour_lists(monkeypatch):
    """Validation before every evaluation reuses the calculator's skin list: a short MD-like
    trajectory (small moves) builds one neighbour list, not one per step, and still catches
    two atoms that come closer than 0.1 Å without any rebuild."""
    counts: Counter = Counter()
    real = graph_module.NeighborList

    class Counting(real):  # type: ignore[misc, valid-type]
        def compute(self, *args, **kwargs):
            counts["builds"] += 1
            return super().compute(*args, **kwargs)

    monkeypatch.setattr(graph_module, "NeighborList", Counting)
    atoms = base("cell", seed=5)
    atoms += ase.Atoms("H", positions=[atoms.positions[0] + [0.3, 0, 0]])
    atoms.calc = MACECalculator(model=make_model())
    rng = np.random.default_rng(0)
    for _ in range(10):
        atoms.positions += rng.normal(0, 0.002, atoms.positions.shape)
        assert np.isfinite(atoms.get_forces()).all()
    atoms.positions[-1] = atoms.positions[0] + [0.3 - 0.11, 0, 0]
    atoms.positions[0] += [0.11, 0, 0]  # each moved 0.11 Å: the skin list (0.5 Å) still holds
    with pytest.raises(DataError, match=r"atoms 0 and 8 are 0.08 Å apart, closer than 0.1 Å"):
        atoms.get_forces()
    assert counts["builds"] == 1


# ---------------------------------------------------------------- neighbour lists too large


@pytest.fixture
def small_memory(monkeypatch):
    monkeypatch.setenv("OPENMACE_MEMORY_LIMIT", str(10**8))  # bytes


def copper(repeat: int) -> ase.Atoms:
    atoms = ase.build.bulk("Cu", cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.02, seed=repeat)
    return atoms


LARGE_R_MAX = [
    pytest.param(structure, r_max, id=f"{name}-r{r_max:g}")
    for name, structure in [
        ("cu108", copper(3)),
        ("cu256", copper(4)),
        ("slab", ase.build.fcc111("Cu", (6, 6, 6), vacuum=6.0, periodic=True)),
    ]
    for r_max in (40.0, 60.0, 120.0, 1e3)
]


@pytest.mark.parametrize("atoms,r_max", LARGE_R_MAX)
def test_huge_r_max_is_refused_with_the_numbers_before_the_list(atoms, r_max, small_memory):
    pattern = rf"r_max {r_max:g} Å would give about [0-9.e+]+ neighbour pairs .*GiB.*--r-max"
    with pytest.raises(DataError, match=pattern):
        validate_structure(
            atoms.positions, atoms.numbers, atoms.cell[:], atoms.pbc,
            source="memory", index=3, r_max=r_max,
        )  # fmt: skip
    with pytest.raises(ValueError, match="would give about .* neighbour pairs"):
        neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, r_max)


def test_eval_with_a_huge_r_max_model_names_structure_and_r_max(tmp_path, capsys, small_memory):
    model = save_model(make_model(r_max=40.0), tmp_path / "r40.safetensors")
    configs = _write(tmp_path / "cu.xyz", [copper(3)])
    code = main(["eval", "--model", str(model), "--configs", str(configs)]
                + ["--output", str(tmp_path / "out.xyz"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{configs}: structure 0: neighbour-list cutoff 40 Å would give about" in err
    assert "lower r_max (--r-max)" in err


def test_calculator_with_a_huge_r_max_refuses_before_the_list(small_memory):
    atoms = copper(3)
    atoms.calc = MACECalculator(model=make_model(r_max=40.0))
    with pytest.raises(DataError, match=r"atoms: neighbour-list cutoff 40.5 Å would give"):
        atoms.get_potential_energy()


def test_a_training_set_whose_lists_would_not_fit_is_refused_early(small_memory, monkeypatch):
    """Each structure's list fits, the whole set's would not (``train --r-max 20`` on bulk
    copper): refused after the first structure, not after memory ran out."""
    built = Counter()
    real = graph_module.build_graph
    monkeypatch.setattr(
        "openmace.data.dataset.build_graph",
        lambda *a: built.update(["graph"]) or real(*a),
    )
    atoms = copper(3)
    configs = [
        Configuration(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc, index=k)
        for k in range(12)
    ]
    with pytest.raises(ValueError, match=r"r_max 20 Å would give about .* 11 structures still"):
        GraphDataset(configs, 20.0)
    assert built["graph"] == 1


@pytest.mark.parametrize("r_max", [float("nan"), float("inf"), -1.0, 0.0])
def test_non_finite_or_non_positive_r_max(r_max):
    atoms = molecule()
    with pytest.raises(DataError, match="positive finite length"):
        validate_structure(
            atoms.positions, atoms.numbers, atoms.cell[:], atoms.pbc,
            source="memory", index=0, r_max=r_max,
        )  # fmt: skip


# ---------------------------------------------------------------- valid but extreme geometry


def extreme_valid_cases() -> list[tuple[str, ase.Atoms]]:
    """Valid structures the neighbour-list library used to crash on (SIGFPE: its cell grid
    degenerates for long thin or wide flat shapes) or to get wrong (atoms far outside a
    periodic cell)."""
    rng = np.random.default_rng(6)
    cases = []
    for far in (5.5e4, 7e4, 9.9e4):  # a molecule and one far atom along a line
        atoms = ase.Atoms("OHH", positions=[[-far, 0, 0], [0.96 - far, 0, 1e-5], [far, 0, 0]])
        cases.append((f"line-{far:g}", atoms))
    for extent in (1e4, 9e4):  # three far-apart atoms in a plane
        atoms = ase.Atoms("CCC", positions=[[0, 0, 0], [extent, 0, 0], [0, extent, 0]])
        cases.append((f"plane-{extent:g}", atoms))
    for pbc in PBC_PATTERNS:  # far from the origin, atoms scattered over periodic images
        atoms = base("cell", seed=int(rng.integers(100)))
        atoms.pbc = pbc
        images = rng.integers(-500, 500, (len(atoms), 3)) * np.array(pbc)
        atoms.positions += rng.choice([-1, 1], 3) * rng.uniform(1e3, 9e4, 3) + images @ atoms.cell
        cases.append((f"far-pbc{''.join('TF'[not p] for p in pbc)}", atoms))
    return cases


@pytest.mark.parametrize("atoms", [pytest.param(a, id=name) for name, a in extreme_valid_cases()])
def test_valid_extreme_structures_are_read_and_get_the_right_pairs(tmp_path, atoms):
    path = _write(tmp_path / "ok.xyz", [atoms])
    (config,) = read_configurations(path)
    assert np.allclose(config.positions, atoms.positions)
    for cutoff in (MIN_DISTANCE, 3.0):
        assert pair_set(atoms, cutoff) == reference_pairs(atoms, cutoff)


def pair_set(atoms: ase.Atoms, cutoff: float) -> set:
    i, j, s = neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
    return set(zip(i.tolist(), j.tolist(), map(tuple, s.astype(int).tolist())))


def reference_pairs(atoms: ase.Atoms, cutoff: float) -> set:
    """ASE's neighbour list (pure numpy), on positions wrapped into the cell along periodic
    directions (its own binning degenerates on atoms 1e4 Å outside), shifts unwrapped."""
    pbc = atoms.pbc
    if not pbc.any():
        d = atoms.positions[None] - atoms.positions[:, None]
        i, j = np.nonzero(
            (np.einsum("ijk,ijk->ij", d, d) < cutoff**2) & ~np.eye(len(atoms), dtype=bool)
        )
        return {(a, b, (0, 0, 0)) for a, b in zip(i.tolist(), j.tolist())}
    frac = np.linalg.solve(atoms.cell[:].T, atoms.positions.T).T
    n = np.where(pbc, np.floor(frac), 0).astype(int)
    wrapped = atoms.copy()
    wrapped.positions = atoms.positions - n @ atoms.cell[:]
    i, j, s = ase_neighbor_list("ijS", wrapped, cutoff)
    s = s - n[j] + n[i]
    return set(zip(i.tolist(), j.tolist(), map(tuple, s.tolist())))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    pbc=st.sampled_from([(False, False, False), *PBC_PATTERNS]),
    n=st.integers(1, 12),
    cutoff=st.floats(0.1, 6.0),
    spread=st.sampled_from([1.0, 30.0, 3e3]),
)
def test_neighbour_list_equals_a_reference_on_random_structures(seed, pbc, n, cutoff, spread):
    """Pairs and shifts of the guarded search equal a reference on random cells (heights at
    least the minimum), periodicity, cutoffs and atoms inside and far outside the cell."""
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(2.0, 6.0, 3)) + rng.normal(0, 0.8, (3, 3))
    if min(periodic_heights(cell, np.array(pbc)), default=1.0) < MIN_CELL_HEIGHT:
        cell = np.diag(rng.uniform(2.0, 6.0, 3))
    positions = rng.uniform(0, 4.0, (n, 3)) + rng.normal(0, 1, (n, 1)) * rng.normal(0, spread, 3)
    atoms = ase.Atoms(f"H{n}", positions=positions, cell=cell, pbc=pbc)
    assert pair_set(atoms, cutoff) == reference_pairs(atoms, cutoff)


# ---------------------------------------------------------------- the process survives

SURVIVORS = """
import numpy as np, ase
from openmace import MACECalculator
from openmace.data.configurations import read_configurations
from tests.helpers import make_model
calc = MACECalculator(model=make_model())

def attempt(name, atoms):
    atoms.calc = calc
    try:
        atoms.get_potential_energy()
        print(name, "energy", flush=True)
    except ValueError as err:
        print(name, "refused:", err, flush=True)

flat = ase.Atoms("CuCuCuCuCuCuCuCuO", positions=np.random.default_rng(0).uniform(0, 5, (9, 3)),
                 cell=[[5, 0, 0], [0, 5, 0], [2.5, 2.5, 4.1e-8]], pbc=True)
attempt("nearly-flat", flat)
parallel = ase.Atoms("CuO", positions=[[0, 0, 0], [1.5, 1, 1]],
                     cell=[[3, 0, 0], [6, 0, 0], [0, 0, 0]], pbc=[True, True, False])
attempt("parallel-periodic-vectors", parallel)
far = ase.Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [0, 1e200, 0]])
attempt("molecule-1e200", far)
line = ase.Atoms("OHH", positions=[[-7e4, 0, 0], [0.96 - 7e4, 0, 0], [7e4, 0, 0]])
ase.io.write("line.xyz", line)
print("line", len(read_configurations("line.xyz")), flush=True)
"""


def test_the_process_survives_what_used_to_kill_or_hang_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SURVIVORS)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("nearly-flat refused: atoms: periodic cell is (nearly) flat")
    assert lines[1].startswith("parallel-periodic-vectors refused: atoms: periodic cell is")
    assert lines[2].startswith("molecule-1e200 refused: atoms: atom 2 has coordinate y = 1e+200")
    assert lines[3] == "line 1"


def test_eval_process_survives_an_absurd_coordinate(tmp_path, model_path):
    configs = _write(tmp_path / "in.xyz", [ase.Atoms("OH", positions=[[0, 0, 0], [1e200, 0, 0]])])
    done = subprocess.run(
        [sys.executable, "-m", "openmace.cli.main", "eval", "--model", str(model_path),
         "--configs", str(configs), "--output", str(tmp_path / "out.xyz")],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (
        f"openmace eval: error: {configs}: structure 0: atom 1 has coordinate x = 1e+200 Å, "
        f"beyond ±{MAX_COORDINATE:g} Å (a unit or format error?)"
    )
