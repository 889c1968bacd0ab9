"""The command line: one click command per verb (click is imported only here)."""

from gencompress.cli.main import main

__all__ = ["main"]
