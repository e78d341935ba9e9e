"""Errors raised by the data layer.

Both derive from the built-in errors a caller would expect (``ValueError`` for a bad file,
``FileNotFoundError`` for a missing one), so ``except ValueError`` keeps working.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file exists but is unusable: truncated, corrupt or not the file expected.

    The message names the file and what is wrong with it.
    """


class DatasetNotFoundError(FileNotFoundError):
    """A dataset could not be found; the message lists where it was looked for and how to get it."""
