"""One validation of a structure, used by every entry point before any neighbour list or model.

:func:`validate_structure` is called by the reader (:func:`openmace.data.configurations.
configuration_from_atoms`: training, ``eval``, the start structure of ``md``), by the ASE
calculator before every evaluation (with the pairs of its skin neighbour list, so it costs tens
of microseconds) and by anyone holding plain arrays. It raises :class:`DataError` naming the
source, the structure index and the first problem:

- an element that does not exist;
- a non-finite coordinate, or one beyond ±1e5 Å (:data:`openmace.data.geometry.MAX_COORDINATE`;
  such a coordinate in a molecule used to kill the process inside the neighbour-list library);
- a non-finite cell, a periodic cell vector of zero length or longer than 1e6 Å, a periodic
  sub-cell thinner than 0.5 Å (:data:`~openmace.data.geometry.MIN_CELL_HEIGHT`: the distance
  between opposite faces, for one, two or three periodic directions; nearly flat cells used to
  hang the neighbour list);
- with ``r_max``: a neighbour list within ``r_max`` that would not fit in memory (the estimate
  and the memory it needs are in the message);
- two atoms closer than 0.1 Å (``MIN_DISTANCE``), also an atom and a periodic image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase.data import chemical_symbols

from openmace.data.errors import DataError
from openmace.data.geometry import (
    check_cutoff,
    check_geometry,
    check_pair_memory,
    estimate_neighbour_pairs,
)
from openmace.data.graph import neighbour_list

MIN_DISTANCE = 0.1  # Å; atoms closer than this are a data error, not physics
DISTANCE_SEARCH = 1.0
"""Å: the cutoff of the list that :func:`check_distances` builds. Not MIN_DISTANCE itself: a
search grid of 0.1 Å cells over a molecule's 12 Å box has 1.7 million cells (6 ms a structure,
measured); pairs up to 1 Å are few, and the closest of them is what is checked."""

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # sender, receiver, unit shifts


def check_distances(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, pairs: Pairs | None = None
) -> None:
    """:class:`ValueError` naming the closest two atoms (or atom and periodic image) when they
    are closer than ``MIN_DISTANCE``. ``pairs``: a neighbour list within at least
    ``MIN_DISTANCE`` (default: one is built within ``MIN_DISTANCE``)."""
    positions = np.asarray(positions, dtype=np.float64)
    if pairs is None:
        if len(positions) < 2 and not np.any(pbc):
            return
        pairs = neighbour_list(positions, cell, pbc, DISTANCE_SEARCH)
    sender, receiver, shifts = pairs
    if len(sender) == 0:
        return
    vectors = positions[receiver] - positions[sender] + np.asarray(shifts) @ np.asarray(cell)
    squared = np.einsum("ij,ij->i", vectors, vectors)
    closest = int(np.argmin(squared))
    if squared[closest] >= MIN_DISTANCE**2:
        return
    i, j = int(sender[closest]), int(receiver[closest])
    distance = float(np.sqrt(squared[closest]))
    if i == j:
        raise ValueError(
            f"atom {i} is {distance:.3g} Å from its own periodic image, closer than "
            f"{MIN_DISTANCE} Å (a cell vector too short?)"
        )
    i, j = min(i, j), max(i, j)
    image = "" if not np.any(np.asarray(shifts)[closest]) else " (periodic image)"
    raise ValueError(
        f"atoms {i} and {j}{image} are {distance:.3g} Å apart, closer than "
        f"{MIN_DISTANCE} Å (on top of each other?)"
    )


def validate_structure(
    positions: np.ndarray,
    atomic_numbers: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    *,
    source: str,
    index: int | None,
    r_max: float | None = None,
    pairs: Pairs | Callable[[], Pairs] | None = None,
) -> None:
    """Check one structure (module docstring); :class:`DataError` ``SOURCE: structure INDEX:
    PROBLEM`` on the first problem. Units: Å.

    Args:
        positions: ``[n, 3]``; atomic_numbers: ``[n]``; cell: ``[3, 3]`` (rows); pbc: ``[3]``.
        source, index: named in the error (a file and structure index; ``"atoms"``, None for
            the calculator).
        r_max: when given, the neighbour list within ``r_max`` must fit in memory.
        pairs: a neighbour list within at least ``MIN_DISTANCE`` (sender, receiver, shifts),
            or a function returning one, called after the geometry checks passed (the
            calculator passes its skin list); default: a list within ``MIN_DISTANCE``.
    """
    try:
        numbers = np.asarray(atomic_numbers).reshape(-1)
        positions = np.asarray(positions, dtype=np.float64)
        if len(numbers) == 0:
            raise ValueError("structure has no atoms")
        if positions.shape != (len(numbers), 3):
            raise ValueError(
                f"positions have shape {positions.shape}, expected ({len(numbers)}, 3)"
            )
        if (numbers < 1).any() or (numbers >= len(chemical_symbols)).any():
            raise ValueError(f"unknown element(s) {sorted(set(numbers.tolist()))}")
        pbc = np.asarray(pbc, dtype=bool).reshape(3)
        cell = np.asarray(cell, dtype=np.float64)
        check_geometry(positions, cell, pbc)
        if r_max is not None:
            r_max = check_cutoff(r_max)
            estimate = estimate_neighbour_pairs(positions, cell, pbc, r_max)
            check_pair_memory(estimate, r_max, f"{len(numbers)} atoms", name="r_max")
        check_distances(positions, cell, pbc, pairs() if callable(pairs) else pairs)
    except DataError:
        raise
    except ValueError as err:
        raise DataError(source, index, str(err)) from err
