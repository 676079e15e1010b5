"""Exceptions raised by bloodcell.

Every error a user can cause subclasses :class:`BloodcellError`, itself a
:class:`ValueError`, so callers can catch either. Messages follow one pattern:
what was expected, what arrived (naming the file), and how to fix it.
"""


class BloodcellError(ValueError):
    """Base class of every user-facing bloodcell error."""


class DataError(BloodcellError):
    """A dataset, image or manifest cannot be read as given."""


class ConfigError(BloodcellError):
    """A configuration key or value is invalid."""


class ModelError(BloodcellError):
    """A model name, checkpoint or exported model is invalid or incompatible."""
