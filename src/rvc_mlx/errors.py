"""Errors rvc-mlx raises for bad input: each says which file (or argument) and what is wrong."""

from __future__ import annotations

import os


class RVCError(Exception):
    """Base class: a problem with the user's input, reported without a traceback by the CLI."""


class FileProblem(RVCError):
    """A problem with one file (``path``; None when the input was an array): ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CheckpointError(FileProblem):
    """A model file that cannot be read or is not what it should be."""


class UnsafePickleError(CheckpointError):
    """A pickle that asks for code execution (a global outside the tensor allow-list)."""


class AudioError(FileProblem):
    """Audio that cannot be read, is empty, silent where it may not be, or too short."""
