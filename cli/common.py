"""Helpers shared by the command-line apps: short errors and exit codes."""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console

#: Errors and warnings go to stderr, so stdout stays clean for piping.
err_console = Console(stderr=True, highlight=False)

EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print a one-line error and exit."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    sys.exit(code)
