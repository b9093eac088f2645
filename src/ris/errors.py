"""The base of errors the user fixes in config or environment: reported as a message, not a traceback."""


class UserFacingError(Exception):
    """A problem with what was asked for (a config value, a missing file, an unreachable source)."""
