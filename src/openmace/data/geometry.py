"""What a structure's geometry must satisfy before any neighbour search, and the search frame.

The neighbour-list library (vesin) kills the process with a floating-point exception (SIGFPE)
when its cell grid degenerates (a finite but absurd coordinate such as 1e200 Å, a very long and
thin molecule, parallel periodic vectors), and loops for hours when a periodic cell is nearly
flat. Everything here is plain numpy and raises :class:`ValueError` naming the problem; the
callers add the file and structure (:func:`openmace.data.validation.validate_structure`).

Limits (documented in ``docs/robustness.md``):

- every coordinate within ±``MAX_COORDINATE`` (1e5 Å) of the origin, finite;
- a finite cell; periodic cell vectors no longer than ``MAX_CELL_LENGTH`` (1e6 Å);
- every height of the periodic sub-cell (distance between opposite faces: volume / face area
  for three periodic directions, area / edge for two, the length for one) at least
  ``MIN_CELL_HEIGHT`` (0.5 Å);
- an estimated neighbour list that fits in memory (:func:`estimate_neighbour_pairs`: atoms ×
  (4/3 π cutoff³) × number density, ``BYTES_PER_PAIR`` bytes per directed pair, compared with
  ``OPENMACE_MEMORY_LIMIT`` or the memory the system reports available).

:func:`search_frame` then hands the library only well-conditioned problems: every direction
periodic (a non-periodic direction gets a box vector orthogonal to the periodic ones, as long
as the structure plus 1.5 × the cutoff, so no pair crosses it), every atom wrapped into the
box (the caller corrects the shifts), and empty gaps wider than 1.5 × the cutoff along
non-periodic directions shortened to that (pairs across such a gap are farther apart than the
cutoff either way).
:func:`check_search_grid` computes the library's cell grid and refuses one it cannot handle.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from openmace.memory import ENVIRONMENT_VARIABLE, available_bytes, memory_limit

MAX_COORDINATE = 1e5  # Å: farther from the origin is a unit or format error
MAX_CELL_LENGTH = 1e6  # Å: longest periodic cell vector
MIN_CELL_HEIGHT = 0.5  # Å: thinnest periodic sub-cell (distance between opposite faces)
BYTES_PER_PAIR = 128  # bytes per directed neighbour pair while the list is built (~100 measured)
ALWAYS_FITS = 256 << 20  # neighbour lists estimated below this are not checked against memory
GAP_FACTOR = 1.5  # gaps along non-periodic directions are shortened to this × cutoff
VESIN_MAX_CELLS = 1e5  # the library's cap on its cell grid (cpu_cell_list.cpp)
MAX_SEARCH_VISITS = 2e8  # cell visits of one search (each costs a few ns even when empty)


class Frame(NamedTuple):
    """A search problem with every direction periodic (:func:`search_frame`)."""

    box: np.ndarray  # [3, 3] rows: the periodic cell vectors, elsewhere orthogonal padding
    points: np.ndarray  # [n, 3] positions, gaps shortened, wrapped into the box
    offsets: np.ndarray  # [n, 3] int64: positions' = points + offsets @ box
    volume: float  # periodic sub-cell × occupied extent of the non-periodic directions, Å³


def _cross(a: list[float], b: list[float]) -> list[float]:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _dot(a: list[float], b: list[float]) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _norm(a: list[float]) -> float:
    return math.sqrt(_dot(a, a))


def heights(box: np.ndarray) -> list[float]:
    """Distances between opposite faces of the parallelepiped spanned by the rows of ``box``
    (0 for a flat one)."""
    a, b, c = np.asarray(box, dtype=np.float64).tolist()
    faces = [_cross(b, c), _cross(c, a), _cross(a, b)]
    volume = abs(_dot(a, faces[0]))
    return [volume / _norm(f) if _norm(f) > 0 else 0.0 for f in faces]


def periodic_heights(cell: np.ndarray, pbc: np.ndarray) -> list[float]:
    """Heights of the periodic sub-cell along each periodic direction, in cell-row order
    (three directions: volume / face area; two: area / other edge; one: the length)."""
    rows = [r for r, p in zip(np.asarray(cell, dtype=np.float64).tolist(), pbc) if p]
    if len(rows) == 3:
        return heights(np.array(rows))
    if len(rows) == 2:
        area = _norm(_cross(rows[0], rows[1]))
        return [area / _norm(r) if _norm(r) > 0 else 0.0 for r in rows[::-1]]
    return [_norm(r) for r in rows]


def _sub_cell_measure(rows: list[list[float]]) -> float:
    """Volume, area or length of the periodic sub-cell spanned by ``rows`` (1 for none)."""
    if len(rows) == 3:
        return abs(_dot(rows[0], _cross(rows[1], rows[2])))
    if len(rows) == 2:
        return _norm(_cross(rows[0], rows[1]))
    if len(rows) == 1:
        return _norm(rows[0])
    return 1.0


def check_geometry(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> None:
    """Raise :class:`ValueError` naming the first problem: a non-finite or absurd coordinate, a
    non-finite cell, a periodic cell vector of zero or absurd length, or a periodic sub-cell
    thinner than ``MIN_CELL_HEIGHT``."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions have shape {positions.shape}, expected (n_atoms, 3)")
    largest = float(np.abs(positions).max(initial=0.0))
    if not largest <= MAX_COORDINATE:  # also NaN
        finite = np.isfinite(positions)
        if not finite.all():
            bad = int(np.argwhere(~finite)[0][0])
            raise ValueError(f"atom {bad} has a non-finite position")
        atom, axis = (int(k) for k in np.argwhere(np.abs(positions) > MAX_COORDINATE)[0])
        raise ValueError(
            f"atom {atom} has coordinate {'xyz'[axis]} = {positions[atom, axis]:.4g} Å, beyond "
            f"±{MAX_COORDINATE:g} Å (a unit or format error?)"
        )
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell has shape {cell.shape}, expected (3, 3)")
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    with np.errstate(over="ignore", invalid="ignore"):
        lengths = np.linalg.norm(cell, axis=1)
    if not np.isfinite(cell[pbc]).all() or (lengths[pbc] > MAX_CELL_LENGTH).any():
        raise ValueError(
            f"periodic cell vector lengths {lengths[pbc].round(3).tolist()} Å: not finite or "
            f"longer than {MAX_CELL_LENGTH:g} Å (set pbc False along directions that are not "
            "periodic)"
        )
    if not np.isfinite(cell).all():
        raise ValueError("cell has non-finite values")
    if not pbc.any():
        return
    if (lengths[pbc] < 1e-6).any():
        raise ValueError("periodic direction with a zero-length cell vector")
    if pbc.all() and abs(np.linalg.det(cell)) < 1e-6:
        raise ValueError("periodic cell has zero volume")
    h = periodic_heights(cell, pbc)
    if min(h) < MIN_CELL_HEIGHT:
        k = int(np.argmin(h))
        row = int(np.flatnonzero(pbc)[k])
        raise ValueError(
            f"periodic cell is (nearly) flat: its height along cell vector {row} (the distance "
            f"between opposite faces of the periodic cell) is {h[k]:.3g} Å, below "
            f"{MIN_CELL_HEIGHT:g} Å; check the cell and pbc (a valid but skewed lattice can be "
            "reduced with ase.build.niggli_reduce)"
        )


def check_cutoff(cutoff: float) -> float:
    """The cutoff as a float; :class:`ValueError` unless finite and positive."""
    try:
        value = float(cutoff)
    except (TypeError, ValueError) as err:
        raise ValueError(f"neighbour-list cutoff {cutoff!r} is not a number") from err
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"neighbour-list cutoff must be a positive finite length, not {value}")
    return value


def _complement(rows: list[list[float]]) -> list[list[float]]:
    """Unit vectors orthogonal to the periodic ``rows`` and to each other, one per
    non-periodic direction (the Cartesian axes when nothing is periodic)."""
    if len(rows) == 0:
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    if len(rows) == 2:
        normal = _cross(rows[0], rows[1])
        return [[x / _norm(normal) for x in normal]]
    if len(rows) == 1:
        a = [x / _norm(rows[0]) for x in rows[0]]
        axis = [0.0, 0.0, 0.0]
        axis[min(range(3), key=lambda k: abs(a[k]))] = 1.0
        u = _cross(a, axis)
        u = [x / _norm(u) for x in u]
        return [u, _cross(a, u)]
    return []


def _compressed(t: np.ndarray, gap: float) -> np.ndarray:
    """Coordinates along one direction with every empty gap wider than ``gap`` shortened to
    ``gap`` (differences within the remaining clusters are unchanged)."""
    if len(t) < 2 or float(t.max() - t.min()) <= gap:
        return t
    order = np.argsort(t, kind="stable")
    gaps = np.diff(t[order])
    removed = np.where(gaps > gap, gaps - gap, 0.0)
    if not removed.any():
        return t
    out = np.empty_like(t)
    out[order] = t[order] - np.concatenate([[0.0], np.cumsum(removed)])
    return out


def search_frame(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> Frame:
    """The neighbour search as a problem with every direction periodic (module docstring).
    A pair ``i, j`` found with shift ``S`` among ``points`` in ``box`` has the shift
    ``S - offsets[j] + offsets[i]`` among the original positions; a shift along a non-periodic
    direction means the pair is not a pair."""
    positions = np.asarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    rows = np.asarray(cell, dtype=np.float64).tolist()
    periodic_rows = [r for r, p in zip(rows, pbc) if p]
    volume = _sub_cell_measure(periodic_rows)
    points = positions
    for row, u in zip(np.flatnonzero(~pbc), _complement(periodic_rows)):
        t = points @ np.array(u)
        t_new = _compressed(t, GAP_FACTOR * cutoff)
        low, extent = float(t_new.min()), float(t_new.max() - t_new.min())
        points = points + ((t_new - low + 0.5 * cutoff) - t)[:, None] * np.array(u)
        rows[row] = [x * (extent + GAP_FACTOR * cutoff) for x in u]
        volume *= max(extent, cutoff)
    box = np.array(rows)
    faces = [_cross(rows[1], rows[2]), _cross(rows[2], rows[0]), _cross(rows[0], rows[1])]
    dual = np.array(faces) / _dot(rows[0], faces[0])  # rows: the reciprocal vectors
    offsets = np.floor(points @ dual.T).astype(np.int64)
    offsets[:, ~pbc] = 0  # inside the box already, up to rounding
    if offsets.any():
        points = points - offsets @ box
    return Frame(box, points, offsets, volume)


def pairs_from_density(n_atoms: int, volume: float, periodic: bool, cutoff: float) -> float:
    """Directed pairs within ``cutoff`` for ``n_atoms`` spread over ``volume``: atoms × (4/3 π
    cutoff³) × number density, without periodicity at most every other atom."""
    per_atom = n_atoms / volume * (4.0 / 3.0) * math.pi * cutoff**3
    if not periodic:
        per_atom = min(per_atom, n_atoms - 1)
    return n_atoms * per_atom


def estimate_neighbour_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> float:
    """Directed neighbour pairs within ``cutoff`` to expect (:func:`pairs_from_density`; the
    density from the periodic sub-cell times the occupied extent along the non-periodic
    directions, empty gaps wider than 1.5 × the cutoff left out, at least the cutoff). A rough
    estimate, for refusing lists that cannot fit, not a bound. Check the geometry first."""
    frame = search_frame(positions, cell, pbc, cutoff)
    return pairs_from_density(len(positions), frame.volume, bool(np.any(pbc)), cutoff)


def _memory_limit() -> tuple[int | None, str]:
    """Bytes a neighbour list may take, and where that number comes from (the memory policy of
    :mod:`openmace.memory`: ``OPENMACE_MEMORY_LIMIT``, else MemAvailable)."""
    limit = memory_limit()
    if limit is not None:
        return limit, f"allowed by {ENVIRONMENT_VARIABLE}"
    return available_bytes(), "available"


def check_pair_memory(
    pairs: float,
    cutoff: float,
    what: str,
    name: str = "neighbour-list cutoff",
    advice: str = "lower r_max (--r-max)",
) -> None:
    """:class:`ValueError` with the numbers and ``advice`` when a list of ``pairs`` directed
    pairs (``BYTES_PER_PAIR`` each) within ``cutoff`` for ``what`` (``"64 atoms"``) would not
    fit in ``OPENMACE_MEMORY_LIMIT`` bytes or the available memory."""
    need = pairs * BYTES_PER_PAIR
    if need < ALWAYS_FITS:
        return
    have, where = _memory_limit()
    if have is not None and need > have:
        raise ValueError(
            f"{name} {cutoff:g} Å would give about {pairs:.3g} neighbour pairs for {what} "
            f"({need / 2**30:.1f} GiB; {have / 2**30:.1f} GiB {where}): {advice}"
        )


def check_remaining_pairs(
    pairs_so_far: int, atoms_so_far: int, atoms_left: int, structures_left: int, cutoff: float
) -> None:
    """While the neighbour lists of many structures are built one by one (a training set):
    refuse when the ones still to build, at the pairs per atom so far, would not fit in the
    memory left (:func:`check_pair_memory`)."""
    if structures_left > 0 and atoms_so_far > 0:
        remaining = pairs_so_far / atoms_so_far * atoms_left
        what = f"the {structures_left} structures still to build ({atoms_left} atoms)"
        check_pair_memory(remaining, cutoff, what, name="r_max")


def check_search_grid(box: np.ndarray, cutoff: float) -> None:
    """Refuse a search the neighbour-list library cannot do: its cell grid (computed here as
    the library computes it, conservatively) would have an empty direction, which it turns
    into a division by zero, or the search would visit more than ``MAX_SEARCH_VISITS`` cells."""
    h = heights(box)
    n = [max(math.trunc(x / cutoff), 1) for x in h]
    if n[0] * n[1] * n[2] > VESIN_MAX_CELLS:  # the library rescales, keeping the ratios
        r01, r12 = n[0] / n[1], n[1] / n[2]
        shrink = 1.0 - 1e-9  # a lower bound, whatever the rounding of cbrt and trunc
        n2 = math.trunc(np.cbrt(VESIN_MAX_CELLS / (r01 * r12 * r12)) * shrink)
        n1 = math.trunc(r12 * n2 * shrink)
        n0 = math.trunc(r01 * n1 * shrink)
        if min(n0, n1, n2) < 1:
            raise ValueError(
                f"the neighbour search cannot handle this shape: heights "
                f"{[round(x, 3) for x in h]} Å with cutoff {cutoff:g} Å are too different "
                "(a very thin periodic cell around a very wide structure); use a supercell "
                "along the thin direction"
            )
        m2 = math.trunc(np.cbrt(VESIN_MAX_CELLS / (r01 * r12 * r12)))
        n = [max(math.trunc(r01 * math.trunc(r12 * m2)), 1), max(math.trunc(r12 * m2), 1), m2]
    visits = 1.0
    for cells, height in zip(n, h):
        visits *= cells * (2 * max(math.ceil(cutoff * cells / height), 1) + 1)
    if visits > MAX_SEARCH_VISITS:
        raise ValueError(
            f"the neighbour search with cutoff {cutoff:g} Å in a cell with heights "
            f"{[round(x, 3) for x in h]} Å would visit {visits:.3g} cells: lower the cutoff "
            "(r_max) or check the cell"
        )
