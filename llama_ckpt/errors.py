"""The one exception type that reaches the user as a one-line message."""


class UserError(Exception):
    """Bad input or an unusable environment: printed as one line, exit code 2."""
