"""The project's one error hierarchy: every user-facing failure (bad input, bad file, bad config, missing
optional dependency) is a `MambalabError`, so callers catch one class and the CLI reports it in one line.

`MambalabError` subclasses `ValueError` because most of these are bad values a caller passed; failures of the
environment also subclass the builtin that describes them (e.g. `BackendUnavailable` is a `RuntimeError` too).
"""

from __future__ import annotations


class MambalabError(ValueError):
    """Base of every error mambalab raises on purpose; its message names what, where and what was expected."""


class InputError(MambalabError):
    """A tensor or argument passed to the public API has the wrong shape, dtype, device or value."""
