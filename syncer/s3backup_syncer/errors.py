"""Errors that end a run. The CLI prints their message on one line, with no traceback."""


class RunError(Exception):
    """The run could not be done; `exit_code` says whose problem it is."""

    exit_code = 1


class UserError(RunError):
    """A mistake in the input or the environment that the user must fix (exit code 2)."""

    exit_code = 2


class ConfigError(UserError):
    """Bad options, a bad URL, a missing source directory."""


class RemoteAccessError(UserError):
    """The bucket cannot be used as configured: missing, access denied, endpoint unreachable."""


class RemoteUnavailable(RunError):
    """The S3 service failed (5xx, throttling, timeouts) even after retries: try again later (exit 1)."""
