"""The one error type for bad user data: names the file, the structure and the problem."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. ``str(err)`` reads ``FILE: structure INDEX: PROBLEM``."""

    def __init__(self, source: str, index: int | None, problem: str) -> None:
        self.source, self.index, self.problem = str(source), index, problem
        where = f"{source}: structure {index}" if index is not None else str(source)
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # from worker processes (prepare-data) back to the caller
        return (DataError, (self.source, self.index, self.problem))
