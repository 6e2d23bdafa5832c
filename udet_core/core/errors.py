"""The one error type of bad user input: a `DataError` names the file (or option) and what is wrong with it."""
from __future__ import annotations


class DataError(ValueError):
    """A problem with one input file; `path` names it, `problem` says what is wrong."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
