"""Errors that a user can fix. cli.py turns every `LmtuneError` into a message and exit code 2.

Library code raises these and never prints or exits; anything else that escapes is an internal
failure (exit code 1).
"""


class LmtuneError(Exception):
    """A problem the user can fix: the message names the key or file, the value and the fix."""


class ConfigError(LmtuneError):
    """The config file or an override is invalid."""


class DataError(LmtuneError):
    """An input file is missing, empty, unreadable or malformed."""


class DeviceError(LmtuneError):
    """The requested device or precision is not available on this machine."""


class RunDirError(LmtuneError):
    """The output directory cannot be used (it already holds a run, or is not writable)."""


class NumericalError(LmtuneError):
    """Training diverged: the loss or the gradients are no longer finite."""


class TrainingInterrupted(Exception):
    """The user pressed Ctrl-C; a checkpoint was saved. cli.py exits with code 130."""
