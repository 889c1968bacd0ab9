"""The one exception type for problems a user can cause and fix."""


class GencompressError(Exception):
    """A user error: bad file, bad option, mismatch. The CLI prints it as one line, exit 2."""


def short(value, limit: int = 60) -> str:
    """A value's repr cut to ``limit`` characters: error messages never print a whole (possibly
    huge, possibly hostile) value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
