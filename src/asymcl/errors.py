"""Exceptions for user errors.

Everything a user can cause (a bad config, a missing or corrupt file, an impossible value) raises a
subclass of :class:`AsymclError`. The CLI prints these as one message and exits non-zero, without a
traceback; anything else is a bug in asymcl and keeps its traceback.

They also derive from ValueError so that library users can catch them the ordinary way.
"""


class AsymclError(ValueError):
    """A user error: the message names the problem and how to fix it."""


class ConfigError(AsymclError):
    """An unknown key, a wrong type or an impossible value in a config or on the command line."""


class DataError(AsymclError):
    """A missing, truncated, corrupt or inconsistent data file, or an impossible data request."""


class CheckpointError(AsymclError):
    """A checkpoint that is missing, corrupt, or belongs to another model."""
