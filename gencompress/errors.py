"""The one exception type for problems a user can cause and fix."""


class GencompressError(Exception):
    """A user error: bad file, bad option, mismatch. The CLI prints it as one line, exit 2."""


def short(value, limit: int = 60) -> str:
    """A value's repr on one line, cut to ``limit`` characters: error messages never print a whole
    (possibly huge, possibly hostile) value."""
    try:
        text = " ".join(repr(value).split())  # one line: a numpy array's repr spans several
    except Exception:  # a user object whose __repr__ fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
