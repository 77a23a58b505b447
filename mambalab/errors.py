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


class ConfigError(MambalabError):
    """A configuration value, field or `--set key=value` override that names no option or holds a bad value."""


class CheckpointError(MambalabError):
    """A pretrained-model directory that cannot be loaded as it is; the message names the file and the key."""


class CorruptCheckpoint(MambalabError):
    """A training resume checkpoint file is missing, truncated or does not match its recorded checksum."""


class StateMismatchError(MambalabError):
    """A saved inference state belongs to another model, dtype or prefix than the one it is loaded for."""


class CorruptStateError(MambalabError):
    """An inference state file is truncated, corrupt, or not a mambalab state."""


class TrainingDiverged(MambalabError, RuntimeError):
    """`nan_patience` optimizer steps in a row had a non-finite loss or gradient norm.

    A runtime failure of the run rather than bad input, hence also a `RuntimeError`; the CLI still reports it
    in one line, since its message names the last good checkpoint to resume from.
    """
