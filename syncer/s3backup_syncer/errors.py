"""Errors the user can act on. The CLI prints their message on one line, with no traceback."""


class UserError(Exception):
    """A mistake in the input or the environment that the user must fix (exit code 2)."""

    exit_code = 2


class ConfigError(UserError):
    """Bad options, a bad URL, a missing source directory."""


class RemoteAccessError(UserError):
    """The bucket cannot be used: missing, access denied, unreachable."""
