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


class RunLockedError(AsymclError):
    """The run directory is being trained into by another process (it holds the run's lock)."""


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def user_message(exc: AsymclError) -> str:
    """The one-line message of a user error, also when it crossed a DataLoader worker.

    PyTorch re-raises an exception from a worker process as the same type with the worker's whole
    traceback folded into the message; the user needs only the original message, its last line.
    """
    text = str(exc)
    if _WORKER_TRACEBACK not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last
