"""Errors that are the user's to fix (a flag, a config value, a dataset, a path, a weights file).

The command-line programs print such an error as one line and exit with status 2; anything else is a bug and keeps
its traceback. Each class also derives from the built-in type that code catching the old errors expects.
"""

__all__ = ["UserError", "ConfigError", "DataError", "MissingPathError", "NoSpaceError", "WeightsError"]


class UserError(Exception):
    """A mistake in the program's input; the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """A config key that does not exist, or a value of the wrong type or out of range."""


class DataError(UserError, ValueError):
    """A dataset string or a dataset that cannot be used (empty, unknown classes, unreadable list)."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class NoSpaceError(UserError, OSError):
    """The disk filled up while saving; what was saved before is intact."""


class WeightsError(UserError, RuntimeError):
    """A weights or checkpoint file that cannot be read or does not fit the model."""
