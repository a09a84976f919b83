"""The one exception type users see: a bad input, reported as one line and exit code 2."""


class RbpError(Exception):
    """A user-facing error: the message names the offending field or file and the fix."""
