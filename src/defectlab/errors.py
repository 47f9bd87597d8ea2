"""User-facing errors. Each renders as one line that names the file (if any) and the problem."""

from __future__ import annotations

from pathlib import Path


class DefectLabError(Exception):
    """An error the user can act on; the CLI prints it as one line, without a traceback."""


class BadInputError(DefectLabError):
    """A file or folder the user gave cannot be used."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(DefectLabError):
    """An unknown name or an invalid value in a config or on the command line."""
