"""The one exception type for problems a user can cause and fix."""


class GencompressError(Exception):
    """A user error: bad file, bad option, mismatch. The CLI prints it as one line, exit 2."""
